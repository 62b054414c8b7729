"""The serving graph: contract in the graph, ONNX export, parity, OpenVINO IR, TensorRT plans."""

from __future__ import annotations

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
from tests.training.helpers import make_repository, served_versions  # noqa: E402
from training import engine_build  # noqa: E402
from training.config import CONFIG_DIR, load_config  # noqa: E402
from training.datasets import build_splits  # noqa: E402
from training.export import ServingModel, check_parity, export_onnx, export_openvino, predictor  # noqa: E402
from training.train import create_model, train  # noqa: E402


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory) -> ModelContract:
    return ModelContract.load(make_repository(tmp_path_factory.mktemp("repo")))  # 96x160 input


@pytest.fixture(scope="module")
def trained(contract: ModelContract):
    config = load_config(CONFIG_DIR / "tiny.yaml")
    splits = build_splits(config.data, contract.height, contract.width, contract.labels)
    return train(config, contract, splits.train).model, splits


@pytest.fixture(scope="module")
def exported(trained, contract: ModelContract, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(trained[0], path, contract)
    return path


def test_torchvision_imports_and_nms_runs() -> None:
    import torchvision.ops

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [0, 2]


def test_serving_model_maps_uint8_nhwc_to_class_ids() -> None:
    model = create_model("Unet", "tu-mobilenetv3_small_100", 4, decoder_channels=(16,) * 5)
    images = torch.randint(0, 256, (2, 64, 96, 3), dtype=torch.uint8)
    with torch.inference_mode():
        masks = ServingModel(model).eval()(images)
    assert masks.shape == (2, 64, 96) and masks.dtype == torch.uint8 and int(masks.max()) < 4


def test_onnx_matches_contract(exported: Path, contract: ModelContract) -> None:
    graph = onnx.load(str(exported)).graph
    (image,), (mask,) = graph.input, graph.output
    assert (image.name, mask.name) == (contract.input_name, contract.output_name)
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
    assert (masks == predictor(trained[0])(images)).mean() >= 0.999


def test_parity_report(exported: Path, trained, contract: ModelContract) -> None:
    model, splits = trained
    parity = check_parity(model, exported, splits.test, contract, max_images=2)
    assert parity.images == 2 and parity.pixels == 2 * contract.height * contract.width
    assert parity.onnxruntime >= 0.999 and 0.9 <= parity.openvino <= 1.0
    assert parity.openvino_precision in ("bf16", "f32", "f16")


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
    assert (compiled(images)[0] == predictor(exported)(images)).mean() >= 0.999


# ------------------------------------------------------------------------------------------ TensorRT


def test_plan_names_follow_the_compute_capability() -> None:
    assert engine_build.plan_filename("9.0") == "model.sm90.plan"
    assert engine_build.plan_filename("8.6") == "model.sm86.plan"


def test_trt_config_is_gpu_config_on_tensorrt_with_every_plan() -> None:
    gpu_text = (default_repository() / "shelf_segmenter" / "configs" / "gpu.pbtxt").read_text()
    first = engine_build.trt_config_text(gpu_text, None, "9.0", "model.sm90.plan")
    both = engine_build.trt_config_text(gpu_text, first, "8.0", "model.sm80.plan")
    config = text_format.Parse(both, model_config_pb2.ModelConfig())
    gpu = text_format.Parse(gpu_text, model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and not config.backend and not config.default_model_filename
    assert dict(config.cc_model_filenames) == {"9.0": "model.sm90.plan", "8.0": "model.sm80.plan"}
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator  # ORT's EP settings gone
    for field in (
        "input",
        "output",
        "max_batch_size",
        "dynamic_batching",
        "instance_group",
        "version_policy",
    ):
        assert getattr(config, field) == getattr(gpu, field), field
    assert both.startswith("# GPU variant with native TensorRT plans")
    rebuilt = engine_build.trt_config_text(gpu_text, both, "9.0", "model.sm90.plan")
    assert text_format.Parse(rebuilt, model_config_pb2.ModelConfig()) == config  # rebuilding is idempotent


def test_trt_config_is_pinned_like_the_others(tmp_path: Path) -> None:
    from training import registry

    repository = make_repository(tmp_path)
    engine_build.write_trt_config(repository / "shelf_segmenter", "9.0", "model.sm90.plan")
    (tmp_path / "m.onnx").write_bytes(b"x")
    registry.publish(tmp_path / "m.onnx", {}, repository)
    registry.promote(repository, 1)
    assert served_versions(repository)["configs/gpu-trt.pbtxt"] == [1]
    assert ModelContract.load(repository).height == 96


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of machines without a GPU")
def test_no_gpu_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(engine_build.EngineBuildError) as error:
        engine_build.build_engine(make_repository(tmp_path), 1)
    message = str(error.value)
    assert message.startswith("TensorRT engine builds need an NVIDIA GPU and the tensorrt package: ")
    assert "no CUDA device is visible" in message
