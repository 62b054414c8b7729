"""The training config: YAML -> dataclasses, and clear errors naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")  # the training extra; serving-only installs skip this module

from clients.contract import ModelContract  # noqa: E402
from training.config import (  # noqa: E402
    CONFIG_DIR,
    ConfigError,
    PipelineConfig,
    Sku110kSource,
    config_from_dict,
    load_config,
    parse_override,
)
from training.datasets import DataSpec  # noqa: E402
from training.tasks.segmentation import SegmentationGate, SegmentationLoss  # noqa: E402

# The keys every config must have: what model it trains, for which task, from which data.
BASE = {"task": "segmentation", "model_name": "shelf_segmenter", "data": {"generator": "shelves"}}


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["default", "tiny", "sku110k", "crack"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(CONFIG_DIR / f"{name}.yaml")
    assert config.source == f"{name}.yaml"
    assert config.task == "segmentation" and config.adapter.task == "segmentation"
    assert config.publish.model_name == config.model_name == config.tracking.experiment
    json.dumps(config.to_dict())  # plain data: tracked as params, stored in checkpoints


def test_the_crack_config_names_its_model_and_matches_its_contract() -> None:
    config = load_config(CONFIG_DIR / "crack.yaml")
    contract = config.contract()
    assert contract.model_name == "crack_segmenter" and contract.labels.names == ["background", "crack"]
    assert (contract.height, contract.width) == tuple(config.input_size)
    assert config.model.options["decoder_attention_type"] == "scse"
    assert min(config.model.options["decoder_channels"]) >= 16  # scSE squeezes by 16
    assert isinstance(config.data, DataSpec) and config.data.generator == "cracks"
    assert config.gate.floors.min_class_dice == {"crack": 0.7}
    assert config.augment.vflip and config.augment.transpose  # a surface has no up


def test_task_and_model_name_are_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^c.yaml: task: required \(one of segmentation, detection"):
        config_from_dict({"model_name": "x", "data": {"generator": "shelves"}}, "c.yaml")
    with pytest.raises(ConfigError, match="^c.yaml: model_name: required"):
        config_from_dict({"task": "segmentation", "data": {"generator": "shelves"}}, "c.yaml")
    with pytest.raises(ConfigError, match="^c.yaml: model_name: 'a' but publish.model_name is 'b'"):
        config_from_dict({**BASE, "model_name": "a", "publish": {"model_name": "b"}}, "c.yaml")
    named = config_from_dict({**BASE, "model_name": None, "publish": {"model_name": "b"}}, "c.yaml")
    assert named.model_name == named.tracking.experiment == named.azure.experiment == "b"


def test_loss_and_gate_floors_are_the_tasks_own_sections() -> None:
    config = config_from_dict({**BASE, "loss": {"dice": 2}, "gate": {"min_miou": 0.5, "max_regression": 0.1}})
    assert config.loss == SegmentationLoss(cross_entropy=1.0, dice=2.0)
    assert config.gate.floors == SegmentationGate(min_miou=0.5)
    assert config.gate.max_regression == 0.1 and config.gate.min_served_agreement == 0.99


def test_default_config_matches_the_served_contract() -> None:
    config = load_config(CONFIG_DIR / "default.yaml")
    contract = config.contract()
    assert (contract.height, contract.width) == tuple(config.input_size)
    assert list(config.classes) == contract.labels.names
    assert config.model.arch == "Unet" and config.model.options["decoder_channels"] == [64, 32, 24, 16, 8]
    assert config.augment.jpeg_probability > 0  # compression augmentation is on
    assert isinstance(config.data, DataSpec) and config.data.kind == "procedural"


def test_sku110k_source_paths_are_under_its_root(tmp_path: Path) -> None:
    config = load_config(CONFIG_DIR / "sku110k.yaml", {"data.root": str(tmp_path)})
    assert isinstance(config.data, Sku110kSource)
    assert config.data.path("annotations") == tmp_path / "annotations/annotations_train.csv"
    assert config.model.options["decoder_attention_type"] == "scse"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("trian: {steps: 3}", "top level", "unknown key(s) ['trian']"),
        ("task: tracking", "task", "expected one of ['segmentation', 'detection', 'classification']"),
        ("loss: {focal: 1}", "loss", "unknown key(s) ['focal']"),
        ("gate: {min_map: 0.5}", "gate", "unknown key(s) ['min_map']; known: ['min_onnxruntime_agreement'"),
        ("data: {generator: lasers}", "data", "data.generator must be one of ['cracks'"),
        ("data: {kind: folder, root: x, mask_format: rgb}", "data", "data.mask_format must be"),
        (
            "model: {options: {decoder_attention_type: scse, decoder_channels: [64, 32, 16, 8, 8]}}",
            "model.options.decoder_channels",
            "scse needs >= 16 channels, got [8, 8]",
        ),
        ("augment: {transpose: 0.5, crop: [64, 96]}", "augment.transpose", "needs a square crop"),
        ("train: {steps: 3, stepz: 4}", "train", "unknown key(s) ['stepz']"),
        ("model: {arch: UNetX}", "model.arch", "unknown architecture 'UNetX'"),
        ("model: {encoder: resnet9}", "model.encoder", "unknown encoder 'resnet9'"),
        ("model: {encoder: tu-mobilenetv9_small}", "model.encoder", "unknown timm model 'mobilenetv9_small'"),
        ("model: {arch: FPN, options: {decoder_channels: [8]}}", "model.options", "not options of smp.FPN"),
        ("model: {options: {classes: 3}}", "model.options", "['classes'] are not options"),
        ("train: {steps: ten}", "train.steps", "expected int, got 'ten'"),
        ("train: {steps: 3, batch_size: true}", "train.batch_size", "expected int, got True"),
        ("train: {epochs: 1, steps: 3}", "train", "give epochs or steps, not both"),
        ("train: {steps: 0}", "train.steps", "must be > 0"),
        ("train: {steps: 3, device: tpu}", "train.device", "expected one of ['auto', 'cpu', 'cuda']"),
        ("augment: {crop: [64]}", "augment.crop", "expected 2 values"),
        ("augment: {jpeg_quality: [90, 20]}", "augment.jpeg_quality", "within 1..100"),
        ("data: {kind: video, generator: shelves}", "data", "data.kind must be 'procedural' or 'folder'"),
        ("data: {kind: sku110k, annotations: a.csv, images: img}", "data.sam_checkpoint", "required with"),
        ("data: {kind: sku110k, images: img, labeler: box}", "data", "annotations"),
        ("gate: {min_class_iou: {product: high}}", "gate.min_class_iou.product", "expected float"),
    ],
)
def test_bad_configs_name_the_file_and_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    raw = {**BASE, **yaml.safe_load(text)}  # each case breaks one key of an otherwise valid config
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, yaml.safe_dump(raw)))
    message = str(error.value)
    assert message.startswith(f"run.yaml: {key}:"), message
    assert problem in message


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [steps: 3"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_overrides_use_dotted_keys_and_yaml_values(tmp_path: Path) -> None:
    assert parse_override("train.steps=5") == ("train.steps", 5)
    assert parse_override("publish.promote=production") == ("publish.promote", "production")
    assert parse_override("augment.crop=[32, 64]") == ("augment.crop", [32, 64])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.steps")
    config = load_config(CONFIG_DIR / "tiny.yaml", dict([parse_override("train.steps=7")]))
    assert config.train.steps == 7 and config.augment.crop == (64, 96)
    with pytest.raises(ConfigError, match="tiny.yaml: train.steps.x: steps is not a section"):
        load_config(CONFIG_DIR / "tiny.yaml", {"train.steps.x": 1})


def test_contract_assertions(tmp_path: Path) -> None:
    contract = ModelContract.load("shelf_segmenter")
    base = {**BASE, "train": {"steps": 1}}
    config_from_dict({**base, "input_size": [contract.height, contract.width]}, "ok.yaml").check_contract(
        contract
    )
    cases = {
        "input_size": {"input_size": [96, 160]},
        "classes": {"classes": ["background", "product"]},
        "gate.min_class_iou": {"gate": {"min_class_iou": {"bottle": 0.5}}},
        "gate.min_class_dice": {"gate": {"min_class_dice": {"crack": 0.5}}},
        "task": {"task": "segmentation", "model_name": "x"},
        "augment.crop": {"augment": {"crop": [contract.height + 32, 64]}},
    }
    for key, values in cases.items():
        config = config_from_dict({**base, **values}, "c.yaml")
        with pytest.raises(ConfigError, match=f"^c.yaml: {key}:"):
            config.check_contract(contract if key != "task" else ModelContract.load("mask_detector"))


def test_a_missing_repository_is_a_config_error(tmp_path: Path) -> None:
    config = config_from_dict(
        {**BASE, "train": {"steps": 1}, "publish": {"repository": str(tmp_path)}}, "c.yaml"
    )
    with pytest.raises(ConfigError, match="c.yaml: publish.repository: cannot read the model contract"):
        config.contract()


def test_defaults_are_a_runnable_recipe_once_model_task_and_data_are_named() -> None:
    assert PipelineConfig().train.steps == 600
    config = config_from_dict(BASE)
    assert config.gate.min_onnxruntime_agreement == 0.999 and config.loss == SegmentationLoss()
