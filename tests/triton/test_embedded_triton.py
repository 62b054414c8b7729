"""The real embedded Triton serving the real model repository, through tritonclient HTTP and gRPC."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from prodseg.processes import http_ok
from prodseg.triton_server import TritonServer

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def frames(contract) -> np.ndarray:
    from datagen.shelves import render_scene

    return np.stack([render_scene(seed, contract.height, contract.width).image for seed in (1, 2, 3)])


@pytest.fixture(params=["http", "grpc"])
def client(request, triton: TritonServer):
    if request.param == "http":
        client = httpclient.InferenceServerClient(triton.http_url)
    else:
        client = grpcclient.InferenceServerClient(triton.grpc_url)
    yield request.param, client
    client.close()


def infer(protocol: str, client, contract, images: np.ndarray, dtype: str = "UINT8"):
    module = httpclient if protocol == "http" else grpcclient
    tensor = module.InferInput(contract.input_name, list(images.shape), dtype)
    tensor.set_data_from_numpy(images, **({"binary_data": True} if protocol == "http" else {}))
    return client.infer(contract.model_name, [tensor]).as_numpy(contract.output_names[0])


def test_server_metadata_and_model_config(client, contract):
    protocol, client = client
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(contract.model_name)
    metadata = client.get_server_metadata()
    version = metadata["version"] if protocol == "http" else metadata.version
    assert version == "2.51.0"
    config = client.get_model_config(contract.model_name)
    config = (
        config
        if protocol == "http"
        else {"backend": config.config.backend, "max_batch_size": config.config.max_batch_size}
    )
    assert config["backend"] == "python"  # configs/cpu.pbtxt, chosen with --model-config-name=cpu
    assert config["max_batch_size"] == contract.max_batch_size


def test_infer_returns_one_class_id_per_pixel(client, contract, frames):
    protocol, client = client
    masks = infer(protocol, client, contract, frames)
    assert masks.shape == (3, contract.height, contract.width)
    assert masks.dtype == np.uint8
    assert masks.max() < contract.num_classes
    # every class of a shelf scene shows up: the model is not predicting a constant
    assert len(np.unique(masks)) == contract.num_classes


def test_served_masks_equal_the_bare_engine(client, contract, frames):
    from prodseg.engine import load_engine

    protocol, client = client
    engine = load_engine(contract.model_name, engine="openvino")
    served = infer(protocol, client, contract, frames[:1])
    assert (served == engine(frames[:1])["masks"]).mean() > 0.999


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((1, 384, 640, 3), "FP32", "data-type is 'FP32', but model 'shelf_segmenter' expects 'UINT8'"),
        ((1, 320, 640, 3), "UINT8", "unexpected shape for input 'images'"),
        ((1, 384, 640), "UINT8", "unexpected shape for input 'images'"),
        ((17, 384, 640, 3), "UINT8", "batch-size must be <= 16"),
    ],
    ids=["float32", "wrong-height", "no-channels", "batch-over-max"],
)
def test_contract_violations_are_rejected_before_the_model_runs(client, contract, shape, dtype, message):
    protocol, client = client
    numpy_dtype = np.float32 if dtype == "FP32" else np.uint8
    with pytest.raises(InferenceServerException) as error:
        infer(protocol, client, contract, np.zeros(shape, numpy_dtype), dtype)
    assert message.lower() in str(error.value).lower()
    assert client.is_model_ready(contract.model_name)  # the server stays up


def test_server_is_bound_to_loopback_and_stops_by_pid(tmp_path):
    server = TritonServer(log_path=tmp_path / "triton.log").start()
    pid = server.process.pid
    try:
        log = (tmp_path / "triton.log").read_text()
        assert f"127.0.0.1:{server.grpc_port}" in log and f"127.0.0.1:{server.http_port}" in log
    finally:
        server.stop()
    assert server.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the python stubs in its process group are gone too


def test_a_killed_server_leaves_no_shared_memory_behind(tmp_path):
    from prodseg.triton_server import SHM_DIRECTORY

    server = TritonServer(models=("returns_classifier",), jpeg_wire=False, log_path=tmp_path / "triton.log")
    server.start()
    try:
        regions = [SHM_DIRECTORY / name for name in server.shm_regions]
        assert len(regions) == 2 and all(region.exists() for region in regions)  # one per instance
        server.process.send_signal(signal.SIGKILL)  # no chance for Triton to unlink them
        server.process.wait()
    finally:
        server.stop()
    assert not [region for region in regions if region.exists()]


def test_a_broken_model_is_refused_by_name_and_field_and_the_others_load(tmp_path):
    import shutil

    from clients.contract import default_repository

    source = default_repository()
    shutil.copy2(source / "onnx_runner.py", tmp_path / "onnx_runner.py")
    shutil.copytree(source / "shelf_segmenter", tmp_path / "shelf_segmenter", symlinks=True)
    broken = tmp_path / "broken_segmenter"
    shutil.copytree(source / "shelf_segmenter", broken, symlinks=True)
    for config in [broken / "config.pbtxt", *(broken / "configs").glob("*.pbtxt")]:
        text = config.read_text().replace("shelf_segmenter", "broken_segmenter")
        config.write_text(text.replace('string_value: "segmentation"', 'string_value: "tracking"'))
    with TritonServer(repository=tmp_path, log_path=tmp_path / "triton.log") as server:
        assert server.models == ("shelf_segmenter",)
        assert "broken_segmenter: parameters.task" in server.refused["broken_segmenter"]
        assert http_ok(f"http://{server.http_url}/v2/models/shelf_segmenter/ready")
