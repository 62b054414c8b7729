"""The JPEG wire through the real embedded Triton: the model decoding JPEG itself (its cpu config),
``<model>_jpeg`` (the embedded server runs each wire's configs/cpu.pbtxt, one python step; the
portable config.pbtxt is an ensemble, served here too and compared), the SDK's ``wire="jpeg"``, bad
frames failing alone, pinned versions keeping their pin, and the helpers staying out of the model
lists."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients.config_text import replace_field
from clients.contract import ModelContract, default_repository
from clients.repository import discover, versions
from clients.results import Detections
from clients.triton_client import InferenceError, TritonModelClient
from clients.wire import JpegRoute, Wire, decode_jpeg, encode_jpeg, jpeg_rows, masks_from_pngs
from prodseg.triton_server import TritonServer
from tests.triton_statistics import ModelStatistics, inference_count, statistics

pytestmark = pytest.mark.triton

AGREEMENT = 0.98  # share of pixels a JPEG frame's mask shares with the raw frame's (quality 80)


@pytest.fixture(scope="module")
def frames(contract) -> list[np.ndarray]:
    from datagen.shelves import render_pan_frames

    return [s.image for s in render_pan_frames(5, 6, contract.height, contract.width, pixels_per_frame=40)]


def run(coroutine):
    return asyncio.run(coroutine)


def infer_once(url: str, model: str, name: str, data: np.ndarray, output: str) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput(name, list(data.shape), "UINT8")
        tensor.set_data_from_numpy(data)
        return client.infer(model, [tensor]).as_numpy(output)
    finally:
        client.close()


def copy_newest_version(model: str, repository: Path, companions: tuple[str, ...] = ()) -> Path:
    """A scratch repository holding the served repository's newest version of ``model``, the runner
    its cpu config loads, and the ``companions`` steps named."""
    source = default_repository()
    newest = versions(source / model)[-1]
    older = [str(v) for v in versions(source / model) if v != newest]
    ignore = shutil.ignore_patterns("__pycache__", *older)
    shutil.copytree(source / model, repository / model, symlinks=True, ignore=ignore)
    for step in companions:
        shutil.copytree(source / step, repository / step, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(source / "onnx_runner.py", repository / "onnx_runner.py")
    return repository


@pytest.fixture(scope="module")
def batching_triton(contract, tmp_path_factory) -> TritonServer:
    """The model served with a queue delay, so that concurrent requests share an execution: the served
    cpu config hands each instance one request at a time (batches buy nothing on a CPU), yet the runner
    must still answer requests that were batched together (other models' configs, GPU-style configs)."""
    directory = tmp_path_factory.mktemp("batching")
    repository = copy_newest_version(
        contract.model_name, directory / "repository", ("jpeg_decoder", "mask_encoder")
    )
    config = repository / contract.model_name / "configs" / "cpu.pbtxt"
    waits = "dynamic_batching { max_queue_delay_microseconds: 200000 }"
    config.write_text(replace_field(config.read_text(), "dynamic_batching", waits))
    with TritonServer(
        repository=repository, models=(contract.model_name,), log_path=directory / "t.log"
    ) as server:
        yield server


def counted_while(url: str, model: str, send: Callable[[], None]) -> ModelStatistics:
    """What Triton's statistics count for ``model`` while ``send()`` runs."""
    before = statistics(url, model)
    send()
    after = statistics(url, model)
    return ModelStatistics(after.requests - before.requests, after.executions - before.executions)


def test_the_server_loads_the_wire_beside_the_models(triton: TritonServer):
    wires = {name for name in triton.companions if name.endswith("_jpeg")}
    assert wires == {f"{model}_jpeg" for model in triton.models}
    assert {"jpeg_decoder", "mask_encoder"} <= set(triton.companions)
    assert not set(triton.companions) & set(triton.models)  # helpers, not models
    assert not [name for name in triton.refused if name in triton.companions]


def test_a_jpeg_frame_gets_the_raw_frames_mask_within_jpeg_tolerance(triton, contract, frames):
    async def both() -> tuple[list, list, TritonModelClient, TritonModelClient]:
        async with (
            TritonModelClient(triton.grpc_url, contract) as raw,
            TritonModelClient(triton.grpc_url, contract, wire=Wire.JPEG) as jpeg,
        ):
            assert await jpeg.is_ready()
            return await raw.predict_images(frames), await jpeg.predict_images(frames), raw, jpeg

    raw_results, jpeg_results, raw, jpeg = run(both())
    for by_raw, by_jpeg in zip(raw_results, jpeg_results, strict=True):
        assert by_jpeg.prediction.mask.shape == (contract.height, contract.width)
        assert (by_jpeg.prediction.mask == by_raw.prediction.mask).mean() >= AGREEMENT
        assert by_jpeg.model_version == by_raw.model_version  # what the ensemble's -1 ran
    raw_bytes = contract.height * contract.width * 3
    assert raw.traffic.bytes_sent == len(frames) * raw_bytes  # the default stays raw pixels
    assert jpeg.traffic.bytes_sent <= raw.traffic.bytes_sent / 10
    assert jpeg.traffic.bytes_received <= raw.traffic.bytes_received / 20


def test_the_wires_masks_are_the_models_masks_bit_for_bit(triton, contract, frames):
    """The server's own decoded pixels, sent raw, give exactly the masks the wire's PNGs decode to."""
    rows = jpeg_rows([encode_jpeg(frame) for frame in frames[:3]])
    decoded = infer_once(triton.grpc_url, "jpeg_decoder", "jpeg", rows, "images")
    masks = infer_once(triton.grpc_url, contract.model_name, "images", decoded, "masks")
    pngs = infer_once(triton.grpc_url, f"{contract.model_name}_jpeg", "jpeg", rows, "masks_png")
    assert pngs.shape == (3, 1) and sum(len(png) for png in pngs.ravel()) < masks.nbytes / 20
    assert np.array_equal(masks_from_pngs(pngs), masks)


def ensemble_repository(root: Path, model: str) -> Path:
    """The model (newest version), the codecs and its wire without configs/cpu.pbtxt: the ensemble."""
    source = default_repository()
    older = [str(v) for v in versions(source / model)[:-1]]
    for name in (model, "jpeg_decoder", "mask_encoder", f"{model}_jpeg"):
        ignore = shutil.ignore_patterns("__pycache__", *(older if name == model else []))
        shutil.copytree(source / name, root / name, symlinks=True, ignore=ignore)
    for shared in source.glob("*.py"):  # what the models' model.py files link to
        shutil.copy(shared, root / shared.name)
    (root / f"{model}_jpeg" / "configs" / "cpu.pbtxt").unlink()
    return root


def test_the_ensemble_and_the_one_step_wire_answer_with_the_same_bytes(triton, contract, frames, tmp_path):
    rows = jpeg_rows([encode_jpeg(frame) for frame in frames[:3]])
    wire = f"{contract.model_name}_jpeg"
    one_step = infer_once(triton.grpc_url, wire, "jpeg", rows, "masks_png")
    repository = ensemble_repository(tmp_path / "repository", contract.model_name)
    with TritonServer(
        repository=repository, models=(contract.model_name,), log_path=tmp_path / "t.log"
    ) as server:
        assert wire in server.companions and "jpeg_decoder" in server.companions
        ensemble = infer_once(server.grpc_url, wire, "jpeg", rows, "masks_png")
    assert [bytes(png) for png in ensemble.ravel()] == [bytes(png) for png in one_step.ravel()]


def test_on_cpu_the_sdk_sends_jpeg_frames_to_the_model_itself(triton, contract, frames):
    """The served cpu config takes ``jpeg`` itself: no hop through the one-step wire's stub, and the
    version reported is the one that ran."""
    wire = f"{contract.model_name}_jpeg"
    before = inference_count(triton.grpc_url, contract.model_name), inference_count(triton.grpc_url, wire)

    async def predict():
        async with TritonModelClient(triton.grpc_url, contract, wire=Wire.JPEG) as client:
            return (
                await client.predict_images(frames[:3]),
                (await client.served_versions())[-1],
                client.traffic,
            )

    results, newest, traffic = run(predict())
    after = inference_count(triton.grpc_url, contract.model_name), inference_count(triton.grpc_url, wire)
    assert after[0] - before[0] == 1 and after[1] == before[1]  # one request of three frames, to the model
    assert {result.model_version for result in results} == {newest}
    assert traffic.bytes_sent <= len(frames[:3]) * contract.height * contract.width * 3 / 10


def test_the_model_and_the_one_step_wire_answer_with_the_same_bytes(triton, contract, frames):
    rows = jpeg_rows([encode_jpeg(frame) for frame in frames[:3]])
    by_model = infer_once(triton.grpc_url, contract.model_name, "jpeg", rows, "masks_png")
    by_wire = infer_once(triton.grpc_url, f"{contract.model_name}_jpeg", "jpeg", rows, "masks_png")
    assert [bytes(png) for png in by_model.ravel()] == [bytes(png) for png in by_wire.ravel()]


def test_batched_requests_each_get_the_answer_of_their_own_wire(batching_triton, triton, contract, frames):
    """Requests that name no outputs get all of them from Triton's point of view; the model answers
    each in its own wire's form, PNGs for JPEG frames and class ids for raw ones, however many shared
    its execution. (Triton batches only requests that send the same inputs: a raw and a JPEG request
    never share one, and raw and JPEG requests in one queue break each other's batches.)"""
    rows = jpeg_rows([encode_jpeg(frames[0])])
    pixels = infer_once(triton.grpc_url, "jpeg_decoder", "jpeg", rows, "images")  # the server's decode

    def send(as_jpeg: bool) -> tuple[list[str], np.ndarray]:
        client = grpcclient.InferenceServerClient(batching_triton.grpc_url)
        try:
            name, data = ("jpeg", rows) if as_jpeg else ("images", pixels)
            tensor = grpcclient.InferInput(name, list(data.shape), "UINT8")
            tensor.set_data_from_numpy(data)
            response = client.infer(contract.model_name, [tensor])
            names = [output.name for output in response.get_response().outputs]
            mask = masks_from_pngs(response.as_numpy("masks_png")) if as_jpeg else response.as_numpy("masks")
            return names, mask
        finally:
            client.close()

    answers: list = []

    def send_all() -> None:
        with ThreadPoolExecutor(12) as pool:  # a wave of JPEG requests, then one of raw ones
            answers.extend(pool.map(send, [True] * 12))
            answers.extend(pool.map(send, [False] * 12))

    counted = counted_while(batching_triton.grpc_url, contract.model_name, send_all)
    assert counted.requests == 24 and counted.executions <= 12  # they did share executions
    assert {tuple(names) for names, _ in answers[:12]} == {("masks_png",)}
    assert {tuple(names) for names, _ in answers[12:]} == {("masks",)}
    assert all(np.array_equal(mask, answers[0][1]) for _, mask in answers)  # the same pixels, one mask


def test_a_repository_without_the_codecs_serves_raw_frames_and_refuses_jpeg_ones(contract, frames, tmp_path):
    """A copy holding only the model (a training run's fresh repository, an image without OpenCV):
    the model still loads and serves raw pixels, a JPEG sent to it anyway is refused saying why, and
    the SDK does not offer the wire (no ``<model>_jpeg``)."""
    repository = copy_newest_version(contract.model_name, tmp_path / "repository")
    with TritonServer(
        repository=repository, models=(contract.model_name,), log_path=tmp_path / "t.log"
    ) as server:
        masks = infer_once(server.grpc_url, contract.model_name, "images", frames[0][np.newaxis], "masks")
        assert masks.shape == (1, contract.height, contract.width)
        rows = jpeg_rows([encode_jpeg(frames[0])])
        with pytest.raises(InferenceServerException, match="cannot decode JPEG frames, send raw pixels"):
            infer_once(server.grpc_url, contract.model_name, "jpeg", rows, "masks_png")

        async def offered() -> bool:
            async with TritonModelClient(server.grpc_url, contract, wire=Wire.JPEG) as client:
                return await client.jpeg_wire_ready()

        assert not run(offered())
        assert "JPEG frames are refused" in server.log_tail(200)


@pytest.mark.parametrize("served", ["the model", "the one-step wire"])
def test_a_frame_of_the_wrong_size_is_refused_naming_the_shapes(triton, contract, frames, served):
    model = contract.model_name if served == "the model" else f"{contract.model_name}_jpeg"
    small = jpeg_rows([encode_jpeg(frames[0][: contract.height // 2, : contract.width // 2])])
    with pytest.raises(InferenceServerException) as refused:
        infer_once(triton.grpc_url, model, "jpeg", small, "masks_png")
    assert str(contract.height // 2) in str(refused.value) and "shape" in str(refused.value)
    good = jpeg_rows([encode_jpeg(frames[0])])
    assert infer_once(triton.grpc_url, model, "jpeg", good, "masks_png").shape == (1, 1)


@pytest.mark.parametrize(
    "spoil", [lambda jpeg: b"\xff\xd8" + b"\x00\x01" * 500 + b"\xff\xd9", lambda jpeg: jpeg[: len(jpeg) // 2]]
)
def test_a_corrupt_or_truncated_frame_fails_alone_and_the_next_one_succeeds(triton, contract, frames, spoil):
    good = encode_jpeg(frames[0])
    bad = spoil(good)
    height, width = contract.input_size

    async def send() -> tuple[str, list]:
        async with TritonModelClient(triton.grpc_url, contract, wire=Wire.JPEG) as client:
            with pytest.raises(InferenceError) as refused:
                await client.predict_jpeg(bad, height, width)
            # Bad and good frames at once: whatever the dynamic batcher groups, only the bad ones fail.
            mixed = [bad, good, good, bad, good, good]
            answers = await asyncio.gather(
                *(client.predict_jpeg(data, height, width) for data in mixed), return_exceptions=True
            )
            return str(refused.value), answers

    message, answers = run(send())
    assert "frame 0" in message and ("corrupt" in message or "truncated" in message)
    assert [isinstance(a, InferenceError) for a in answers] == [True, False, False, True, False, False]
    assert all(a.prediction.mask.shape == (height, width) for a in answers if not isinstance(a, Exception))


def test_bad_frames_batched_with_good_ones_fail_alone(batching_triton, contract, frames):
    good = encode_jpeg(frames[0])
    mixed = [good[: len(good) // 2], good, good, good[: len(good) // 3], good, good]  # two truncated

    def send(data: bytes) -> np.ndarray | InferenceServerException:
        try:
            return infer_once(
                batching_triton.grpc_url, contract.model_name, "jpeg", jpeg_rows([data]), "masks_png"
            )
        except InferenceServerException as error:
            return error

    answers: list = []

    def send_all() -> None:
        with ThreadPoolExecutor(len(mixed)) as pool:
            answers.extend(pool.map(send, mixed))

    counted = counted_while(batching_triton.grpc_url, contract.model_name, send_all)
    # (Triton's statistics count the python backend's error responses as answered requests too)
    assert counted.executions < len(mixed)  # good and bad frames shared executions
    assert [isinstance(a, InferenceServerException) for a in answers] == [
        True,
        False,
        False,
        True,
        False,
        False,
    ]
    assert all("truncated" in str(a) for a in answers if isinstance(a, InferenceServerException))
    pngs = [bytes(a.ravel()[0]) for a in answers if not isinstance(a, InferenceServerException)]
    assert len(set(pngs)) == 1  # the same frame, the same mask, whoever it was batched with


def test_a_stream_over_the_wire_is_complete_in_order(triton, contract, frames):
    async def stream() -> list:
        async with TritonModelClient(triton.grpc_url, contract, max_in_flight=3, wire="jpeg") as client:
            return [result async for result in client.stream(frames * 2)]

    results = run(stream())
    assert [r.frame_index for r in results] == list(range(2 * len(frames)))
    assert np.array_equal(results[0].prediction.mask, results[len(frames)].prediction.mask)  # same frame


def test_a_frame_of_another_size_is_resized_before_encoding(triton, contract, frames):
    import cv2

    large = cv2.resize(frames[0], (contract.width * 2, contract.height * 2))

    async def predict():
        async with TritonModelClient(triton.grpc_url, contract, wire=Wire.JPEG) as client:
            return await client.predict_image(large), client.traffic

    result, traffic = run(predict())
    assert result.prediction.mask.shape == large.shape[:2]  # back in the frame's own pixels
    assert traffic.bytes_sent < contract.height * contract.width * 3 / 10


def test_a_pinned_version_goes_as_jpeg_to_the_model_itself(triton, contract, frames):
    """On CPU the model takes JPEG, so a pinned request (A/B split, ``version=``) keeps the wire and
    its pin: the version that ran is the one asked for, and one Triton does not serve is refused."""

    async def predict():
        async with TritonModelClient(triton.grpc_url, contract, wire=Wire.JPEG) as client:
            newest = (await client.served_versions())[-1]
            pinned = await client.predict_image(frames[0], version=newest)
            with pytest.raises(InferenceError):
                await client.predict_image(frames[0], version=str(int(newest) + 1))
            return newest, pinned, client.traffic.bytes_sent

    newest, pinned, sent = run(predict())
    assert pinned.model_version == newest
    assert sent <= 2 * contract.height * contract.width * 3 / 10  # both requests went as JPEG


def test_a_pinned_version_goes_raw_where_jpeg_goes_to_the_ensemble(triton, contract, frames, monkeypatch):
    """The ensemble runs the newest version only (GPU nodes); a pinned request must not go there."""
    wire = JpegRoute(f"{contract.model_name}_jpeg", direct=False, ready=True, newest_version="")

    async def ensemble_route(self) -> JpegRoute:
        return wire._replace(newest_version=(await self.served_versions())[-1])

    monkeypatch.setattr(TritonModelClient, "_jpeg_route", ensemble_route)

    async def predict():
        async with TritonModelClient(triton.grpc_url, contract, wire=Wire.JPEG) as client:
            newest = (await client.served_versions())[-1]
            unpinned = await client.predict_image(frames[0])
            after_unpinned = client.traffic.bytes_sent
            pinned = await client.predict_image(frames[0], version=newest)
            pinned_bytes = client.traffic.bytes_sent - after_unpinned
        async with TritonModelClient(triton.grpc_url, contract, version=newest, wire=Wire.JPEG) as client:
            await client.predict_image(frames[0])
            return newest, unpinned, pinned, after_unpinned, pinned_bytes, client.traffic.bytes_sent

    newest, unpinned, pinned, unpinned_bytes, pinned_bytes, pinned_client_bytes = run(predict())
    raw_bytes = contract.height * contract.width * 3
    assert unpinned_bytes <= raw_bytes / 10  # the ensemble, as JPEG
    assert pinned_bytes == pinned_client_bytes == raw_bytes
    assert pinned.model_version == unpinned.model_version == newest


def test_detections_come_back_as_they_are(triton, frames):
    detector = ModelContract.load("mask_detector")
    if detector.model_name not in triton.models:
        pytest.skip("mask_detector has no published version here")
    jpeg = encode_jpeg(detector.to_model_input(frames[0]))
    height, width = detector.input_size

    async def both():
        async with (
            TritonModelClient(triton.grpc_url, detector) as raw,
            TritonModelClient(triton.grpc_url, detector, wire=Wire.JPEG) as wired,
        ):
            # The same pixels both ways: the raw client sends what the server's decoder makes of the JPEG.
            return (
                await raw.predict_image(decode_jpeg(jpeg)),
                await wired.predict_jpeg(jpeg, height, width),
                wired,
            )

    by_raw, by_jpeg, wired = run(both())
    assert isinstance(by_jpeg.prediction, Detections)
    assert np.allclose(by_jpeg.prediction.xyxy, by_raw.prediction.xyxy)
    assert np.array_equal(by_jpeg.prediction.class_id, by_raw.prediction.class_id)
    k = detector.max_detections
    assert wired.traffic.bytes_received == 4 * (4 * k + k + k + 1)  # boxes, scores, ids, count: as they are


def test_the_helpers_are_not_user_facing_models(triton, gateway):
    import httpx

    listed = httpx.get(f"{gateway.url}/v1/models", timeout=10).json()
    names = {model["name"] for model in listed["models"]}
    assert names == set(triton.models)
    assert not (names | set(listed["unavailable"])) & set(triton.companions)
    assert httpx.get(f"{gateway.url}/v1/models/shelf_segmenter_jpeg", timeout=10).status_code == 404
    found = discover()
    assert not set(found.contracts) & set(found.companions)
    with pytest.raises(KeyError, match="unknown model"):
        found.get("shelf_segmenter_jpeg")


def prodseg_stream(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "prodseg.cli", "stream", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_prodseg_stream_sends_jpeg_when_asked(triton, shelf_video):
    result = prodseg_stream(
        str(shelf_video.video),
        "--wire",
        "jpeg",
        "--jpeg-quality",
        "90",
        "--fps",
        "15",
        "--triton",
        triton.grpc_url,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["completed"] > 0 and stats["failed"] == 0
    assert stats["completed"] + stats["dropped"] == shelf_video.frames


def test_prodseg_stream_names_the_wire_it_cannot_reach(shelf_video):
    result = prodseg_stream(
        str(shelf_video.video), "--wire", "jpeg", "--triton", "127.0.0.1:9", "--max-frames", "2"
    )
    assert result.returncode == 2 and "not ready for shelf_segmenter_jpeg" in result.stderr
    refused = prodseg_stream(str(shelf_video.video), "--wire", "png")
    assert refused.returncode == 2 and "--wire" in refused.stderr
