"""Temporal reuse in the gateway: the video-job option (kept across restarts) and the live socket's."""

from __future__ import annotations

import json

import cv2
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from clients.masks import read_mask_archive
from clients.temporal import ReuseSettings
from clients.video import frames
from gateway.app import create_app
from gateway.jobs import Job, JobStatus
from gateway.settings import GatewaySettings
from gateway.store import GatewayStore
from tests.conftest import wait_for_job

MODEL = "shelf_segmenter"


def make_client(tmp_path, triton_url: str = "127.0.0.1:9") -> TestClient:
    """The app in-process; the default address has no Triton (enough for refusals)."""
    return TestClient(create_app(GatewaySettings(triton_grpc_url=triton_url, data_dir=tmp_path / "data")))


def upload(client: TestClient, path, route: str = "/v1/videos", **options):
    with open(path, "rb") as file:
        return client.post(route, params=options, files={"file": ("shelf.mp4", file, "video/mp4")})


@pytest.mark.parametrize(
    ("options", "status_code", "code", "field"),
    [
        ({"reuse": "sometimes"}, 422, "invalid_request", "reuse"),
        ({"reuse": "auto", "max_interval": 0}, 422, "invalid_request", "max_interval"),
        ({"reuse": "auto", "max_interval": "many"}, 422, "invalid_request", "max_interval"),
        ({"reuse": "auto", "tolerance": 0}, 422, "invalid_request", "tolerance"),
        ({"max_interval": 99}, 422, "invalid_request", "max_interval"),  # checked with reuse off too
    ],
)
@pytest.mark.parametrize("route", ["/v1/videos", f"/v1/models/{MODEL}/videos"])
def test_bad_reuse_options_are_refused_naming_the_field(
    tmp_path, shelf_video, route, options, status_code, code, field
):
    with make_client(tmp_path) as client:
        response = upload(client, shelf_video.video, route, **options)
        assert response.status_code == status_code, response.text
        error = response.json()["error"]
        assert error["code"] == code and field in error["message"]
        assert client.get("/v1/models").status_code == 200  # the gateway goes on
    assert not list((tmp_path / "data" / "jobs").iterdir())  # nothing was kept


def test_the_option_is_documented_on_the_video_routes(tmp_path):
    with make_client(tmp_path) as client:
        document = client.get("/openapi.json").json()
    for route in ("/v1/videos", f"/v1/models/{MODEL}/videos"):
        names = {p["name"] for p in document["paths"][route]["post"]["parameters"]}
        assert names == {"reuse", "max_interval", "tolerance"}


def test_a_stored_job_keeps_its_reuse_option_across_a_restart(tmp_path):
    store = GatewayStore(tmp_path / "gateway.sqlite")
    settings = ReuseSettings("auto", max_interval=5, tolerance=1.5)
    job = Job("abc", MODEL, ("overlay.mp4",), tmp_path, "shelf.mp4", 10, 48, reuse=settings)
    store.save(job)
    store.close()
    (restored,) = GatewayStore(tmp_path / "gateway.sqlite").load(Job)  # what a new process reads
    assert restored.reuse == settings and restored.status == JobStatus.QUEUED
    assert restored.to_json()["reuse"] == settings.to_dict()


@pytest.mark.triton
def test_a_video_job_with_reuse_infers_keyframes_only_and_says_so(tmp_path, triton, shelf_video):
    with make_client(tmp_path, triton.grpc_url) as client:
        response = upload(
            client, shelf_video.video, f"/v1/models/{MODEL}/videos", reuse="auto", max_interval=6
        )
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        assert job["reuse"] == ReuseSettings("auto", 6).to_dict()
        assert job["frames_done"] == shelf_video.frames
        assert 0 < job["engine_calls"] <= shelf_video.frames / 3
        assert {"motion", "propagate"} <= set(job["stage_seconds"])
        metrics = client.get("/metrics").text  # reuse's own stages are timed per model, like the others
        for stage in ("motion", "propagate"):
            series = f'prodseg_gateway_stage_seconds_count{{model="{MODEL}",stage="{stage}"}} '
            (line,) = [line for line in metrics.splitlines() if line.startswith(series)]
            assert 0 < float(line.removeprefix(series)) <= shelf_video.frames
        masks = tmp_path / "masks.zip"
        masks.write_bytes(client.get(job["artifacts"]["masks.zip"]).content)
        assert sum(1 for _ in read_mask_archive(masks)) == shelf_video.frames  # one mask per frame
        lines = client.get(job["artifacts"]["timeline.jsonl"]).text.splitlines()
        sources = [json.loads(line)["source"] for line in lines]
        assert len(sources) == shelf_video.frames and sources.count("inferred") == job["engine_calls"]

        plain = wait_for_job(client, upload(client, shelf_video.video).json()["id"])
        assert plain["reuse"]["mode"] == "off" and plain["engine_calls"] == shelf_video.frames


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("reuse=auto&max_interval=0", "max_interval"),
        # The page waits for each answer before it sends the next frame: a held answer never comes.
        ("reuse=auto&lookahead=4", "lookahead"),
    ],
)
def test_a_bad_live_option_is_refused_with_the_json_error_and_a_4422_close(tmp_path, query, named):
    with make_client(tmp_path) as client:
        with client.websocket_connect(f"/v1/models/{MODEL}/live?{query}") as socket:
            answer = socket.receive_json()
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
    assert answer["status"] == 422 and answer["error"]["code"] == "invalid_option"
    assert named in answer["error"]["message"]
    assert closed.value.code == 4422


@pytest.mark.triton
def test_the_live_socket_with_reuse_answers_every_frame_with_fewer_engine_calls(
    tmp_path, triton, shelf_video
):
    answers = []
    with make_client(tmp_path, triton.grpc_url) as client:
        with client.websocket_connect(f"/v1/models/{MODEL}/live?reuse=auto") as socket:
            for frame in frames(shelf_video.video):
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                socket.send_bytes(jpeg.tobytes())
                answers.append(socket.receive_json())  # one frame at a time, as the page sends them
    assert len(answers) == shelf_video.frames and not [a for a in answers if "error" in a]
    sources = [answer["source"] for answer in answers]
    assert sources[0] == "inferred" and "propagated" in sources
    assert answers[-1]["engine_calls"] == sources.count("inferred") < shelf_video.frames / 2
    assert all(answer["dropped"] == 0 for answer in answers)
    assert all(answer["task"] == "segmentation" and answer["mask_rle"] for answer in answers)
