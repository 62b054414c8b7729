"""The chart's model-version rollout is the sequence `prodseg rollout` runs locally: surge first (a new
pod before an old one goes), traffic only once every model is ready, old pods drained before they
stop, and a documented way back (`helm rollback`, `kubectl rollout undo`)."""

from __future__ import annotations

import pytest
import yaml

from tests.charts.test_rendered_objects import is_companion
from tests.charts.toolbox import CHART, NAMESPACE, RELEASE, one, render_notes

pytestmark = pytest.mark.k8s

MODELS = [m["name"] for m in yaml.safe_load((CHART / "values.yaml").read_text())["models"]]


def triton(objects: list[dict]) -> tuple[dict, dict]:
    deployment = one(objects, "Deployment", "-triton")
    spec = deployment["spec"]["template"]["spec"]
    return deployment, next(c for c in spec["containers"] if c["name"] == "triton")


def test_new_pods_come_first_and_get_traffic_only_when_every_model_is_ready(objects):
    deployment, container = triton(objects)
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},  # load new before the old goes
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    args = container["args"]
    # Server readiness covers every model only with strict readiness and every model loaded at start
    # (the JPEG wire's companions load with them: test_rendered_objects covers those).
    assert "--strict-readiness=true" in args
    loaded = {a.removeprefix("--load-model=") for a in args if a.startswith("--load-model=")}
    assert {name for name in loaded if not is_companion(name)} == set(MODELS)


def test_old_pods_drain_before_they_stop(objects):
    deployment, container = triton(objects)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    exit_timeout = next(
        int(a.split("=")[1]) for a in container["args"] if a.startswith("--exit-timeout-secs=")
    )
    assert pre_stop > 0 and exit_timeout > 0
    # Kubernetes kills at the grace period: the drain and Triton's in-flight wait must fit in it.
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pre_stop + exit_timeout
    assert deployment["spec"]["revisionHistoryLimit"] >= 1  # `rollout undo` needs an old ReplicaSet


def test_the_way_back_is_printed_after_install_and_documented(objects):
    deployment, _ = triton(objects)
    notes = render_notes()
    assert f"helm rollback {RELEASE} -n {NAMESPACE}" in notes
    assert f"kubectl rollout undo deployment/{deployment['metadata']['name']}" in notes
    readme = (CHART / "README.md").read_text()
    for command in ("helm rollback", "kubectl rollout undo", "prodseg rollout"):
        assert command in readme, f"charts/prodsegmenter/README.md does not mention `{command}`"
