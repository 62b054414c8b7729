"""The detection task through the one pipeline: config checks, folder splits, a tiny end-to-end run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from clients.repository import discover
from datagen.faces import CLASSES, write_yolo_dataset
from training.config import ConfigError, config_from_dict
from training.tasks import adapter_for
from training.tasks.detection import folder_splits

REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"
TINY = {
    "task": "detection",
    "model_name": "mask_detector",
    "data": {"kind": "procedural", "generator": "faces", "seed": 0, "train": 6, "val": 0, "test": 3},
    "model": {
        "arch": "centernet",
        "encoder": "plain",
        "options": {"widths": [8, 8, 16, 16], "depths": [1, 1, 1, 1], "stem": 8, "neck": 8},
    },
    "augment": {"crop": [96, 128], "hflip": 0.5, "brightness": 0.2, "contrast": 0.2, "jpeg_probability": 0.5},
    "schedule": {"warmup_steps": 2},
    "train": {"steps": 4, "batch_size": 2, "seed": 0, "threads": 1, "checkpoint_every": 2},
    "evaluate": {"batch_size": 2, "worst_k": 2},
    "export": {"parity_images": 2},
    "gate": {"min_map50": 0.0, "min_served_agreement": 0.0, "min_onnxruntime_agreement": 0.0},
}


@pytest.fixture
def scratch_repository(tmp_path: Path) -> Path:
    """mask_detector's folder (no versions) with a small input, so a run takes seconds."""
    repository = tmp_path / "repository"
    repository.mkdir()
    shutil.copy(REPOSITORY / "onnx_runner.py", repository)
    shutil.copytree(
        REPOSITORY / "mask_detector",
        repository / "mask_detector",
        symlinks=True,
        ignore=lambda folder, names: [n for n in names if n.isdigit()],
    )
    for config in [
        repository / "mask_detector" / "config.pbtxt",
        *(repository / "mask_detector" / "configs").glob("*"),
    ]:
        config.write_text(config.read_text().replace("320, 416, 3", "128, 160, 3"))
    return repository


def _config(**changes):
    raw = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    return raw


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model.arch": "Unet"}, "model: detection models are arch: centernet"),
        ({"augment.crop": [100, 128]}, "augment.crop: must be multiples of 32"),
        ({"augment.vflip": 0.5}, "augment: faces have an up"),
        ({"data.generator": "shelves"}, "data.generator: detection draws 'faces'"),
        ({"model.options": {"widths": [8, 8, 16]}}, "model.options: widths and depths need 4 stages"),
        ({"gate.min_map05": 0.5}, "gate: unknown key(s) ['min_map05']"),
    ],
)
def test_config_errors_name_the_key(change: dict, message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        config_from_dict(_config(**change), "tiny.yaml")


def test_the_shipped_config_matches_the_served_contract() -> None:
    config = config_from_dict(
        yaml.safe_load((REPOSITORY.parent / "training/configs/mask_detector.yaml").read_text())
    )
    contract = config.contract()
    assert contract.task == "detection" and tuple(contract.labels.names) == CLASSES
    assert config.gate.floors.min_map50 >= 0.6


def test_contract_checks_refuse_a_class_floor_the_model_does_not_have(scratch_repository: Path) -> None:
    raw = _config(**{"gate.min_class_ap50": {"helmet": 0.5}})
    raw["publish"] = {"repository": str(scratch_repository)}
    with pytest.raises(ConfigError, match=r"gate.min_class_ap50: \['helmet'\] are not classes"):
        config_from_dict(raw, "tiny.yaml").contract()


def test_yolo_folder_splits_report_skipped_rows(tmp_path: Path) -> None:
    root = write_yolo_dataset(tmp_path / "faces", 10, height=96, width=128)
    (root / "labels" / "train_00000.txt").write_text("0 0.5 0.5 0.2\n")
    splits = folder_splits(root, CLASSES, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 2)
    assert splits.report["format"] == "yolo"
    assert splits.report["skipped"] == [
        {"where": "train_00000.txt:1", "reason": "expected 5 values (class cx cy w h), got 4"}
    ]
    sample = splits.test[0]
    assert sample.image.shape == (96, 128, 3) and sample.boxes.shape[1] == 4


def test_sample_batch_gives_crops_with_matching_targets() -> None:
    adapter = adapter_for("detection")
    config = config_from_dict(_config(), "tiny.yaml")
    from training.detection.data import ProceduralFaces
    from training.tasks.detection import InMemoryDetections

    data = InMemoryDetections([ProceduralFaces("train", 4, 128, 160)[i] for i in range(4)], 3)
    images, targets = adapter.sample_batch(data, config.augment, 3, np.random.default_rng(0))
    assert images.shape == (3, 96, 128, 3) and images.dtype == np.uint8
    assert targets["heat"].shape == (3, 3, 24, 32) and targets["box_target"].shape == (3, 4, 24, 32)


@pytest.mark.slow
def test_the_pipeline_trains_exports_gates_and_publishes_a_detector(
    tmp_path: Path, scratch_repository: Path, prodseg
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run_dir = tmp_path / "run"
    result = prodseg(
        "pipeline",
        "--config",
        str(config),
        "--run-dir",
        str(run_dir),
        "--repository",
        str(scratch_repository),
        "--set",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "published mask_detector version 1" in result.stdout + result.stderr
    version = scratch_repository / "mask_detector" / "1"
    assert (version / "model.onnx").is_file() and (version / "model.py").is_symlink()
    card = json.loads((version / "model_card.json").read_text())
    assert card["task"] == "detection" and set(card["evaluation"]) >= {"map50", "map50_95", "per_class_ap50"}
    assert (run_dir / "evaluation" / "pr_curves.png").is_file()
    found = discover(scratch_repository)
    assert not found.errors and "mask_detector" in found.contracts
