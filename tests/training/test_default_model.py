"""The default model (`prodseg model`): the spine's recipe, built from the pipeline's parts.

Export, parity and publishing are tested in test_export.py and test_registry.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the training extra; serving-only installs skip this module

from clients.contract import ModelContract, default_repository  # noqa: E402
from training.default_model import DefaultModelConfig, build_default_model  # noqa: E402

# A few steps on small crops: weights that are not uniform noise, in about a second.
TINY = DefaultModelConfig(train_scenes=4, val_scenes=2, crop=(64, 96), steps=3, batch_size=2)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A scratch repository with the real config and labels, so the contract is the real one."""
    source = default_repository() / "shelf_segmenter"
    model_dir = tmp_path / "shelf_segmenter"
    model_dir.mkdir()
    for name in ("config.pbtxt", "labels.txt"):
        shutil.copy(source / name, model_dir / name)
    return tmp_path


def test_the_recipe_is_version_one() -> None:
    """The pipeline config of the defaults says what the committed version 1's card says."""
    card = json.loads((default_repository() / "shelf_segmenter" / "1" / "model_card.json").read_text())
    config = DefaultModelConfig().pipeline_config()
    assert (config.model.arch, config.model.encoder) == (card["architecture"], card["encoder"])
    assert config.model.options == {"decoder_channels": card["decoder_channels"]}
    assert (config.data.seed, config.data.train, config.data.val) == (
        card["data"]["data_seed"],
        card["data"]["train_scenes"],
        card["data"]["val_scenes"],
    )
    assert list(config.augment.crop) == card["data"]["crop"]
    assert (config.augment.brightness, config.augment.contrast, config.augment.jpeg_probability) == (0, 0, 0)
    training = card["training"]
    assert (config.train.steps, config.train.batch_size, config.train.seed) == (
        training["steps"],
        training["batch_size"],
        training["seed"],
    )
    assert (config.optimizer.lr, config.optimizer.weight_decay) == (training["lr"], training["weight_decay"])


def test_build_default_model_tiny(repository: Path) -> None:
    version, card = build_default_model(TINY, repository)
    assert version == 1
    required = {
        "model_name", "version", "architecture", "encoder", "params", "input_height", "input_width",
        "classes", "data", "training", "evaluation", "parity", "versions", "created",
    }  # fmt: skip
    assert required <= card.keys()
    assert card["classes"] == ModelContract.load("shelf_segmenter", repository).labels.names
    assert card["task"] == "segmentation" and card["data"]["generator"] == "shelves"
    assert {"seed", "train", "val"} <= card["data"].keys()
    assert {"steps", "batch_size", "train_s"} <= card["training"].keys()
    assert {"miou", "per_class_iou"} <= card["evaluation"].keys() and card["evaluation"]["images"] == 2
    assert card["parity"]["onnxruntime"] >= 0.999 and 0 <= card["parity"]["served"] <= 1
    assert {"torch", "segmentation_models_pytorch", "onnx"} <= card["versions"].keys()
    published = repository / "shelf_segmenter" / "1"
    assert json.loads((published / "model_card.json").read_text()) == card
    assert (published / "model.onnx").stat().st_size <= 10 * 2**20
