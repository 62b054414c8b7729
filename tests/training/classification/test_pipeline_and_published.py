"""The classifiers through the one pipeline (``prodseg pipeline``) on a scratch repository, and the
published v1 models in this checkout's repository."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.repository import discover, latest_version, versions
from datagen.products import write_image_folder
from training.config import ConfigError, load_config
from training.export import engine_predictor

ROOT = Path(__file__).resolve().parents[3]
REPOSITORY = ROOT / "model_repository"
CONFIGS = ROOT / "training" / "configs"
TINY = [
    "train.steps=3",
    "train.eval_every=2",
    "train.batch_size=8",
    "data.train=24",
    "data.val=12",
    "data.test=12",
    "export.parity_images=4",
    "model.options={}",
]
# The engagement config's training-only auxiliary head, kept with the tiny network's options.
TINY_OPTIONS = {"engagement_classifier": ["model.options={aux_outputs: 5}"]}


def _scratch_repository(tmp_path: Path, model: str) -> Path:
    """The real model folder's contract, configs and labels, without its versions."""
    repository = tmp_path / "repository"
    shutil.copytree(
        REPOSITORY / model,
        repository / model,
        symlinks=True,
        ignore=lambda folder, names: [n for n in names if n.isdigit() or n == "aliases.json"],
    )
    shutil.copy2(REPOSITORY / "onnx_runner.py", repository / "onnx_runner.py")
    return repository


def _pipeline(tmp_path: Path, model: str, *overrides: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    repository, run_dir = _scratch_repository(tmp_path, model), tmp_path / "run"
    command = [sys.executable, "-m", "prodseg.cli", "pipeline", "--config", str(CONFIGS / f"{model}.yaml")]
    command += ["--run-dir", str(run_dir), "--repository", str(repository)]
    for override in (*TINY, *TINY_OPTIONS.get(model, []), *overrides):
        command += ["--set", override]
    env = {**os.environ, "COLUMNS": "300", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    return result, run_dir, repository


def test_the_committed_configs_load_and_match_their_models() -> None:
    for model in ("returns_classifier", "engagement_classifier"):
        config = load_config(CONFIGS / f"{model}.yaml")
        assert config.task == "classification" and config.model_name == model
        config.contract()  # input size and classes agree with config.pbtxt and labels.txt


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.encoder: 'resnet9000' is not a timm model"):
        load_config(CONFIGS / "returns_classifier.yaml", {"model.encoder": "resnet9000"})
    with pytest.raises(ConfigError, match="model.arch: classification models are 'timm' backbones"):
        load_config(CONFIGS / "returns_classifier.yaml", {"model.arch": "Unet"})
    with pytest.raises(ConfigError, match="gate: unknown key"):
        load_config(CONFIGS / "returns_classifier.yaml", {"gate.min_miou": 0.5})
    config = load_config(CONFIGS / "returns_classifier.yaml", {"data.generator": "engagement"})
    with pytest.raises(ConfigError, match="data.generator: engagement labels"):
        config.contract()


@pytest.mark.slow
def test_the_pipeline_trains_evaluates_and_publishes_a_binary_classifier(tmp_path: Path) -> None:
    result, run_dir, repository = _pipeline(tmp_path, "engagement_classifier", "gate.min_roc_auc=0.0")
    assert result.returncode == 0, result.stdout + result.stderr

    assert {p.name for p in (run_dir / "evaluation").iterdir()} >= {"evaluation.json", "roc.png", "pr.png"}
    assert versions(repository / "engagement_classifier") == [1]
    card = json.loads((repository / "engagement_classifier" / "1" / "model_card.json").read_text())
    assert card["task"] == "classification" and card["classes"] == ["low_engagement", "high_engagement"]
    assert card["outputs"] == [{"name": "probabilities", "dtype": "fp32", "shape": [-1, 2]}]
    assert card["decision_threshold"]["chosen_on"] == "validation"
    assert "sigmoid" in card["data"]["generator_doc"]  # the labelling rule is in the card
    assert set(card["evaluation"]["per_class_f1"]) == {"low_engagement", "high_engagement"}
    assert not discover(repository).errors


@pytest.mark.slow
def test_a_refused_gate_publishes_nothing(tmp_path: Path) -> None:
    result, _, repository = _pipeline(tmp_path, "engagement_classifier", "gate.min_roc_auc=0.999")
    assert result.returncode == 1
    assert "ROC AUC" in result.stdout + result.stderr
    assert versions(repository / "engagement_classifier") == []


@pytest.mark.slow
def test_the_pipeline_reads_a_catalogue_csv_and_reports_bad_rows(tmp_path: Path) -> None:
    images = tmp_path / "catalogue"
    paths = write_image_folder(images, count=30, seed=0, size=64)
    rows = [
        {"image": str(p.relative_to(images)), "label": p.parent.name.replace("_", " ").title()} for p in paths
    ]
    rows.append({"image": "missing.jpg", "label": "Watches"})  # line 32
    rows.append({"image": str(paths[0].relative_to(images)), "label": "Sunglasses"})  # line 33
    with (images / "styles.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)

    result, run_dir, repository = _pipeline(
        tmp_path,
        "returns_classifier",
        "data.kind=folder",
        "data.generator=null",
        f"data.root={images / 'styles.csv'}",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        "gate.min_accuracy=0.0",
        "gate.min_macro_f1=0.0",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((run_dir / "data.json").read_text())
    (loader,) = report["loaders"] if "loaders" in report else report["report"]["loaders"]
    assert loader["loaded"] == 30
    skipped = {entry["where"].rsplit(":", 1)[1]: entry["reason"] for entry in loader["skipped"]}
    assert "not found" in skipped["32"] and "'Sunglasses' is not a class" in skipped["33"]
    assert versions(repository / "returns_classifier") == [1]


@pytest.mark.parametrize("model", ["returns_classifier", "engagement_classifier"])
def test_the_published_models_serve_the_contract_and_met_their_targets(model: str) -> None:
    discovery = discover(REPOSITORY)
    assert model in discovery.contracts and model not in discovery.errors
    contract = discovery.contracts[model]
    if not versions(REPOSITORY / model):
        pytest.skip(
            f"{model} has no published version: run prodseg pipeline --config training/configs/{model}.yaml"
        )
    version = REPOSITORY / model / str(latest_version(model, REPOSITORY))
    onnx_path = version / "model.onnx"
    assert onnx_path.stat().st_size < 10_000_000
    card = json.loads((version / "model_card.json").read_text())
    if model == "returns_classifier":
        assert card["evaluation"]["accuracy"] >= 0.90
    else:
        assert card["evaluation"]["roc_auc"] >= 0.85
        assert card["decision_threshold"]["chosen_on"] == "validation"
    images = np.random.default_rng(0).integers(0, 256, (3, *contract.input_size, 3), dtype=np.uint8)
    for engine in ("onnxruntime", "openvino"):
        probabilities = engine_predictor(onnx_path, engine)(images)["probabilities"]
        assert probabilities.shape == (3, contract.num_classes)
        assert np.allclose(probabilities.sum(1), 1, atol=1e-3)
