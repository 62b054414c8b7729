"""The live socket over the JPEG wire, against the real embedded Triton (the gateway in this process):
a browser's JPEG at the model's size goes on to Triton as it is (on CPU to the model itself, which
decodes it), another size is resized and re-encoded, and a bad frame fails alone while the stream
goes on."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

import gateway.web
from clients.triton_client import TritonModelClient
from clients.wire import encode_jpeg
from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.triton_statistics import inference_count

pytestmark = pytest.mark.triton

MODEL = "shelf_segmenter"


@pytest.fixture
def http(triton, tmp_path):
    settings = GatewaySettings(triton_grpc_url=triton.grpc_url, data_dir=tmp_path / "data", models=(MODEL,))
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def reencoded(monkeypatch) -> list[tuple[int, int]]:
    """The sizes of the frames the gateway had to re-encode (the forwarding path encodes nothing)."""
    sizes: list[tuple[int, int]] = []

    def counting(frame: np.ndarray, *args) -> bytes:
        sizes.append(frame.shape[:2])
        return encode_jpeg(frame, *args)

    monkeypatch.setattr(gateway.web, "encode_jpeg", counting)
    return sizes


@pytest.fixture
def forwarded(monkeypatch) -> list[list[bytes]]:
    """The JPEGs of each request the gateway's SDK client sent over the wire."""
    sent: list[list[bytes]] = []
    infer_jpeg = TritonModelClient.infer_jpeg

    async def recording(self, jpegs: list[bytes], *args):
        sent.append(list(jpegs))
        return await infer_jpeg(self, jpegs, *args)

    monkeypatch.setattr(TritonModelClient, "infer_jpeg", recording)
    return sent


@pytest.fixture(scope="module")
def frame(contract) -> np.ndarray:
    from datagen.shelves import render_scene

    return render_scene(21, contract.height, contract.width).image


def test_a_frame_at_the_models_size_is_forwarded_as_it_is(
    http, triton, contract, frame, reencoded, forwarded
):
    before = inference_count(triton.grpc_url, f"{MODEL}_jpeg"), inference_count(triton.grpc_url, MODEL)
    data = encode_jpeg(frame, 80)
    with http.websocket_connect(f"/v1/models/{MODEL}/live") as socket:
        socket.send_bytes(data)
        answer = socket.receive_json()
    assert "error" not in answer, answer
    assert answer["task"] == "segmentation" and (answer["width"], answer["height"]) == (640, 384)
    assert sum(answer["mask_rle"][1::2]) == contract.height * contract.width
    assert reencoded == [] and forwarded == [[data]]  # the browser's bytes, as they came
    # One request, to the model itself: on CPU it decodes the JPEG (no hop through <model>_jpeg).
    assert inference_count(triton.grpc_url, f"{MODEL}_jpeg") == before[0]
    assert inference_count(triton.grpc_url, MODEL) == before[1] + 1


def test_a_frame_of_another_size_is_resized_and_reencoded(
    http, triton, contract, frame, reencoded, forwarded
):
    import cv2

    small = cv2.resize(frame, (320, 240))
    before = inference_count(triton.grpc_url, MODEL)
    with http.websocket_connect(f"/v1/models/{MODEL}/live") as socket:
        socket.send_bytes(encode_jpeg(small))
        answer = socket.receive_json()
    assert (answer["task"], answer["width"], answer["height"]) == ("segmentation", 320, 240)
    assert sum(answer["mask_rle"][1::2]) == 320 * 240  # in the frame's own pixels
    assert reencoded == [contract.input_size]
    assert len(forwarded) == 1 and forwarded[0][0][:2] == b"\xff\xd8"  # re-encoded, sent as JPEG
    assert inference_count(triton.grpc_url, MODEL) == before + 1


def test_a_corrupt_and_a_truncated_frame_each_fail_and_the_stream_goes_on(http, frame):
    good = encode_jpeg(frame)
    with http.websocket_connect(f"/v1/models/{MODEL}/live") as socket:
        answers = []
        for data in (b"\xff\xd8 corrupt \xff\xd9", good, good[: len(good) // 2], good):
            socket.send_bytes(data)
            answers.append(socket.receive_json())
    corrupt, first, truncated, second = answers
    # The gateway decodes every frame (drift and sampling need it): these never reach Triton.
    assert corrupt["error"]["code"] == truncated["error"]["code"] == "not_an_image"
    assert first["task"] == second["task"] == "segmentation"
    assert first["mask_rle"] == second["mask_rle"]


def test_without_the_wire_served_the_frame_goes_raw(http, triton, frame, monkeypatch):
    async def not_served(self) -> bool:
        return False

    monkeypatch.setattr(TritonModelClient, "jpeg_wire_ready", not_served)
    before = inference_count(triton.grpc_url, f"{MODEL}_jpeg"), inference_count(triton.grpc_url, MODEL)
    with http.websocket_connect(f"/v1/models/{MODEL}/live") as socket:
        socket.send_bytes(encode_jpeg(frame))
        answer = socket.receive_json()
    assert answer["task"] == "segmentation"
    assert inference_count(triton.grpc_url, f"{MODEL}_jpeg") == before[0]
    assert inference_count(triton.grpc_url, MODEL) == before[1] + 1
