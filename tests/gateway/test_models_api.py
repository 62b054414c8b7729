"""The per-model API over the real embedded Triton: every model of the repository, every task."""

from __future__ import annotations

import json

import cv2
import httpx
import pytest

from clients.contract import Task, default_repository
from clients.masks import decode_mask_png
from clients.pipeline import ARTIFACTS
from clients.repository import discover, versions
from tests.conftest import wait_for_job
from tests.gateway.test_video_jobs import assert_error

pytestmark = pytest.mark.triton

# The models the embedded Triton serves: every valid one with a published version.
CONTRACTS = {
    name: contract for name, contract in discover().contracts.items() if versions(default_repository() / name)
}


@pytest.fixture
def http(gateway) -> httpx.Client:
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


def png(seed: int, size: tuple[int, int] = (300, 420)) -> bytes:
    from datagen.shelves import render_scene

    image = cv2.resize(render_scene(seed, 384, 640).image, (size[1], size[0]))
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def test_models_lists_every_model_with_task_labels_size_versions_and_readiness(http):
    body = http.get("/v1/models").json()
    assert body["default_model"] == "shelf_segmenter" and body["unavailable"] == {}
    listed = {model["name"]: model for model in body["models"]}
    assert set(listed) == set(CONTRACTS)
    for name, contract in CONTRACTS.items():
        model = listed[name]
        assert model["task"] == contract.task.value
        assert [label["name"] for label in model["labels"]] == contract.labels.names
        assert model["input_size"] == {"height": contract.height, "width": contract.width}
        assert model["ready"] is True and model["versions"]["ready"] == model["versions"]["served"]
        assert http.get(f"/v1/models/{name}").json() == model


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_several_images_in_one_request_answer_json_in_image_pixels(http, name):
    contract = CONTRACTS[name]
    files = [("file", ("a.png", png(1))), ("file", ("b.png", png(2, (200, 200))))]
    params = {"format": "json"} if contract.task == Task.SEGMENTATION else {}
    response = http.post(f"/v1/models/{name}/images", files=files, params=params)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["filename"], r["height"], r["width"]) for r in results] == [
        ("a.png", 300, 420),
        ("b.png", 200, 200),
    ]
    for result in results:
        assert result["task"] == contract.task.value
        if contract.task == Task.SEGMENTATION:
            assert sum(m["pixels"] for m in result["masks"]) == result["height"] * result["width"]
        elif contract.task == Task.DETECTION:
            for detection in result["detections"]:
                x1, y1, x2, y2 = detection["box"]
                assert 0 <= x1 <= x2 <= result["width"] and 0 <= y1 <= y2 <= result["height"]
                assert detection["label"] == contract.labels.names[detection["class_id"]]
        else:
            assert abs(sum(result["probabilities"].values()) - 1) < 1e-3
            assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)


@pytest.mark.parametrize("name", sorted(n for n, c in CONTRACTS.items() if c.task == Task.SEGMENTATION))
def test_segmentation_answers_a_png_of_class_ids_at_the_image_size(http, name):
    response = http.post(f"/v1/models/{name}/images", files={"file": ("a.png", png(3))})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    mask = decode_mask_png(response.content)
    assert mask.shape == (300, 420) and mask.max() < CONTRACTS[name].num_classes


