"""Jobs survive a gateway restart: the real gateway process is killed mid-job and started again."""

from __future__ import annotations

import signal

import httpx
import pytest

from clients.masks import read_mask_archive
from prodseg.stack import GatewayProcess, serving_env
from tests.conftest import wait_for_job

pytestmark = pytest.mark.triton


def upload(client: httpx.Client, video) -> dict:
    with open(video, "rb") as file:
        response = client.post("/v1/videos", files={"file": ("shelf.mp4", file)})
    assert response.status_code == 202, response.text
    return response.json()


def test_a_restart_mid_job_loses_nothing(triton, shelf_video, tmp_path):
    from datagen.shelves import write_pan_video

    long_video = tmp_path / "long.mp4"
    write_pan_video(long_video, tmp_path / "long_masks.zip", seed=3, num_frames=240, height=384, width=640)
    data_dir = tmp_path / "data"
    env = serving_env(triton) | {"PRODSEG_MAX_CONCURRENT_JOBS": "1"}
    first = GatewayProcess(triton.grpc_url, data_dir=data_dir, env=env).start()
    try:
        with httpx.Client(base_url=first.url, timeout=60) as client:
            done = upload(client, shelf_video.video)
            assert wait_for_job(client, done["id"])["status"] == "succeeded"
            running = upload(client, long_video)
            queued = upload(client, shelf_video.video)  # one job at a time: this one waits
            wait_until(lambda: client.get(running["status_url"]).json()["frames_done"] > 0)
            assert client.get(queued["status_url"]).json()["status"] == "queued"
        first.process.send_signal(signal.SIGKILL)  # no chance to tidy up
        first.process.wait(timeout=10)
    finally:
        first.stop()

    second = GatewayProcess(triton.grpc_url, data_dir=data_dir, env=env).start()
    try:
        with httpx.Client(base_url=second.url, timeout=60) as client:
            finished = client.get(done["status_url"]).json()
            assert finished["status"] == "succeeded"  # reported done before: still there, downloadable
            assert client.get(finished["artifacts"]["masks.zip"]).status_code == 200
            resumed = wait_for_job(client, running["id"], timeout_s=240)
            assert resumed["status"] == "succeeded", resumed["error"]
            assert resumed["restarts"] == 1 and resumed["frames_done"] == 240
            masks = tmp_path / "masks.zip"
            masks.write_bytes(client.get(resumed["artifacts"]["masks.zip"]).content)
            assert sum(1 for _ in read_mask_archive(masks)) == 240  # every frame, none twice
            later = wait_for_job(client, queued["id"], timeout_s=120)
            assert later["status"] == "succeeded" and later["restarts"] == 0
    finally:
        second.stop()
    assert not list(data_dir.rglob("*.partial"))


def wait_until(condition, timeout_s: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not met")
