"""The contract is read from config.pbtxt; every per-environment config must keep it."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from clients.contract import ModelContract, default_repository, read_model_config

MODEL_DIR = default_repository() / "shelf_segmenter"
CONFIGS = [MODEL_DIR / "config.pbtxt", *sorted((MODEL_DIR / "configs").glob("*.pbtxt"))]


def test_contract_is_uint8_frames_in_class_ids_out(contract):
    assert (contract.model_name, contract.input_name, contract.output_name) == (
        "shelf_segmenter",
        "images",
        "masks",
    )
    assert contract.width / contract.height == pytest.approx(640 / 384)
    assert contract.max_batch_size >= 8


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.name)
def test_every_environment_config_keeps_the_contract(config_path: Path):
    portable, variant = read_model_config(CONFIGS[0]), read_model_config(config_path)
    assert variant.name == portable.name
    assert [(t.name, t.data_type, list(t.dims)) for t in variant.input] == [
        (t.name, t.data_type, list(t.dims)) for t in portable.input
    ]
    assert [(t.name, t.data_type, list(t.dims), t.label_filename) for t in variant.output] == [
        (t.name, t.data_type, list(t.dims), t.label_filename) for t in portable.output
    ]
    assert variant.HasField("dynamic_batching")


def test_cpu_config_runs_the_python_runner_and_gpu_config_uses_tensorrt():
    cpu = read_model_config(MODEL_DIR / "configs" / "cpu.pbtxt")
    gpu = read_model_config(MODEL_DIR / "configs" / "gpu.pbtxt")
    assert cpu.backend == "python" and cpu.parameters["engine"].string_value == "openvino"
    assert gpu.backend == "onnxruntime"
    accelerators = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accelerators] == ["tensorrt"]
    assert gpu.instance_group[0].kind == gpu.instance_group[0].KIND_GPU


def test_a_config_with_float_input_is_refused(tmp_path: Path):
    model_dir = tmp_path / "shelf_segmenter"
    model_dir.mkdir()
    shutil.copy(MODEL_DIR / "labels.txt", model_dir)
    text = (MODEL_DIR / "config.pbtxt").read_text().replace("TYPE_UINT8", "TYPE_FP32", 1)
    (model_dir / "config.pbtxt").write_text(text)
    with pytest.raises(ValueError, match="must be TYPE_UINT8"):
        ModelContract.load(tmp_path)


def test_frames_are_resized_to_the_model_and_masks_back_to_the_frame(contract):
    frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    model_input = contract.to_model_input(frame)
    assert model_input.shape == (contract.height, contract.width, 3)
    mask = np.zeros((contract.height, contract.width), np.uint8)
    mask[:, contract.width // 2 :] = 2
    restored = contract.mask_to_frame(mask, frame.shape)
    assert restored.shape == (720, 1280)
    assert set(np.unique(restored)) == {0, 2}  # nearest neighbour: no invented class ids


def test_non_rgb_frames_are_refused(contract):
    with pytest.raises(ValueError, match="expected an RGB uint8 frame"):
        contract.to_model_input(np.zeros((10, 10), np.uint8))
