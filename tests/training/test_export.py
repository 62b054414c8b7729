"""The serving graph: contract in the graph, ONNX export, parity with the served engine, OpenVINO IR,
TensorRT plans."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the training extra; serving-only installs skip this module

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from clients.contract import ModelContract, default_repository  # noqa: E402
from tests.training.helpers import MODEL, make_repository  # noqa: E402
from training import engine_build  # noqa: E402
from training.config import CONFIG_DIR, load_config  # noqa: E402
from training.export import (  # noqa: E402
    ServingModel,
    check_parity,
    engine_predictor,
    export_onnx,
    export_openvino,
    served_engine,
    serving_model,
    torch_predictor,
)
from training.tasks import adapter_for  # noqa: E402
from training.tasks.segmentation import create_model  # noqa: E402
from training.train import train  # noqa: E402

SEGMENTATION = adapter_for("segmentation")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("repo"))  # 96x160 input


@pytest.fixture(scope="module")
def contract(repository: Path) -> ModelContract:
    return ModelContract.load(MODEL, repository)


@pytest.fixture(scope="module")
def trained(contract: ModelContract, tmp_path_factory: pytest.TempPathFactory):
    config = load_config(CONFIG_DIR / "tiny.yaml")
    splits = SEGMENTATION.build_splits(config, contract, tmp_path_factory.mktemp("work"))
    return train(config, contract, splits.train).model, splits


@pytest.fixture(scope="module")
def exported(trained, contract: ModelContract, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(trained[0], path, contract, SEGMENTATION)
    return path


def pytorch(model: torch.nn.Module, contract: ModelContract):
    return torch_predictor(serving_model(model, SEGMENTATION, contract), contract.output_names)


def test_torchvision_imports_and_nms_runs() -> None:
    import torchvision.ops

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [0, 2]


def test_serving_model_maps_uint8_nhwc_to_class_ids() -> None:
    model = create_model("Unet", "tu-mobilenetv3_small_100", 4, decoder_channels=(16,) * 5)
    images = torch.randint(0, 256, (2, 64, 96, 3), dtype=torch.uint8)
    with torch.inference_mode():
        (masks,) = ServingModel(model, SEGMENTATION.serving_head(None)).eval()(images)
    assert masks.shape == (2, 64, 96) and masks.dtype == torch.uint8 and int(masks.max()) < 4


def test_onnx_matches_contract(exported: Path, contract: ModelContract) -> None:
    graph = onnx.load(str(exported)).graph
    (image,), (mask,) = graph.input, graph.output
    assert (image.name, mask.name) == (contract.input_name, "masks")
    assert image.type.tensor_type.elem_type == mask.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    image_dims, mask_dims = image.type.tensor_type.shape.dim, mask.type.tensor_type.shape.dim
    assert image_dims[0].dim_param and mask_dims[0].dim_param  # batch only is dynamic
    assert [d.dim_value for d in image_dims[1:]] == [contract.height, contract.width, 3]
    assert [d.dim_value for d in mask_dims[1:]] == [contract.height, contract.width]
    assert not list(exported.parent.glob(".*partial"))  # written through a temporary file


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_agrees_with_pytorch(
    exported: Path, trained, contract: ModelContract, batch: int
) -> None:
    rng = np.random.default_rng(batch)
    images = rng.integers(0, 256, (batch, contract.height, contract.width, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (masks,) = session.run(None, {contract.input_name: images})
    assert masks.dtype == np.uint8 and masks.shape == (batch, contract.height, contract.width)
    assert (masks == pytorch(trained[0], contract)(images)["masks"]).mean() >= 0.999


def test_parity_runs_the_engine_the_cpu_config_serves(
    exported: Path, trained, contract: ModelContract, repository: Path
) -> None:
    assert served_engine(repository, MODEL) == ("openvino", 1, "")  # configs/cpu.pbtxt's parameters
    model, splits = trained
    parity = check_parity(model, exported, splits.test, contract, SEGMENTATION, repository, max_images=2)
    assert parity.images == 2 and parity.units == 2 * contract.height * contract.width
    assert parity.served_engine == "openvino" and parity.served_precision in ("bf16", "f32", "f16")
    assert parity.onnxruntime >= 0.999 and 0.9 <= parity.served <= 1.0


def test_a_config_that_serves_fp32_is_checked_in_fp32(
    exported: Path, trained, contract: ModelContract, repository: Path, tmp_path: Path
) -> None:
    # A model whose predictions sit near its decision boundary can be served in f32 (the engagement
    # classifier is): parity then runs OpenVINO as that config says.
    served = tmp_path / "repository"
    shutil.copytree(repository, served, symlinks=True)
    config = served / MODEL / "configs" / "cpu.pbtxt"
    text = config.read_text()
    assert text.count("parameters [") == 1
    config.write_text(
        text.replace(
            "parameters [", 'parameters [\n  { key: "openvino_precision" value: { string_value: "f32" } },'
        )
    )
    assert served_engine(served, MODEL) == ("openvino", 1, "f32")
    model, splits = trained
    parity = check_parity(model, exported, splits.test, contract, SEGMENTATION, served, max_images=2)
    assert parity.served_precision == "f32" and parity.served >= 0.999


def test_the_served_engine_is_the_serving_runners(exported: Path, contract: ModelContract) -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, contract.height, contract.width, 3), np.uint8)
    engine = engine_predictor(exported, "onnxruntime")
    assert type(engine).__name__ == "OnnxEngine" and engine.engine == "onnxruntime"
    outputs = engine(images)
    assert set(outputs) == {"masks"} and outputs["masks"].shape == (2, contract.height, contract.width)


def test_openvino_ir_agrees_with_onnx(exported: Path, contract: ModelContract, tmp_path: Path) -> None:
    import openvino as ov

    written = export_openvino(exported, tmp_path / "ir")
    assert sorted(p.name for p in written) == ["model.bin", "model.xml"]
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == [
        "model.bin",
        "model.xml",
    ]  # no staging left
    images = np.random.default_rng(0).integers(
        0, 256, (1, contract.height, contract.width, 3), dtype=np.uint8
    )
    compiled = ov.Core().compile_model(
        str(tmp_path / "ir" / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    assert (compiled(images)[0] == engine_predictor(exported)(images)["masks"]).mean() >= 0.999


# ------------------------------------------------------------------------------------------ TensorRT


def test_plan_names_follow_the_compute_capability() -> None:
    assert engine_build.plan_filename("9.0") == "model.sm90.plan"
    assert engine_build.plan_filename("8.6") == "model.sm86.plan"


def test_the_served_config_switches_to_the_plan_with_the_same_contract() -> None:
    """What a GPU pod will serve after a build (the one switch: clients.config_text)."""
    gpu_path = default_repository() / "shelf_segmenter" / "configs" / "gpu.pbtxt"
    plans = {"9.0": "model.sm90.plan", "8.0": "model.sm80.plan"}
    served = engine_build.check_served_config(gpu_path.read_text(), plans, "9.0", gpu_path)
    config = text_format.Parse(served, model_config_pb2.ModelConfig())
    gpu = text_format.Parse(gpu_path.read_text(), model_config_pb2.ModelConfig())
    assert config.backend == "tensorrt" and config.default_model_filename == "model.sm90.plan"
    assert dict(config.cc_model_filenames) == plans
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator  # ORT's EP settings gone
    same = ("input", "output", "max_batch_size", "dynamic_batching", "instance_group", "version_policy")
    for field in same:
        assert getattr(config, field) == getattr(gpu, field), field
    with pytest.raises(engine_build.EngineBuildError, match="cannot be served on TensorRT plans"):
        engine_build.check_served_config(gpu_path.read_text(), plans, "7.5", gpu_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of machines without a GPU")
def test_no_gpu_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(engine_build.EngineBuildError) as error:
        engine_build.build_engine(make_repository(tmp_path), 1, "shelf_segmenter")
    message = str(error.value)
    assert message.startswith("TensorRT engine builds need an NVIDIA GPU and the tensorrt package: ")
    assert "no CUDA device is visible" in message
