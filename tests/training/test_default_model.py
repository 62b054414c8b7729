"""Fast checks of the default-model pipeline: I/O contract in the graph, ONNX export, publishing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the training extra; serving-only installs skip this module

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from clients.contract import ModelContract, default_repository  # noqa: E402
from training.default_model import (  # noqa: E402
    DefaultModelConfig,
    ServingModel,
    build_default_model,
    create_model,
    export_onnx,
    publish,
    train,
)

# A few steps on small crops: weights that are not uniform noise, in about a second.
TINY = DefaultModelConfig(train_scenes=4, val_scenes=2, crop=(64, 96), steps=3, batch_size=2)


@pytest.fixture(scope="module")
def contract() -> ModelContract:
    return ModelContract.load(default_repository())


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A scratch repository with the real config and labels, so the contract is the real one."""
    source = default_repository() / "shelf_segmenter"
    model_dir = tmp_path / "shelf_segmenter"
    model_dir.mkdir()
    for name in ("config.pbtxt", "labels.txt"):
        shutil.copy(source / name, model_dir / name)
    return tmp_path


@pytest.fixture(scope="module")
def tiny_model(contract: ModelContract) -> torch.nn.Module:
    model, _ = train(TINY, contract)
    return model


@pytest.fixture(scope="module")
def exported(tiny_model: torch.nn.Module, contract: ModelContract, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(tiny_model, path, contract)
    return path


def test_torchvision_imports_and_nms_runs() -> None:
    import torchvision.ops

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [0, 2]


def test_serving_model_maps_uint8_nhwc_to_class_ids(contract: ModelContract) -> None:
    model = create_model("Unet", "tu-mobilenetv3_small_100", contract.num_classes, decoder_channels=(16,) * 5)
    images = torch.randint(0, 256, (2, 64, 96, 3), dtype=torch.uint8)
    with torch.inference_mode():
        masks = ServingModel(model).eval()(images)
    assert masks.shape == (2, 64, 96)
    assert masks.dtype == torch.uint8
    assert int(masks.max()) < contract.num_classes


def test_onnx_matches_contract(exported: Path, contract: ModelContract) -> None:
    graph = onnx.load(str(exported)).graph
    (image,), (mask,) = graph.input, graph.output
    assert (image.name, mask.name) == (contract.input_name, contract.output_name)
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert mask.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    image_dims = image.type.tensor_type.shape.dim
    mask_dims = mask.type.tensor_type.shape.dim
    assert image_dims[0].dim_param and mask_dims[0].dim_param  # batch only is dynamic
    assert [d.dim_value for d in image_dims[1:]] == [contract.height, contract.width, 3]
    assert [d.dim_value for d in mask_dims[1:]] == [contract.height, contract.width]


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_agrees_with_pytorch(
    exported: Path, tiny_model: torch.nn.Module, contract: ModelContract, batch: int
) -> None:
    rng = np.random.default_rng(batch)
    images = rng.integers(0, 256, (batch, contract.height, contract.width, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (masks,) = session.run(None, {contract.input_name: images})
    with torch.inference_mode():
        expected = ServingModel(tiny_model).eval()(torch.from_numpy(images)).numpy()
    assert masks.dtype == np.uint8 and masks.shape == (batch, contract.height, contract.width)
    assert (masks == expected).mean() >= 0.999


def test_publish_writes_next_version_and_never_overwrites(repository: Path, tmp_path: Path) -> None:
    model_dir = repository / "shelf_segmenter"
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    first.write_bytes(b"first")
    second.write_bytes(b"second")

    assert publish(first, {"note": "a"}, repository) == 1
    assert publish(second, {"note": "b"}, repository) == 2

    assert (model_dir / "1" / "model.onnx").read_bytes() == b"first"
    assert (model_dir / "2" / "model.onnx").read_bytes() == b"second"
    card = json.loads((model_dir / "2" / "model_card.json").read_text())
    assert card["version"] == 2 and card["note"] == "b" and card["model_name"] == "shelf_segmenter"
    assert "| model | shelf_segmenter v2 |" in (model_dir / "2" / "MODEL_CARD.md").read_text()
    link = model_dir / "1" / "model.py"
    assert link.is_symlink() and os.readlink(link) == "../model.py"
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".")]  # no staging left

    (model_dir / "7").mkdir()  # a gap in numbering: the next is after the highest
    assert publish(first, {}, repository) == 8


def test_build_default_model_tiny(repository: Path) -> None:
    version, card = build_default_model(TINY, repository)
    assert version == 1
    required = {
        "model_name", "version", "architecture", "encoder", "params", "input_height", "input_width",
        "classes", "data", "training", "evaluation", "parity", "versions", "created",
    }  # fmt: skip
    assert required <= card.keys()
    assert card["classes"] == ModelContract.load(repository).labels.names
    assert {"data_seed", "train_scenes", "val_scenes"} <= card["data"].keys()
    assert {"steps", "batch_size", "train_s"} <= card["training"].keys()
    assert {"miou", "per_class_iou"} <= card["evaluation"].keys()
    assert card["parity"]["onnxruntime"] >= 0.999 and 0 <= card["parity"]["openvino"] <= 1
    assert {"torch", "segmentation_models_pytorch", "onnx"} <= card["versions"].keys()
    published = repository / "shelf_segmenter" / "1"
    assert json.loads((published / "model_card.json").read_text()) == card
    assert (published / "model.onnx").stat().st_size <= 10 * 2**20
