"""infra/model_values.py: rolling out one model's version keeps the rest of the release's models list,
and the chart rendered with its output rolls Triton for that model only (not the gateway)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.charts.toolbox import CHART, ROOT, one, render

SCRIPT = ROOT / "infra" / "model_values.py"


def release_values() -> dict:
    """What `helm get values --all -o json` gives for a release installed with the chart's defaults."""
    return yaml.safe_load((CHART / "values.yaml").read_text())


def model_values(values: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], input=json.dumps(values), capture_output=True, text=True
    )


def test_changes_one_entry_and_keeps_the_others():
    values = release_values()
    result = model_values(values, "--model", "crack_segmenter", "--version", "5")
    assert result.returncode == 0, result.stderr
    models = json.loads(result.stdout)["models"]
    assert [m["name"] for m in models] == [m["name"] for m in values["models"]]
    for before, after in zip(values["models"], models, strict=True):
        expected = dict(before, version=5) if before["name"] == "crack_segmenter" else before
        assert after == expected


def test_engine_version_first_then_the_rollout_drops_it():
    values = release_values()
    built = json.loads(model_values(values, "--model", "mask_detector", "--engine-version", "2").stdout)
    entry = next(m for m in built["models"] if m["name"] == "mask_detector")
    assert (entry["version"], entry["engineVersion"]) == (1, 2)
    values["models"] = built["models"]
    rolled = json.loads(model_values(values, "--model", "mask_detector", "--version", "2").stdout)
    entry = next(m for m in rolled["models"] if m["name"] == "mask_detector")
    assert entry["version"] == 2 and "engineVersion" not in entry


@pytest.mark.parametrize(
    "stdin, args, message",
    [
        ("{}", ["--model", "x", "--version", "2"], "the values have no models list"),
        (
            None,
            ["--model", "nope", "--version", "2"],
            "unknown model 'nope'; the release serves shelf_segmenter",
        ),
        ("not json", ["--model", "x", "--version", "2"], "model_values:"),
        (None, ["--model", "shelf_segmenter", "--version", "0"], "integer >= 1"),
        (None, ["--model", "shelf_segmenter"], "give --version, --engine-version or both"),
    ],
)
def test_bad_input_is_refused_with_a_message(stdin, args, message):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        input=json.dumps(release_values()) if stdin is None else stdin,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.k8s
def test_the_chart_rolls_triton_for_that_model_only(tools, tmp_path):
    values_file = tmp_path / "crack-v5.json"
    values_file.write_text(
        model_values(release_values(), "--model", "crack_segmenter", "--version", "5").stdout
    )
    before, after = render(), render([values_file])
    old, new = one(before, "Deployment", "-triton"), one(after, "Deployment", "-triton")
    assert old["spec"]["selector"] == new["spec"]["selector"]  # immutable: must not change
    labels = new["spec"]["template"]["metadata"]["labels"]
    assert labels["model.prodseg.io/crack_segmenter"] == "5"
    assert (
        labels["model.prodseg.io/shelf_segmenter"]
        == old["spec"]["template"]["metadata"]["labels"]["model.prodseg.io/shelf_segmenter"]
    )
    assert one(before, "Deployment", "-gateway") == one(after, "Deployment", "-gateway")
    jobs = {j["metadata"]["labels"]["prodseg.io/model"]: j for j in after if j["kind"] == "Job"}
    assert jobs["crack_segmenter"]["metadata"]["labels"]["prodseg.io/model-version"] == "5"
