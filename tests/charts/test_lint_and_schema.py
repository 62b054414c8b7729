"""helm lint --strict and helm template over the values matrix; values.schema.json and the
template guards reject bad values with a message that names the problem."""

from __future__ import annotations

import pytest

from tests.charts.toolbox import CHART, MATRIX, VALUES_FILES, Case, RenderError, by_kind, render, run

pytestmark = pytest.mark.k8s


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.name)
def test_lint_strict_with_each_values_file(tools, values_file):
    result = run([tools.path("helm"), "lint", "--strict", str(CHART), "--values", str(values_file)], tools)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_lint_strict_over_the_flag_matrix(tools):
    failures = []
    for case in (c for c in MATRIX if c.valid):
        sets = [arg for key, value in case.sets.items() for arg in ("--set", f"{key}={value}")]
        result = run([tools.path("helm"), "lint", "--strict", str(CHART), *sets], tools)
        if result.returncode != 0:
            failures.append(f"{case.id}: {result.stdout[-500:]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", MATRIX, ids=lambda c: c.id)
def test_template_renders_what_the_flags_ask_for(tools, case: Case):
    if not case.valid:
        with pytest.raises(RenderError, match="needs monitoring.enabled"):
            render(sets=case.sets)
        return
    objects = render(sets=case.sets)
    kinds = {o["kind"] for o in objects}
    flags = case.flags
    triton_here = not flags["kserve"]
    assert ("InferenceService" in kinds) == flags["kserve"]
    assert (
        any(o["metadata"]["name"].endswith("-triton") for o in by_kind(objects, "Deployment")) == triton_here
    )
    assert ("ServiceMonitor" in kinds) == flags["monitoring"]
    assert ("PrometheusRule" in kinds) == flags["monitoring"]
    assert ("Ingress" in kinds) == flags["ingress"]
    hpas = {o["metadata"]["name"].rsplit("-", 1)[-1] for o in by_kind(objects, "HorizontalPodAutoscaler")}
    expected_hpas = ({"gateway", "triton"} if triton_here else {"gateway"}) if flags["hpa"] else set()
    assert hpas == expected_hpas
    gpu_limits = [
        c
        for o in objects
        for c in _containers(o)
        if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
    ]
    assert bool(gpu_limits) == flags["gpu"]
    # Engine builds need a GPU and the Triton Deployment.
    assert ("Job" in kinds) == (flags["gpu"] and triton_here)


def _containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if obj["kind"] in ("Deployment", "Job") else {}
    if obj["kind"] == "InferenceService":
        return [spec["predictor"]["model"]]
    return pod.get("initContainers", []) + pod.get("containers", [])


BAD_VALUES = {
    "unknown top-level key": ("replicaCount: 3\n", "Additional property replicaCount is not allowed"),
    "unknown nested key": ("triton:\n  gpus: 2\n", "Additional property gpus is not allowed"),
    "wrong type": (
        "models:\n  - {name: shelf_segmenter, version: latest}\n",
        "Invalid type. Expected: integer, given: string",
    ),
    "version below 1": (
        "models:\n  - {name: shelf_segmenter, version: 0}\n",
        "Must be greater than or equal to 1",
    ),
    "model without a version": ("models:\n  - {name: shelf_segmenter}\n", "version is required"),
    "model name not a folder name": (
        "models:\n  - {name: Shelf Model, version: 1}\n",
        "Does not match pattern",
    ),
    "unknown key in a model": (
        "models:\n  - {name: shelf_segmenter, version: 1, gpu: true}\n",
        "Additional property gpu is not allowed",
    ),
    "no models": ("models: []\n", "Array must have at least 1 items"),
    "scalar model of old values": (
        "model:\n  name: shelf_segmenter\n",
        "Additional property model is not allowed",
    ),
    "source not in enum": ("modelStore:\n  source:\n    type: s3\n", "must be one of the following"),
    "metrics port out of range": ("gateway:\n  metricsPort: 80\n", "Must be greater than or equal to 1024"),
    "bad client id": (
        "azure:\n  workloadIdentity:\n    tritonClientId: my-identity\n",
        "Does not match pattern",
    ),
    "boolean as string": ("networkPolicy:\n  enabled: 'yes'\n", "Expected: boolean, given: string"),
    "jpegWire as a switch": ("jpegWire: false\n", "Invalid type. Expected: object, given: boolean"),
}


@pytest.mark.parametrize("bad", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values(tools, tmp_path, bad):
    text, message = bad
    values = tmp_path / "bad-values.yaml"
    values.write_text(text)
    for command in (["template", "x"], ["lint", "--strict"]):
        result = run([tools.path("helm"), *command, str(CHART), "--values", str(values)], tools)
        assert result.returncode != 0, f"helm {command[0]} accepted {text!r}"
        assert message in result.stdout + result.stderr


GUARDS = {
    "gRPC ingress without TLS": ({"ingress.tlsSecretName": ""}, "needs ingress.tlsSecretName"),
    "PVC source without a claim": (
        {"modelStore.source.type": "pvc"},
        "modelStore.source.pvc.claimName is required",
    ),
    "a model listed twice": (
        {
            "models[0].name": "a_model",
            "models[0].version": "1",
            "models[1].name": "a_model",
            "models[1].version": "2",
        },
        "models: a_model is listed twice",
    ),
    "KServe with a per-model config": (
        {
            "kserve.enabled": "true",
            "models[0].name": "a_model",
            "models[0].version": "1",
            "models[0].configName": "cpu",
        },
        "must be unset or",
    ),
    "HPA metric no adapter rule serves": (
        {"triton.autoscaling.metricName": "nv_inference_queue_duration_us"},
        "is not a metric monitoring.prometheusAdapter.rules expose",
    ),
    "Triton HPA without the adapter": (
        {"monitoring.prometheusAdapter.enabled": "false"},
        "needs monitoring.enabled and monitoring.prometheusAdapter.enabled",
    ),
}


@pytest.mark.parametrize("guard", GUARDS.values(), ids=GUARDS.keys())
def test_template_guards(tools, guard):
    sets, message = guard
    with pytest.raises(RenderError, match=message):
        render(sets=sets)
