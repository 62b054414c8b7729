"""The scripts the pods run (charts/prodsegmenter/files/), run here against the real model repository:
model sync from a volume, version pinning, TensorRT plan selection and trtexec flags. The
rewritten configs are parsed with Triton's own protobuf schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

from clients.contract import ModelContract, default_repository, read_model_config
from tests.charts.toolbox import CHART

FILES = CHART / "files"
MODEL = "shelf_segmenter"


def prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(FILES / "prepare_model.py"), *args], capture_output=True, text=True, check=True
    )


def sync_from_volume(store: Path, destination: Path, version: int) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "MODEL_SOURCE": "pvc",
        "STORE_DIR": str(store),
        "MODEL_NAME": MODEL,
        "MODEL_VERSION": str(version),
        "MODEL_DIR": str(destination),
    }
    return subprocess.run(
        ["sh", str(FILES / "model-store.sh"), "sync"], env=env, capture_output=True, text=True
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """The project's model repository plus a second version, as `prodseg publish` would leave it."""
    store = tmp_path / "store"
    shutil.copytree(default_repository(), store, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(store / MODEL / "1", store / MODEL / "2", symlinks=True)
    (store / MODEL / "aliases.json").write_text('{"production": 2}\n')
    return store


def test_scripts_are_valid_posix_sh():
    for script in ("model-store.sh", "build-engine.sh"):
        subprocess.run(["sh", "-n", str(FILES / script)], check=True)


def test_sync_copies_one_version_and_the_model_files(store, tmp_path):
    models = tmp_path / "models"
    result = sync_from_volume(store, models, 1)
    assert result.returncode == 0, result.stderr
    synced = models / MODEL
    assert sorted(p.name for p in synced.iterdir()) == sorted(
        ["1", "aliases.json", "config.pbtxt", "configs", "labels.txt", "model.py"]
    )
    # The version's model.py link (../model.py) arrives as a file: the copy stands alone.
    assert (synced / "1" / "model.py").is_file() and not (synced / "1" / "model.py").is_symlink()
    assert (synced / "1" / "model.onnx").stat().st_size == (store / MODEL / "1" / "model.onnx").stat().st_size


def test_sync_of_an_unpublished_version_fails_and_says_so(store, tmp_path):
    result = sync_from_volume(store, tmp_path / "models", 7)
    assert result.returncode != 0
    assert "version 7 not found" in result.stderr


def test_pin_makes_every_config_serve_exactly_the_synced_version(store, tmp_path):
    models = tmp_path / "models"
    assert sync_from_volume(store, models, 2).returncode == 0
    prepare("pin", f"--model-dir={models / MODEL}", "--version=2")
    for config_path in [models / MODEL / "config.pbtxt", *(models / MODEL / "configs").glob("*.pbtxt")]:
        config = read_model_config(config_path)
        assert list(config.version_policy.specific.versions) == [2], config_path
    # The contract the clients read is unchanged.
    assert ModelContract.load(models) == ModelContract.load()


def test_a_plan_for_this_gpu_switches_the_gpu_config_to_tensorrt(store, tmp_path):
    models = tmp_path / "models"
    assert sync_from_volume(store, models, 1).returncode == 0
    for plan in ("model.sm86.plan", "model.sm90.plan"):
        (models / MODEL / "1" / plan).write_bytes(b"plan")
    original = read_model_config(models / MODEL / "configs" / "gpu.pbtxt")
    result = prepare(
        "pin", f"--model-dir={models / MODEL}", "--version=1", "--config=gpu", "--compute-capability=8.6"
    )
    assert "TensorRT plan model.sm86.plan" in result.stdout
    config = read_model_config(models / MODEL / "configs" / "gpu.pbtxt")
    assert config.backend == "tensorrt"
    assert config.default_model_filename == "model.sm86.plan"
    assert dict(config.cc_model_filenames) == {"8.6": "model.sm86.plan", "9.0": "model.sm90.plan"}
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator  # ONNX Runtime's EP
    # Everything clients and the batcher depend on stays as published.
    assert config.input == original.input and config.output == original.output
    assert config.max_batch_size == original.max_batch_size
    assert config.dynamic_batching == original.dynamic_batching
    assert config.instance_group == original.instance_group
    assert list(config.version_policy.specific.versions) == [1]
    # Running again (an init container restart) gives the same config.
    before = (models / MODEL / "configs" / "gpu.pbtxt").read_text()
    prepare("pin", f"--model-dir={models / MODEL}", "--version=1", "--config=gpu", "--compute-capability=8.6")
    assert (models / MODEL / "configs" / "gpu.pbtxt").read_text() == before


@pytest.mark.parametrize("capability", ["7.5", ""], ids=["other-gpu", "no-nvidia-smi"])
def test_without_a_matching_plan_the_onnx_runtime_config_serves(store, tmp_path, capability):
    models = tmp_path / "models"
    assert sync_from_volume(store, models, 1).returncode == 0
    (models / MODEL / "1" / "model.sm86.plan").write_bytes(b"plan")
    args = ["pin", f"--model-dir={models / MODEL}", "--version=1", "--config=gpu"]
    result = prepare(*args, *([f"--compute-capability={capability}"] if capability else []))
    assert "no TensorRT plan" in result.stdout
    config = read_model_config(models / MODEL / "configs" / "gpu.pbtxt")
    assert config.backend == "onnxruntime"
    assert config.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    assert not config.cc_model_filenames


def test_trtexec_flags_follow_the_gpu_config():
    gpu_config_path = default_repository() / MODEL / "configs" / "gpu.pbtxt"
    config = read_model_config(gpu_config_path)
    flags = prepare("trtexec-flags", f"--config={gpu_config_path}").stdout.split()
    (image,) = config.input
    shape = "x".join(str(d) for d in image.dims)
    opt = max(config.dynamic_batching.preferred_batch_size)
    assert flags[:3] == [
        f"--minShapes={image.name}:1x{shape}",
        f"--optShapes={image.name}:{opt}x{shape}",
        f"--maxShapes={image.name}:{config.max_batch_size}x{shape}",
    ]
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert ("--fp16" in flags) == (accelerator.parameters.get("precision_mode") == "FP16")
    assert config.input[0].data_type == model_config_pb2.TYPE_UINT8
