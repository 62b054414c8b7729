"""Batch jobs through the gateway: a zip or several images in, CSV and JSONL out, a restart resumes."""

from __future__ import annotations

import csv
import io
import signal
import zipfile

import cv2
import httpx
import numpy as np
import pytest

from prodseg.stack import GatewayProcess, serving_env

pytestmark = pytest.mark.triton
MODEL = "shelf_segmenter"


def png(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def wait(client: httpx.Client, url: str, timeout_s: float = 180) -> dict:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(url).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise TimeoutError(url)


def rows(client: httpx.Client, job: dict) -> list[dict]:
    text = client.get(job["artifacts"]["predictions.csv"]).text
    return list(csv.DictReader(io.StringIO(text)))


def test_a_zip_of_images_becomes_one_csv_row_per_image(gateway):
    entries = {f"shelf/{i:03d}.png": png(i) for i in range(20)}
    entries["shelf/broken.png"] = b"not an image"
    entries["../../etc/evil.png"] = png(99)  # a hostile name: flattened, never written outside the job
    entries["notes.txt"] = b"ignored: not an image"
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        response = client.post(f"/v1/models/{MODEL}/batches", files={"file": ("batch.zip", zipped(entries))})
        assert response.status_code == 202, response.text
        job = wait(client, response.json()["status_url"])
        assert job["status"] == "succeeded", job["error"]
        result = rows(client, job)
    assert len(result) == 22 and len({row["file"] for row in result}) == 22
    assert [row["status"] for row in result].count("failed") == 1
    assert {row["model"] for row in result} == {MODEL}
    assert not (gateway.data_dir.parent / "etc").exists()


@pytest.mark.parametrize(
    ("entries", "status", "code"),
    [
        ({"readme.txt": b"no images here"}, 422, "no_images"),
        ({"big.png": b"\0" * (8 << 20)}, 413, "upload_too_large"),  # a zip bomb: 8 MB from ~8 KB
        ({f"{i}.png": b"x" for i in range(12)}, 413, "too_many_files"),
    ],
)
def test_bad_batches_are_refused_before_anything_runs(tmp_path, entries, status, code):
    from fastapi.testclient import TestClient

    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from prodseg.processes import free_port

    settings = GatewaySettings(
        triton_grpc_url=f"127.0.0.1:{free_port()}",
        data_dir=tmp_path / "data",
        models=(MODEL,),
        max_upload_bytes=1 << 20,
        max_batch_images=10,
    )
    with TestClient(create_app(settings)) as client:
        response = client.post(f"/v1/models/{MODEL}/batches", files={"file": ("b.zip", zipped(entries))})
        assert response.status_code == status and response.json()["error"]["code"] == code
    assert list((tmp_path / "data" / "jobs").iterdir()) == []  # nothing left behind


def test_a_gateway_restart_resumes_a_batch_with_each_image_once(triton, tmp_path):
    env = serving_env(triton)
    data = tmp_path / "data"
    files = [("file", (f"{i:03d}.png", png(i))) for i in range(160)]
    first = GatewayProcess(triton.grpc_url, data_dir=data, env=env).start()
    try:
        with httpx.Client(base_url=first.url, timeout=60) as client:
            job = client.post(f"/v1/models/{MODEL}/batches", files=files).json()
            import time

            deadline = time.monotonic() + 120
            while client.get(job["status_url"]).json()["frames_done"] < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
    finally:
        first.stop()
    second = GatewayProcess(triton.grpc_url, data_dir=data, env=env).start()
    try:
        with httpx.Client(base_url=second.url, timeout=60) as client:
            finished = wait(client, job["status_url"])
            assert finished["status"] == "succeeded", finished["error"]
            assert finished["restarts"] == 1
            result = rows(client, finished)
    finally:
        second.stop()
    assert sorted(row["file"] for row in result) == [f"{i:03d}.png" for i in range(160)]