@pytest.mark.parametrize("name", sorted(n for n, c in CONTRACTS.items() if c.task == Task.DETECTION))
def test_detection_confidence_filters_the_boxes(http, name):
    def count(confidence: float) -> int:
        response = http.post(
            f"/v1/models/{name}/images", files={"file": ("a.png", png(4))}, params={"confidence": confidence}
        )
        return len(response.json()["results"][0]["detections"])

    assert count(0.0) >= count(0.5) >= count(1.0)
    assert_error(
        http.post(f"/v1/models/{name}/images", files={"file": ("a.png", png(4))}, params={"confidence": 1.5}),
        422,
        "invalid_request",
        "confidence",
    )


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_a_video_job_writes_the_tasks_artefacts(http, name, shelf_video, tmp_path):
    with open(shelf_video.video, "rb") as file:
        response = http.post(f"/v1/models/{name}/videos", files={"file": ("shelf.mp4", file)})
    assert response.status_code == 202, response.text
    job = wait_for_job(http, response.json()["id"], timeout_s=180)
    job = http.get(response.json()["status_url"]).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["model"] == name
    for artifact, url in job["artifacts"].items():
        download = http.get(url)
        assert download.status_code == 200, artifact
        if artifact.endswith(".jsonl"):
            rows = [json.loads(line) for line in download.text.splitlines()]
            assert [row["frame"] for row in rows] == list(range(shelf_video.frames))
    assert http.delete(response.json()["status_url"]).status_code == 204


def test_bad_requests_name_the_problem(http):
    shelf = "shelf_segmenter"
    assert_error(
        http.post("/v1/models/nope/images", files={"file": ("a.png", png(1))}), 404, "model_not_found", shelf
    )
    response = http.post(
        f"/v1/models/{shelf}/images", files={"file": ("a.png", png(1))}, params={"confidence": 0.5}
    )
    assert_error(response, 422, "invalid_option", "'confidence' does not apply")
    two = [("file", ("a.png", png(1))), ("file", ("b.png", png(2)))]
    response = http.post(f"/v1/models/{shelf}/images", files=two, params={"format": "png"})
    assert_error(response, 422, "invalid_option", "format=png takes one image")
    many = [("file", (f"{i}.png", png(1, (32, 32)))) for i in range(17)]
    assert_error(http.post(f"/v1/models/{shelf}/images", files=many), 413, "too_many_files", "at most 16")
    assert_error(http.post("/v1/frames", files=two), 413, "too_many_files", "at most 1")
    empty = [("file", ("a.png", png(1))), ("file", ("b.png", b""))]
    assert_error(http.post(f"/v1/models/{shelf}/images", files=empty), 400, "empty_upload", "b.png")
    bad = [("file", ("a.png", png(1))), ("file", ("notes.png", b"hello"))]
    assert_error(http.post(f"/v1/models/{shelf}/images", files=bad), 415, "not_an_image", "notes.png")
    assert http.get("/healthz").status_code == 200


def test_unknown_job_and_artifact(http, shelf_video):
    assert_error(http.get("/v1/models/shelf_segmenter/videos/abc"), 404, "job_not_found", "abc")
    response = http.get("/v1/models/shelf_segmenter/videos/abc/overlay.mp4")
    assert_error(response, 404, "job_not_found", "abc")
    response = http.get(
        "/v1/models/shelf_segmenter/videos/abc/detections.jsonl"
    )  # not a segmentation artefact
    assert_error(response, 422, "invalid_request", "timeline.jsonl")
    response = http.get("/v1/models/shelf_segmenter/videos/abc/secrets.txt")
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_each_model_is_documented_with_exactly_its_tasks_options(http):
    spec = http.get("/openapi.json").json()
    for name, contract in CONTRACTS.items():
        images = spec["paths"][f"/v1/models/{name}/images"]["post"]
        assert "multipart/form-data" in images["requestBody"]["content"]
        assert {"200", "413", "415", "422", "502"} <= set(images["responses"])
        options = {p["name"] for p in images.get("parameters", [])}
        expected = {Task.SEGMENTATION: {"format"}, Task.DETECTION: {"confidence"}}.get(contract.task, set())
        assert options == expected
        artifact = spec["paths"][f"/v1/models/{name}/videos/{{job_id}}/{{artifact}}"]["get"]
        names = next(p for p in artifact["parameters"] if p["name"] == "artifact")["schema"]["enum"]
        assert tuple(names) == ARTIFACTS[contract.task]
    assert not any("{model}" in path for path in spec["paths"])  # unknown models: 404, undocumented
