"""The standalone run end to end on a scratch repository, its refusals, and the published v1 models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from clients.contract import ModelContract
from clients.repository import discover, latest_version
from training.classification.config import ClassifierConfig, ConfigError
from training.classification.export import onnx_engine

ROOT = Path(__file__).resolve().parents[3]
REPOSITORY = ROOT / "model_repository"
TINY = {
    "task": "classification",
    "input_size": [64, 64],
    "classes": ["low_engagement", "high_engagement"],
    "data": {"kind": "procedural", "generator": "engagement", "seed": 0, "train": 24, "val": 16, "test": 16},
    "model": {"arch": "timm", "encoder": "mobilenetv3_small_050"},
    "augment": {"hflip": 0.5},
    "train": {"steps": 2, "batch_size": 8, "eval_every": 1, "threads": 1},
    "export": {"parity_images": 4},
    "publish": {"model_name": "engagement_classifier"},
}


def _scratch_repository(tmp_path: Path) -> Path:
    """The real model folder's contract, configs and labels, without its versions."""
    repository = tmp_path / "repository"
    shutil.copytree(
        REPOSITORY / "engagement_classifier",
        repository / "engagement_classifier",
        symlinks=True,
        ignore=lambda folder, names: [n for n in names if n.isdigit()],
    )
    shutil.copy2(REPOSITORY / "onnx_runner.py", repository / "onnx_runner.py")
    return repository


def _run(tmp_path: Path, config: dict, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "training.classification.train", "--config", str(path), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_a_run_trains_gates_exports_and_publishes_the_next_version(tmp_path: Path) -> None:
    repository = _scratch_repository(tmp_path)
    run_dir = tmp_path / "run"
    result = _run(tmp_path, TINY, "--run-dir", str(run_dir), "--repository", str(repository), "--publish")
    assert result.returncode == 0, result.stderr

    for name in ("data.json", "train.json", "model.onnx", "parity.json", "latency.json", "gate.json"):
        assert (run_dir / name).is_file(), name
    assert {p.name for p in (run_dir / "evaluation").iterdir()} >= {"evaluation.json", "roc.png", "pr.png"}
    assert latest_version("engagement_classifier", repository) == 1
    version = repository / "engagement_classifier" / "1"
    assert (version / "model.py").readlink() == Path("../model.py")
    card = json.loads((version / "model_card.json").read_text())
    assert card["classes"] == ["low_engagement", "high_engagement"] and card["version"] == 1
    assert 0 <= card["evaluation"]["binary"]["threshold"] <= 1
    assert card["evaluation"]["binary"]["threshold_chosen_on"] == "validation"
    assert "sigmoid" in card["data"]["rule"]  # the engagement rule is in the card
    assert "decision threshold" in (version / "MODEL_CARD.md").read_text()
    assert not discover(repository).errors


def test_a_refused_gate_publishes_nothing_and_exits_3(tmp_path: Path) -> None:
    repository = _scratch_repository(tmp_path)
    config = {**TINY, "gate": {"min_roc_auc": 0.999}}
    result = _run(
        tmp_path, config, "--run-dir", str(tmp_path / "run"), "--repository", str(repository), "--publish"
    )
    assert result.returncode == 3
    assert "FAIL: ROC AUC" in result.stdout
    assert not [p for p in (repository / "engagement_classifier").iterdir() if p.name.isdigit()]


def test_a_config_that_does_not_match_the_model_is_refused_with_exit_2(tmp_path: Path) -> None:
    repository = _scratch_repository(tmp_path)
    config = {**TINY, "input_size": [96, 96]}
    result = _run(tmp_path, config, "--run-dir", str(tmp_path / "run"), "--repository", str(repository))
    assert result.returncode == 2
    assert "engagement_classifier: input is 64x64, the run trained 96x96" in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "detection"}, "task: expected 'classification'"),
        ({"train": {"stepz": 3}}, "train: unknown key(s) ['stepz']"),
        ({"gate": {"min_accuracy": "high"}}, "gate.min_accuracy: expected float"),
        ({"publish": {}}, "publish.model_name is required"),
    ],
)
def test_bad_configs_name_the_key(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as error:
        ClassifierConfig.from_dict({**TINY, **change}, "tiny.yaml")
    assert message in str(error.value) and "tiny.yaml" in str(error.value)


def test_the_committed_configs_load() -> None:
    for name in ("returns_classifier", "engagement_classifier"):
        config = ClassifierConfig.load(ROOT / "training" / "configs" / f"{name}.yaml")
        contract = ModelContract.load(name, REPOSITORY)
        assert list(config.classes) == contract.labels.names
        assert config.input_size == contract.input_size


@pytest.mark.parametrize("name", ["returns_classifier", "engagement_classifier"])
def test_the_published_models_serve_the_contract_and_met_their_targets(name: str) -> None:
    discovery = discover(REPOSITORY)
    assert name in discovery.contracts and name not in discovery.errors
    contract = discovery.contracts[name]
    version = REPOSITORY / name / str(latest_version(name, REPOSITORY))
    onnx_path = version / "model.onnx"
    assert onnx_path.stat().st_size < 10_000_000
    card = json.loads((version / "model_card.json").read_text())
    assert card["gate"]["passed"]
    if name == "returns_classifier":
        assert card["evaluation"]["accuracy"] >= 0.90
    else:
        assert card["evaluation"]["binary"]["roc_auc"] >= 0.85
    images = np.random.default_rng(0).integers(0, 256, (3, *contract.input_size, 3), dtype=np.uint8)
    for engine in ("onnxruntime", "openvino"):
        probabilities = onnx_engine(onnx_path, engine)(images)["probabilities"]
        assert probabilities.shape == (3, contract.num_classes)
        assert np.allclose(probabilities.sum(1), 1, atol=1e-3)
