"""What the chart's init containers leave behind, served by the real Triton 2.51 the way the chart
starts it: explicit model control, one --load-model per model, and no --model-config-name (each
model's chosen variant is already its config.pbtxt). Only the pinned versions serve. With the JPEG
wire, the lists the rendered chart gives the pod serve a JPEG frame's mask."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import tritonclient.http as triton_http

from clients.contract import ModelContract
from clients.triton_client import TritonModelClient
from clients.wire import Wire, wire_model_name
from prodseg.triton_server import TritonServer
from tests.charts.conftest import MODEL, SECOND
from tests.charts.test_pod_scripts import prepare_models, sync_from_volume
from tests.charts.test_rendered_objects import loaded, models_file, prepared, synced
from tests.charts.toolbox import one, render

pytestmark = pytest.mark.triton


def test_triton_serves_each_model_at_its_pinned_version_on_its_chosen_config(store, tmp_path):
    models_dir = tmp_path / "models"
    assert sync_from_volume(store, models_dir, f"{MODEL}=2 {SECOND}=1").returncode == 0
    # The store's own copies of other versions must not matter: add version 1 back to the shelf model
    # folder, as a store whose config says `latest` would serve it.
    (models_dir / MODEL / "1").mkdir()
    for item in (store / MODEL / "1").iterdir():
        (models_dir / MODEL / "1" / item.name).write_bytes(item.read_bytes())
    models = [
        {"name": MODEL, "version": 2, "configName": "cpu", "tensorrt": False},
        {"name": SECOND, "version": 1, "configName": "cpu", "tensorrt": False},
    ]
    prepare_models(models_dir, models)
    # A config name no model has: Triton falls back to config.pbtxt, i.e. what prepare-model wrote.
    server = TritonServer(
        repository=models_dir,
        models=(MODEL, SECOND),
        config_name="none-such",
        log_path=tmp_path / "triton.log",
    )
    with server:
        client = triton_http.InferenceServerClient(server.http_url)
        assert client.is_model_ready(MODEL, "2") and not client.is_model_ready(MODEL, "1")
        assert client.is_model_ready(SECOND, "1")
        config = client.get_model_config(MODEL)
        assert config["backend"] == "python"  # the CPU variant, chosen per model
        assert config["version_policy"] == {"specific": {"versions": [2]}}
        frames = np.zeros((1, 384, 640, 3), np.uint8)
        images = triton_http.InferInput("images", list(frames.shape), "UINT8")
        images.set_data_from_numpy(frames)
        masks = client.infer(SECOND, [images]).as_numpy("masks")
        assert masks.shape == (1, 384, 640) and masks.dtype == np.uint8
        index = client.get_model_repository_index()
        assert {
            (m["name"], m.get("version"), m.get("state")) for m in index if m.get("state") == "READY"
        } == {
            (MODEL, "2", "READY"),
            (SECOND, "1", "READY"),
        }, json.dumps(index)


def test_triton_serves_both_versions_of_an_ab_test_and_no_other(store, tmp_path):
    """models[].abTest {"1": .., "2": ..}: the pod syncs both version folders and pins both; the
    gateway then asks Triton for a version per request, so each must answer by number."""
    models_dir = tmp_path / "models"
    assert sync_from_volume(store, models_dir, f"{MODEL}=1,2 {SECOND}=1").returncode == 0
    # A version the release does not name, left in the folder: it must stay unloaded.
    (models_dir / MODEL / "3").mkdir()
    for item in (store / MODEL / "1").iterdir():
        (models_dir / MODEL / "3" / item.name).write_bytes(item.read_bytes())
    models = [
        {"name": MODEL, "version": 1, "versions": [1, 2], "configName": "cpu", "tensorrt": False},
        {"name": SECOND, "version": 1, "configName": "cpu", "tensorrt": False},
    ]
    prepare_models(models_dir, models)
    server = TritonServer(
        repository=models_dir,
        models=(MODEL, SECOND),
        config_name="none-such",
        log_path=tmp_path / "triton.log",
    )
    with server:
        client = triton_http.InferenceServerClient(server.http_url)
        assert client.get_model_config(MODEL)["version_policy"] == {"specific": {"versions": [1, 2]}}
        ready = {
            (m["name"], m.get("version"))
            for m in client.get_model_repository_index()
            if m.get("state") == "READY"
        }
        assert ready == {(MODEL, "1"), (MODEL, "2"), (SECOND, "1")}
        frames = np.zeros((1, 384, 640, 3), np.uint8)
        images = triton_http.InferInput("images", list(frames.shape), "UINT8")
        images.set_data_from_numpy(frames)
        for version in ("1", "2"):
            result = client.infer(MODEL, [images], model_version=version)
            assert result.get_response()["model_version"] == version
            assert result.as_numpy("masks").shape == (1, 384, 640)
        # The gateway's own client, through gRPC's DNS resolver as the chart configures it
        # (dns:///<headless Service>:8001; here a name resolving to this Triton).
        port = server.grpc_url.rsplit(":", 1)[1]
        asyncio.run(ask_each_version(f"dns:///localhost:{port}", frames))


async def ask_each_version(url: str, frames: np.ndarray) -> None:
    async with TritonModelClient(url, ModelContract.load(MODEL)) as client:
        assert await client.served_versions() == ["1", "2"]
        for version in ("1", "2"):
            outputs, ran = await client.infer_versioned(frames, version)
            assert ran == version and outputs["masks"].shape == (1, 384, 640)


@pytest.mark.k8s
def test_the_cpu_pool_with_opencv_serves_a_jpeg_frames_mask_as_the_chart_deploys_it(
    store_with_jpeg_wire, tmp_path, tools
):
    """The chart on the CPU pool with jpegWire.cpuImageHasOpenCV (OpenCV is in the stub's environment
    here): its sync list, prepare list and --load-model list, run as the pod runs them. The wire's
    one-step CPU variant (decode, the model through BLS, PNG; the codecs' code from the synced
    folders) then answers a JPEG frame through shelf_segmenter_jpeg."""
    models = [{"name": MODEL, "version": 2}, {"name": SECOND, "version": 1, "jpegWire": False}]
    sets = {
        "triton.gpu.enabled": "false",
        "triton.cpu.modelConfigName": "cpu",  # the models' python-backend variant (no ORT backend here)
        "jpegWire.cpuImageHasOpenCV": "true",
    }
    objects = render([models_file(tmp_path, models)], sets=sets)
    triton = one(objects, "Deployment", "-triton")
    wire = wire_model_name(MODEL)
    assert loaded(objects) == [MODEL, SECOND, "jpeg_decoder", "mask_encoder", wire]
    models_dir = tmp_path / "models"
    result = sync_from_volume(store_with_jpeg_wire, models_dir, synced(triton))
    assert result.returncode == 0, result.stderr
    prepare_models(models_dir, prepared(triton))
    server = TritonServer(
        repository=models_dir,
        models=tuple(loaded(objects)),  # exactly the chart's --load-model list, nothing discovered
        jpeg_wire=False,
        config_name="none-such",
        log_path=tmp_path / "triton.log",
    )
    with server:
        client = triton_http.InferenceServerClient(server.http_url)
        assert client.get_model_config("jpeg_decoder")["backend"] == "python"  # OpenCV, not DALI
        assert client.get_model_config(wire)["backend"] == "python"  # one step, as the pool is on cpu
        ready = {
            (m["name"], m.get("version"))
            for m in client.get_model_repository_index()
            if m.get("state") == "READY"
        }
        assert ready == {(name, "2" if name == MODEL else "1") for name in loaded(objects)}
        asyncio.run(mask_over_the_jpeg_wire(server.grpc_url))


async def mask_over_the_jpeg_wire(url: str) -> None:
    from datagen.shelves import render_scene

    contract = ModelContract.load(MODEL)
    frame = render_scene(3, contract.height, contract.width).image
    async with (
        TritonModelClient(url, contract, wire=Wire.JPEG) as jpeg,
        TritonModelClient(url, contract) as raw,
    ):
        assert await jpeg.is_ready()  # the model and its <model>_jpeg ensemble
        (by_jpeg,) = await jpeg.predict_images([frame])
        (by_raw,) = await raw.predict_images([frame])
    assert jpeg.traffic.bytes_sent < frame.nbytes / 5  # a JPEG went, not the pixels
    assert by_jpeg.model_version == "2"  # what the ensemble's -1 ran: the pinned version
    assert by_jpeg.prediction.mask.shape == (contract.height, contract.width)
    # JPEG (quality 80) costs a few edge pixels, as tests/triton/test_jpeg_wire.py measures.
    assert (by_jpeg.prediction.mask == by_raw.prediction.mask).mean() >= 0.95
