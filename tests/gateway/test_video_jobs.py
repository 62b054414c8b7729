"""The gateway over the real embedded Triton: a video job end to end, and every kind of bad input."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from clients.evaluation import ConfusionMatrix
from clients.masks import read_mask_archive
from clients.video import frames, probe
from tests.conftest import MIOU_FLOOR, wait_for_job

pytestmark = pytest.mark.triton


@pytest.fixture
def http(gateway) -> httpx.Client:
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


def upload(http: httpx.Client, path: Path, name: str = "shelf.mp4") -> httpx.Response:
    with open(path, "rb") as file:
        return http.post("/v1/videos", files={"file": (name, file, "video/mp4")})


def assert_error(response: httpx.Response, status: int, code: str, message_part: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert message_part in error["message"]


def test_video_job_returns_overlay_and_masks_that_match_ground_truth(http, shelf_video, contract, tmp_path):
    response = upload(http, shelf_video.video)
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/v1/videos/{job_id}"

    job = wait_for_job(http, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["frames_done"] == shelf_video.frames and job["progress"] == 1.0
    assert set(job["stage_seconds"]) == {"decode", "infer", "overlay", "encode"}

    assert set(job["artifacts"]) == {"overlay.mp4", "masks.zip", "timeline.jsonl"}
    overlay = tmp_path / "overlay.mp4"
    overlay.write_bytes(http.get(job["artifacts"]["overlay.mp4"]).content)
    info = probe(overlay)
    assert (info.width, info.height, info.frames) == (contract.width, contract.height, shelf_video.frames)
    assert sum(1 for _ in frames(overlay)) == shelf_video.frames

    masks = tmp_path / "masks.zip"
    masks.write_bytes(http.get(f"/v1/videos/{job_id}/masks.zip").content)  # the alias serves it too
    matrix = ConfusionMatrix(contract.num_classes)
    predicted = list(read_mask_archive(masks))
    assert len(predicted) == shelf_video.frames
    for mask, truth in zip(predicted, read_mask_archive(shelf_video.masks), strict=True):
        matrix.update(mask, truth)
    assert matrix.miou() > MIOU_FLOOR

    metrics = http.get("/metrics").text
    model = contract.model_name
    assert f'prodseg_gateway_jobs_total{{model="{model}",status="succeeded"}}' in metrics
    infer = f'prodseg_gateway_stage_seconds_count{{model="{model}",stage="infer"}}'
    assert metric_value(metrics, infer) >= shelf_video.frames

    assert http.delete(f"/v1/videos/{job_id}").status_code == 204
    assert_error(http.get(f"/v1/videos/{job_id}"), 404, "job_not_found", job_id)


def test_frame_endpoint_returns_a_mask_png_of_the_image_size(http, contract):
    import cv2

    from clients.masks import decode_mask_png
    from datagen.shelves import render_scene

    scene = render_scene(5, contract.height, contract.width)
    big = cv2.resize(scene.image, (960, 576))  # any size: the gateway resizes both ways
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    response = http.post("/v1/frames", files={"file": ("shelf.jpg", jpeg.tobytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-labels"] == ",".join(contract.labels.names)
    mask = decode_mask_png(response.content)
    assert mask.shape == (576, 960)
    truth = cv2.resize(scene.mask, (960, 576), interpolation=cv2.INTER_NEAREST)
    matrix = ConfusionMatrix(contract.num_classes)
    matrix.update(mask, truth)
    assert matrix.miou() > MIOU_FLOOR


def test_health_readiness_and_metrics(http, triton):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert ready["status"] == "ready" and set(ready["models"]) == set(triton.models)
    metrics = http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "prodseg_gateway_stage_seconds_bucket" in metrics.text


# --- bad input: a 4xx with a JSON body naming the problem; the gateway stays up; nothing left behind


def test_text_file_is_not_a_video(http, tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("shelf inventory notes, definitely not H.264")
    assert_error(upload(http, path), 415, "not_a_video", "not a video")


def test_empty_upload(http, tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    assert_error(upload(http, path), 400, "empty_upload", "empty")


def test_corrupt_video(http, tmp_path):
    from tests.clients.test_video import gradient_frames, write_matroska

    path = tmp_path / "corrupt.mkv"
    write_matroska(path, gradient_frames(10))
    data = bytearray(path.read_bytes())
    data[600:] = np.random.default_rng(0).integers(0, 255, len(data) - 600, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    assert_error(upload(http, path, "corrupt.mkv"), 422, "corrupt_video", "corrupt video")


def test_unknown_job_id(http):
    assert_error(http.get("/v1/videos/0123abcd"), 404, "job_not_found", "0123abcd")
    assert_error(http.get("/v1/videos/0123abcd/overlay.mp4"), 404, "job_not_found", "0123abcd")


def test_missing_file_part_and_non_multipart_body(http):
    assert_error(http.post("/v1/videos", files={"video": ("a.mp4", b"x")}), 400, "missing_file", "'file'")
    assert_error(http.post("/v1/videos", content=b"raw bytes"), 415, "not_multipart", "multipart/form-data")


def test_not_an_image(http):
    response = http.post("/v1/frames", files={"file": ("a.png", b"not a png at all")})
    assert_error(response, 415, "not_an_image", "not a decodable image")


def test_a_still_image_named_mp4_is_not_a_video(http, tmp_path):
    import cv2

    path = tmp_path / "shelf.mp4"
    path.write_bytes(cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes())
    assert_error(upload(http, path), 415, "not_a_video", "still image")


def test_a_decompression_bomb_is_refused_before_decoding(http):
    import cv2

    bomb = cv2.imencode(".png", np.zeros((12000, 12000), np.uint8))[1].tobytes()
    assert len(bomb) < 200_000  # small on the wire, 144 megapixels once decoded
    response = http.post("/v1/frames", files={"file": ("bomb.png", bomb)})
    assert_error(response, 413, "image_too_large", "exceeds the limit of")
    assert http.get("/healthz").status_code == 200


def test_bad_input_leaves_the_gateway_up_and_no_files_behind(http, gateway, tmp_path):
    jobs_dir = gateway.data_dir / "jobs"
    before = set(jobs_dir.iterdir())
    test_text_file_is_not_a_video(http, tmp_path)
    test_empty_upload(http, tmp_path)
    test_corrupt_video(http, tmp_path)
    test_missing_file_part_and_non_multipart_body(http)
    test_a_still_image_named_mp4_is_not_a_video(http, tmp_path)
    assert set(jobs_dir.iterdir()) == before
    assert not list(gateway.data_dir.rglob("*.partial"))
    assert http.get("/healthz").status_code == 200


def metric_value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in metrics")


def test_the_embedded_gateway_starts_with_two_malloc_arenas(gateway):
    """glibc reads MALLOC_ARENA_MAX only when a process starts, so the setting the soak measured (the
    gateway's RSS flat under video jobs with it, +13% without) must be in the process's environment.
    A value the caller's environment sets wins."""
    environment = psutil.Process(gateway.process.pid).environ()  # as the soak reads it
    assert environment.get("MALLOC_ARENA_MAX") == os.environ.get("MALLOC_ARENA_MAX", "2")
