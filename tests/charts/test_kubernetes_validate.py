"""Every object the chart renders, over the whole values matrix and the values files, validates
against the Kubernetes 1.30-1.33 schemas with `kubernetes-validate --strict` (unknown fields are
errors), and the Prometheus Operator objects against their CRD models."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.charts.toolbox import MATRIX, VALUES_FILES, by_kind, render, run

pytestmark = pytest.mark.k8s

KUBERNETES_VERSIONS = ["1.30.0", "1.31.0", "1.32.0", "1.33.0"]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "InferenceService"}


@pytest.fixture(scope="module")
def rendered_files(tools, tmp_path_factory) -> dict:
    """Every distinct object of every render, one file each (identical objects once)."""
    directory = tmp_path_factory.mktemp("rendered")
    distinct: dict[str, dict] = {}
    renders = [render(sets=c.sets) for c in MATRIX if c.valid] + [render([f]) for f in VALUES_FILES]
    for objects in renders:
        for obj in objects:
            distinct.setdefault(json.dumps(obj, sort_keys=True), obj)
    files = []
    for index, obj in enumerate(distinct.values()):
        path = directory / f"{index:04d}-{obj['kind'].lower()}.yaml"
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        files.append(path)
    return {"files": files, "objects": list(distinct.values())}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(tools, rendered_files, version):
    files = rendered_files["files"]
    result = run([tools.path("kubernetes-validate"), "--strict", "-k", version, *map(str, files)], tools)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ERROR" not in output
    passed = re.findall(r"^INFO .* passed for resource", output, re.MULTILINE)
    unschemaed = re.findall(r"^WARN .* Couldn't find schema for kind (\w+)", output, re.MULTILINE)
    # Only CRDs lack a built-in schema; each of those is validated below (or structurally).
    assert set(unschemaed) <= CRD_KINDS, unschemaed
    assert len(passed) + len(unschemaed) == len(files)
    assert len(passed) >= 20


def test_prometheus_operator_objects_validate_against_crd_models(tools, rendered_files):
    files = [
        f for f in rendered_files["files"] if re.search(r"-(servicemonitor|prometheusrule)\.yaml$", f.name)
    ]
    assert files, "no ServiceMonitor or PrometheusRule rendered"
    result = run([tools.venv_python, "tests/charts/crd_models.py", *map(str, files)], tools)
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0, result.stdout + result.stderr
    assert {r["kind"] for r in reports} == {"ServiceMonitor", "PrometheusRule"}
    assert len(reports) == len(files)


def test_crd_model_check_catches_a_misspelt_field(tools, tmp_path, objects):
    monitor = by_kind(objects, "ServiceMonitor")[0]
    monitor["spec"]["endpoints"][0]["intervall"] = monitor["spec"]["endpoints"][0].pop("interval")
    path = tmp_path / "bad-servicemonitor.yaml"
    path.write_text(yaml.safe_dump(monitor))
    result = run([tools.venv_python, "tests/charts/crd_models.py", str(path)], tools)
    assert result.returncode == 1
    assert "intervall: unknown field" in result.stdout


def test_inference_service_is_well_formed(tools):
    """No KServe schema package exists in any registry reachable here: check its shape directly."""
    (service,) = by_kind(render(sets={"kserve.enabled": "true"}), "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = service["spec"]["predictor"]
    assert set(predictor) <= {
        "canaryTrafficPercent", "minReplicas", "maxReplicas", "serviceAccountName", "nodeSelector",
        "tolerations", "securityContext", "volumes", "model",
    }  # fmt: skip
    assert 0 <= predictor["canaryTrafficPercent"] <= 100
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "triton"}
    assert model["protocolVersion"] == "v2"
    assert model["storageUri"].startswith("https://") and ".blob.core.windows.net/" in model["storageUri"]
    assert "--model-config-name=gpu" in model["args"] and "--model-control-mode=explicit" in model["args"]
    assert model["ports"] == [{"name": "h2c", "containerPort": 9000, "protocol": "TCP"}]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
