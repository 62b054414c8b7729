"""The chart's values for the platform's loops, rendered with the real helm: A/B tests
(models[].abTest: Triton serves exactly those versions, every gateway replica gets the split),
retraining (the policies ConfigMap, least-privilege RBAC for the kubernetes launcher), the gateway's
per-model environment and its gRPC balancing over a headless Triton Service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gateway.ab import ABTests
from gateway.retrain import RetrainPolicy, load_policies
from tests.charts.test_rendered_objects import containers, pod_spec, prepared_models, synced_models
from tests.charts.toolbox import CHART, NAMESPACE, RenderError, by_kind, one, render, run

pytestmark = pytest.mark.k8s

LOOPS = CHART / "ci" / "loops-values.yaml"


def values_file(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def gateway_env(objects: list[dict]) -> dict[str, str]:
    gateway = next(c for c in containers(one(objects, "Deployment", "-gateway")) if c["name"] == "gateway")
    return {e["name"]: e.get("value") for e in gateway["env"]}


@pytest.fixture(scope="module")
def loops(tools) -> list[dict]:
    return render([LOOPS])


# --- A/B tests ---


def test_an_ab_test_serves_exactly_its_versions_and_splits_on_every_gateway(loops):
    triton = one(loops, "Deployment", "-triton")
    served = {m["name"]: m["versions"] for m in prepared_models(triton)}
    assert served == {"shelf_segmenter": [1, 2], "crack_segmenter": [1, 2], "mask_detector": [1]}
    # The init container syncs every version folder it serves, and nothing else.
    assert synced_models(triton) == "shelf_segmenter=1,2 crack_segmenter=1,2 mask_detector=1"
    labels = triton["spec"]["template"]["metadata"]["labels"]
    assert labels["model.prodseg.io/shelf_segmenter"] == "1-2"
    assert labels["model.prodseg.io/mask_detector"] == "1"
    env = gateway_env(loops)
    assert json.loads(env["PRODSEG_AB_TESTS"]) == {"shelf_segmenter": {"1": 90, "2": 10}}
    assert env["PRODSEG_MODELS"] == "shelf_segmenter,crack_segmenter,mask_detector"


def test_the_gateway_accepts_the_split_the_chart_renders(loops, tmp_path):
    """What the chart puts in PRODSEG_AB_TESTS is what gateway/ab.py starts (same id on every replica)."""
    from gateway.store import GatewayStore

    configured = json.loads(gateway_env(loops)["PRODSEG_AB_TESTS"])
    tests = [ABTests(GatewayStore(tmp_path / f"replica-{i}" / "gateway.sqlite")) for i in range(2)]
    for replica in tests:
        replica.start_configured(configured)
    assert tests[0].tests["shelf_segmenter"].id == tests[1].tests["shelf_segmenter"].id
    assert tests[0].tests["shelf_segmenter"].weights == {"1": 90, "2": 10}


def test_changing_a_split_restarts_gateways_not_triton(tmp_path, tools):
    values = yaml.safe_load(LOOPS.read_text())
    before = render([LOOPS])
    values["models"][0]["abTest"]["weights"] = {"1": 50, "2": 50}
    after = render([values_file(tmp_path, values)])
    triton = [one(objects, "Deployment", "-triton")["spec"]["template"] for objects in (before, after)]
    assert triton[0] == triton[1]
    gateway = [gateway_env(objects)["PRODSEG_AB_TESTS"] for objects in (before, after)]
    assert gateway[0] != gateway[1]


def test_ending_an_ab_test_serves_the_one_version_again(tmp_path, tools):
    values = yaml.safe_load(LOOPS.read_text())
    del values["models"][0]["abTest"]
    values["models"][0]["version"] = 2  # the winner
    objects = render([values_file(tmp_path, values)])
    triton = one(objects, "Deployment", "-triton")
    assert prepared_models(triton)[0]["versions"] == [2]
    assert "PRODSEG_AB_TESTS" not in gateway_env(objects)


def write_model(tmp_path: Path, entry: dict) -> Path:
    return values_file(tmp_path, {"models": [entry]})


BAD_AB_TESTS = {
    "one version": ({"1": 100}, "Must have at least 2 properties"),
    "a version that is not a number": ({"1": 50, "latest": 50}, 'Property name of "latest" does not match'),
    "version 0": ({"0": 50, "1": 50}, 'Property name of "0" does not match'),
    "a fraction": ({"1": 50, "2": 49.5}, "Expected: integer, given: number"),
    "over 100": ({"1": 150, "2": -50}, "Must be less than or equal to 100"),
}


@pytest.mark.parametrize("weights, message", BAD_AB_TESTS.values(), ids=BAD_AB_TESTS.keys())
def test_the_schema_refuses_bad_ab_tests(tools, tmp_path, weights, message):
    path = write_model(tmp_path, {"name": "shelf_segmenter", "version": 1, "abTest": {"weights": weights}})
    for command in (["template", "x"], ["lint", "--strict"]):
        result = run([tools.path("helm"), *command, str(CHART), "--values", str(path)], tools)
        assert result.returncode != 0, f"helm {command[0]} accepted {weights}"
        assert message in result.stdout + result.stderr


TEMPLATE_REFUSALS = {
    "percents not summing to 100": (
        {"name": "shelf_segmenter", "version": 1, "abTest": {"weights": {"1": 50, "2": 40}}},
        {},
        "shelf_segmenter: abTest.weights must sum to 100, got 90",
    ),
    "version outside the test": (
        {"name": "shelf_segmenter", "version": 3, "abTest": {"weights": {"1": 50, "2": 50}}},
        {},
        "shelf_segmenter: version 3 must be one of the versions it serves",
    ),
    "test version not served": (
        {"name": "shelf_segmenter", "version": 1, "versions": [1], "abTest": {"weights": {"1": 50, "2": 50}}},
        {},
        "shelf_segmenter: abTest version 2 is not among the versions it serves",
    ),
    "under KServe": (
        {"name": "shelf_segmenter", "version": 1, "abTest": {"weights": {"1": 50, "2": 50}}},
        {"kserve.enabled": "true"},
        "abTest needs the chart's Triton Deployment",
    ),
}


@pytest.mark.parametrize("entry, sets, message", TEMPLATE_REFUSALS.values(), ids=TEMPLATE_REFUSALS.keys())
def test_the_templates_refuse_what_the_schema_cannot_say(tools, tmp_path, entry, sets, message):
    with pytest.raises(RenderError, match=message):
        render([write_model(tmp_path, entry)], sets=sets)


def test_versions_sort_as_numbers(tools, tmp_path):
    entry = {"name": "shelf_segmenter", "version": 10, "abTest": {"weights": {"10": 20, "9": 80}}}
    triton = one(render([write_model(tmp_path, entry)]), "Deployment", "-triton")
    assert prepared_models(triton)[0]["versions"] == [9, 10]
    assert synced_models(triton) == "shelf_segmenter=9,10"


# --- Retraining ---


def test_retrain_policies_reach_the_gateway_as_its_own_format(loops, tmp_path):
    config_map = one(loops, "ConfigMap", "-retrain-policies")
    policies_file = tmp_path / "policies.json"
    policies_file.write_text(config_map["data"]["policies.json"])
    policies = load_policies(str(policies_file))  # the gateway's own reader
    image = "prodsegacr.azurecr.io/prodseg-training:0.2.0"
    assert policies["*"] == RetrainPolicy(
        min_new_labels=50, drift_sustained_s=21600, launcher="kubernetes", image=image, namespace=NAMESPACE
    )
    assert policies["shelf_segmenter"].min_new_labels == 200
    assert policies["shelf_segmenter"].drift_sustained_s == 0
    env = gateway_env(loops)
    assert env["PRODSEG_RETRAIN_POLICIES"] == "/etc/prodseg/retrain/policies.json"
    gateway = one(loops, "Deployment", "-gateway")
    mounts = {m["name"]: m for c in pod_spec(gateway)["containers"] for m in c["volumeMounts"]}
    assert mounts["retrain-policies"] == {
        "name": "retrain-policies",
        "mountPath": "/etc/prodseg/retrain",
        "readOnly": True,
    }
    volume = next(v for v in pod_spec(gateway)["volumes"] if v["name"] == "retrain-policies")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    # A changed policy rolls the gateways (they read the file at start).
    assert "checksum/retrain-policies" in gateway["spec"]["template"]["metadata"]["annotations"]


def test_the_kubernetes_launcher_may_create_and_read_jobs_here_and_nothing_else(loops):
    role = one(loops, "Role", "-retrain-launcher")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list"]}
    ]
    assert not by_kind(loops, "ClusterRole") and not by_kind(loops, "ClusterRoleBinding")
    binding = one(loops, "RoleBinding", "-retrain-launcher")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    gateway = one(loops, "Deployment", "-gateway")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod_spec(gateway)["serviceAccountName"], "namespace": NAMESPACE}
    ]
    # kubectl in the pod signs in with the service account's token: mounted in the gateway alone.
    tokens = {
        o["metadata"]["name"]: pod_spec(o).get("automountServiceAccountToken")
        for o in loops
        if o["kind"] in ("Deployment", "Job")
    }
    assert tokens.pop(gateway["metadata"]["name"]) is True
    assert set(tokens.values()) == {False}


def test_the_subprocess_launcher_gets_no_api_access(tools, tmp_path):
    values = yaml.safe_load(LOOPS.read_text())
    values["retrain"]["launcher"] = "subprocess"
    objects = render([values_file(tmp_path, values)])
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")
    assert pod_spec(one(objects, "Deployment", "-gateway"))["automountServiceAccountToken"] is False
    policies = json.loads(one(objects, "ConfigMap", "-retrain-policies")["data"]["policies.json"])
    assert policies["*"] == {"launcher": "subprocess", "min_new_labels": 50, "drift_sustained_s": 21600}


def test_retrain_is_off_by_default(objects):
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")
    assert not [
        o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-retrain-policies")
    ]
    assert "PRODSEG_RETRAIN_POLICIES" not in gateway_env(objects)
    assert pod_spec(one(objects, "Deployment", "-gateway"))["automountServiceAccountToken"] is False


RETRAIN_REFUSALS = {
    "a policy for a model not served": (
        {"retrain.enabled": "true", "retrain.policies.nosuch_model.min_new_labels": "5"},
        "retrain.policies: nosuch_model is not one of models",
    ),
    "no training image for Jobs": (
        {"retrain.enabled": "true", "retrain.image.repository": ""},
        "retrain.image.repository is required when retrain.launcher is kubernetes",
    ),
}


@pytest.mark.parametrize("sets, message", RETRAIN_REFUSALS.values(), ids=RETRAIN_REFUSALS.keys())
def test_retrain_guards(tools, sets, message):
    with pytest.raises(RenderError, match=message):
        render(sets=sets)


@pytest.mark.parametrize(
    "text, message",
    [
        ("retrain:\n  launcher: cron\n", "must be one of the following"),
        (
            "retrain:\n  policies:\n    '*': {min_labels: 5}\n",
            "Additional property min_labels is not allowed",
        ),
        ("retrain:\n  policies:\n    '*': {min_new_labels: -1}\n", "Must be greater than or equal to 0"),
        ("retrain:\n  policies:\n    Bad Model: {min_new_labels: 1}\n", "does not match"),
    ],
)
def test_the_schema_refuses_bad_retrain_values(tools, tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run([tools.path("helm"), "template", "x", str(CHART), "--values", str(path)], tools)
    assert result.returncode != 0 and message in result.stdout + result.stderr


# --- The gateway's environment and its path to Triton ---


def test_settings_reach_the_gateway(tools):
    objects = render(
        sets={
            "gateway.settings.keptPredictions": "128",
            "gateway.settings.jobRetentionSeconds": "3600",
            "gateway.settings.retrainCheckSeconds": "30",
            "triton.gpu.enabled": "false",
            "triton.cpu.modelConfigName": "cpu",
        }
    )
    env = gateway_env(objects)
    assert env["PRODSEG_KEPT_PREDICTIONS"] == "128"
    assert env["PRODSEG_JOB_RETENTION_S"] == "3600"
    assert env["PRODSEG_RETRAIN_CHECK_S"] == "30"
    assert env["PRODSEG_TRITON_CONFIG_NAME"] == "cpu"


def test_the_gateway_balances_over_a_headless_service_by_default(objects):
    from clients.triton_client import grpc_target

    headless = one(objects, "Service", "-triton-headless")
    triton = one(objects, "Deployment", "-triton")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    assert headless["spec"]["selector"].items() <= triton["spec"]["template"]["metadata"]["labels"].items()
    assert [p["targetPort"] for p in headless["spec"]["ports"]] == ["grpc"]
    url = gateway_env(objects)["PRODSEG_TRITON_GRPC_URL"]
    # gRPC's DNS resolver: every address of the name, round robin (clients/triton_client.py).
    assert (
        grpc_target(url)
        == url
        == (f"dns:///{headless['metadata']['name']}.{NAMESPACE}.svc.cluster.local:8001")
    )
    # The Triton ServiceMonitor still selects one Service (the headless one has no metrics port).
    monitor = one(objects, "ServiceMonitor", "-triton")
    selected = [
        s
        for s in by_kind(objects, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == [
        one(objects, "Service", "-triton")["metadata"]["name"]
    ]


def test_without_the_headless_service_the_gateway_uses_the_cluster_ip(tools):
    objects = render(sets={"triton.headlessService.enabled": "false"})
    assert not [s for s in by_kind(objects, "Service") if s["metadata"]["name"].endswith("-headless")]
    service = one(objects, "Service", "-triton")
    url = gateway_env(objects)["PRODSEG_TRITON_GRPC_URL"]
    assert url == f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:8001"


def test_checkov_passes_on_the_loops_rendering(tools, tmp_path):
    """checkov's helm scan renders the default values (retrain off): scan the loops on as well."""
    from tests.charts.toolbox import render_text
    from tests.infra.test_checkov import checkov, summaries

    (tmp_path / "loops.yaml").write_text(render_text([LOOPS]))
    summary = summaries(checkov(tools, "--directory", str(tmp_path), "--framework", "kubernetes"))
    assert summary["kubernetes"]["resource_count"] >= 30
    assert summary["kubernetes"]["failed"] == 0


def test_notes_name_the_served_versions_and_the_split(tools, tmp_path):
    from tests.charts.toolbox import render_notes

    notes = render_notes([LOOPS], workdir=tmp_path)
    assert "shelf_segmenter versions 1, 2" in notes
    assert "A/B test: version 1 90% version 2 10%" in notes
    assert "GET /v1/models/shelf_segmenter/ab" in notes
    assert "mask_detector version 1 " in notes
