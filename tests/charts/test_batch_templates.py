"""The batch CronJob (and its Indexed Job form for shards), rendered and validated: schedule and
concurrency, the PVC, the in-cluster Triton address, the shard environment, the merge step, the
NetworkPolicy that lets batch pods reach Triton, refusals of bad values, strict Kubernetes schemas,
and the pod's own shell script run against the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.charts.toolbox import ROOT, RenderError, by_kind, one, render, run

pytestmark = pytest.mark.k8s

ON = {"batch.enabled": "true", "batch.pvc.claimName": "batch-data"}
SHARDED = ON | {"batch.shards": "4", "batch.parallelism": "2", "batch.pushgatewayUrl": "http://pgw:9091"}


def batch_pod(cronjob: dict) -> dict:
    return cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_off_by_default(tools):
    objects = render()
    assert not by_kind(objects, "CronJob")
    assert not [o for o in objects if o["metadata"]["name"].endswith("triton-from-batch")]


def test_nightly_cronjob_runs_the_batch_command_against_the_in_cluster_triton(tools):
    objects = render(sets=ON)
    cronjob = one(objects, "CronJob", "-batch")
    spec = cronjob["spec"]
    assert spec["schedule"] == "0 2 * * *" and spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert "completionMode" not in job and "completions" not in job  # one pod runs everything
    fail_rules = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail_rules[0]["onExitCodes"] == {"containerName": "batch", "operator": "In", "values": [2]}
    pod = batch_pod(cronjob)
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    script = container["args"][0]
    assert "python -m prodseg.cli batch run" in script and "merge" not in script
    env = env_of(container)
    assert env["BATCH_MODEL"] == "shelf_segmenter"
    # The same Triton address as the gateway's (the chart's one helper), in-cluster:
    gateway = one(objects, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert env["PRODSEG_TRITON_GRPC_URL"] == env_of(gateway)["PRODSEG_TRITON_GRPC_URL"]
    assert env["PRODSEG_TRITON_GRPC_URL"].endswith(".prodseg.svc.cluster.local:8001")
    assert env["JOB_NAME"] == {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}
    assert "PRODSEG_PUSHGATEWAY_URL" not in env and "PRODSEG_BATCH_SHARD_COUNT" not in env
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "batch-data"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data", "/tmp"}


def test_schedule_and_model_come_from_values(tools):
    cronjob = one(
        render(sets=ON | {"batch.schedule": "30 4 * * 1", "batch.model": "shelf_segmenter"}), "CronJob"
    )
    assert cronjob["spec"]["schedule"] == "30 4 * * 1"
    assert env_of(batch_pod(cronjob)["containers"][0])["BATCH_MODEL"] == "shelf_segmenter"


def test_shards_make_an_indexed_job_whose_pods_each_run_one_shard_and_try_the_merge(tools):
    cronjob = one(render(sets=SHARDED), "CronJob")
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 4, 2)
    container = batch_pod(cronjob)["containers"][0]
    env = env_of(container)
    assert env["PRODSEG_BATCH_SHARD_COUNT"] == "4" and env["PRODSEG_PUSHGATEWAY_URL"] == "http://pgw:9091"
    assert 'batch merge --if-complete "$OUT"' in container["args"][0]
    everyone = one(render(sets=ON | {"batch.shards": "3"}), "CronJob")["spec"]["jobTemplate"]["spec"]
    assert everyone["parallelism"] == 3  # 0 = all shards at once


def test_a_networkpolicy_admits_batch_pods_to_triton_grpc_only(tools):
    objects = render(sets=ON)
    policy = one(objects, "NetworkPolicy", "triton-from-batch")
    triton_pods = one(objects, "Deployment", "-triton")["spec"]["template"]["metadata"]["labels"]
    assert all(triton_pods.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
    (rule,) = policy["spec"]["ingress"]
    batch_pods = one(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert all(batch_pods.get(k) == v for k, v in rule["from"][0]["podSelector"]["matchLabels"].items())
    assert rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    without = render(sets=ON | {"networkPolicy.enabled": "false"})
    assert not [o for o in without if o["metadata"]["name"].endswith("triton-from-batch")]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"batch.enabled": "true"}, "batch.pvc.claimName"),
        (ON | {"batch.model": "no_such_model"}, "batch.model: no_such_model is not in models"),
        (
            ON | {"batch.shards": "2", "batch.parallelism": "3"},
            r"batch.parallelism \(3\) exceeds batch.shards \(2\)",
        ),
        (ON | {"batch.shards": "0"}, "shards"),
        (ON | {"batch.unknown": "1"}, "unknown"),
    ],
)
def test_bad_batch_values_are_refused_with_the_field(tools, sets, message):
    with pytest.raises(RenderError, match=message):
        render(sets=sets)


@pytest.mark.parametrize("version", ["1.30.0", "1.33.0"])
def test_batch_objects_validate_strictly(tools, tmp_path, version):
    files = []
    for name, sets in (("single", ON), ("sharded", SHARDED)):
        for obj in render(sets=sets):
            if obj["metadata"]["name"].endswith(("-batch", "triton-from-batch")):
                path = tmp_path / f"{name}-{obj['kind'].lower()}.yaml"
                path.write_text(yaml.safe_dump(obj))
                files.append(str(path))
    assert len(files) == 4
    result = run([tools.path("kubernetes-validate"), "--strict", "-k", version, *files], tools)
    assert result.returncode == 0 and "ERROR" not in result.stdout + result.stderr, (
        result.stdout + result.stderr
    )


def run_pod_script(tools, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The sharded pod's script as the container runs it, with /data on a temporary folder and the
    project's Python as `python`."""
    container = batch_pod(one(render(sets=SHARDED), "CronJob"))["containers"][0]
    script = container["args"][0].replace("/data/", f"{tmp_path}/data/")
    values = {k: v for k, v in env_of(container).items() if isinstance(v, str)}
    values |= {"JOB_NAME": "prodsegmenter-batch-29000000", "JOB_COMPLETION_INDEX": "1"} | env
    values.pop("PRODSEG_PUSHGATEWAY_URL")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    return subprocess.run(
        ["/bin/sh", "-c", script],
        env=dict(os.environ, PATH=path, PYTHONPATH=str(ROOT), **values),
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip


def test_the_pod_script_with_no_images_does_nothing_and_succeeds(tools, tmp_path):
    (tmp_path / "data" / "input").mkdir(parents=True)
    result = run_pod_script(tools, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "No images" in result.stderr and "not merging yet" in result.stderr


def test_the_pod_script_exits_2_on_a_missing_input_so_the_job_fails_at_once(tools, tmp_path):
    result = run_pod_script(tools, tmp_path)
    assert result.returncode == 2 and f"{tmp_path}/data/input does not exist" in result.stderr


def test_with_kserve_the_batch_talks_to_the_predictor(tools):
    objects = render(sets=ON | {"kserve.enabled": "true"})
    env = env_of(batch_pod(one(objects, "CronJob"))["containers"][0])
    assert env["PRODSEG_TRITON_GRPC_URL"] == "prodsegmenter-triton-predictor.prodseg.svc.cluster.local:80"
    assert not [o for o in objects if o["metadata"]["name"].endswith("triton-from-batch")]
