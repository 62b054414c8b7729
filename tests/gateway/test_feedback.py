"""Feedback through the API: validated against each model's contract, stored as a dataset."""

from __future__ import annotations

import json

import cv2
import httpx
import numpy as np
import pytest

from clients.contract import Task
from clients.masks import decode_mask_png, encode_mask_png
from tests.gateway.test_models_api import CONTRACTS, png
from tests.gateway.test_video_jobs import assert_error

pytestmark = pytest.mark.triton
SHELF = "shelf_segmenter"


@pytest.fixture
def http(gateway) -> httpx.Client:
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


def test_a_corrected_mask_for_a_kept_prediction_becomes_a_training_pair(http, gateway):
    answer = http.post(f"/v1/models/{SHELF}/images", files={"file": ("a.png", png(7, (96, 160)))})
    prediction_id, version = answer.headers["x-prediction-id"], answer.headers["x-model-version"]
    corrected = decode_mask_png(answer.content)
    corrected[:10] = 2  # the user paints a shelf edge the model missed
    response = http.post(
        f"/v1/models/{SHELF}/feedback",
        data={"prediction_id": prediction_id},
        files={"mask": ("mask.png", encode_mask_png(corrected), "image/png")},
    )
    assert response.status_code == 201, response.text
    record = response.json()
    assert (record["kind"], record["verdict"], record["version"]) == ("correction", "wrong", version)
    folder = gateway.data_dir / "feedback" / SHELF
    stored = decode_mask_png((folder / "masks" / f"{record['id']}.png").read_bytes())
    assert np.array_equal(stored, corrected)
    assert cv2.imread(str(folder / "images" / f"{record['id']}.png")).shape == (96, 160, 3)
    summary = http.get(f"/v1/models/{SHELF}/feedback").json()
    assert summary["corrections"] >= 1 and summary["by_version"][version]["corrections"] >= 1


def test_feedback_that_does_not_fit_the_model_is_refused_naming_the_field(http):
    image = {"file": ("a.png", png(1, (96, 160)), "image/png")}
    wrong_size = {"mask": ("m.png", encode_mask_png(np.zeros((10, 10), np.uint8)), "image/png")}
    response = http.post(f"/v1/models/{SHELF}/feedback", files=image | wrong_size)
    assert_error(response, 422, "invalid_feedback", "mask: size 10x10")
    bad_ids = {"mask": ("m.png", encode_mask_png(np.full((96, 160), 9, np.uint8)), "image/png")}
    assert_error(
        http.post(f"/v1/models/{SHELF}/feedback", files=image | bad_ids), 422, "invalid_feedback", "[9]"
    )
    response = http.post(f"/v1/models/{SHELF}/feedback", data={"prediction_id": "nope", "verdict": "correct"})
    assert_error(response, 404, "prediction_not_found", "nope")
    assert_error(http.post(f"/v1/models/{SHELF}/feedback", files=image), 422, "invalid_feedback", "verdict")


def test_a_plain_verdict_is_counted_without_a_target(http, gateway):
    before = http.get(f"/v1/models/{SHELF}/feedback").json()
    response = http.post(
        f"/v1/models/{SHELF}/feedback", files={"file": ("a.png", png(2))}, data={"verdict": "correct"}
    )
    assert response.status_code == 201 and response.json()["kind"] == "verdict"
    after = http.get(f"/v1/models/{SHELF}/feedback").json()
    assert after["correct"] == before["correct"] + 1 and after["corrections"] == before["corrections"]
    assert (gateway.data_dir / "feedback" / SHELF / "unlabelled" / f"{response.json()['id']}.png").exists()


@pytest.mark.parametrize("name", sorted(n for n, c in CONTRACTS.items() if c.task != Task.SEGMENTATION))
def test_boxes_and_labels_are_checked_against_the_model(http, gateway, name):
    contract = CONTRACTS[name]
    image = {"file": ("a.png", png(3, (100, 200)))}
    first = contract.labels.names[0]
    if contract.task == Task.DETECTION:
        good = {"boxes": json.dumps([{"box": [10, 10, 50, 60], "label": first}])}
        outside = {"boxes": json.dumps([{"box": [10, 10, 500, 60], "label": first}])}
        assert_error(
            http.post(f"/v1/models/{name}/feedback", files=image, data=outside),
            422,
            "invalid_feedback",
            "target.boxes[0].box",
        )
        unknown = {"boxes": json.dumps([{"box": [1, 1, 5, 5], "label": "cat"}])}
        assert_error(
            http.post(f"/v1/models/{name}/feedback", files=image, data=unknown),
            422,
            "invalid_feedback",
            "target.boxes[0].label",
        )
    else:
        good = {"label": first}
        assert_error(
            http.post(f"/v1/models/{name}/feedback", files=image, data={"label": "cat"}),
            422,
            "invalid_feedback",
            "target.label",
        )
    response = http.post(f"/v1/models/{name}/feedback", files=image, data=good)
    assert response.status_code == 201, response.text
    folder = gateway.data_dir / "feedback" / name
    if contract.task == Task.DETECTION:
        row = (folder / "labels" / f"{response.json()['id']}.txt").read_text().split()
        assert row[0] == "0" and [round(float(v), 3) for v in row[1:]] == [0.15, 0.35, 0.2, 0.5]
    else:
        assert (folder / first / f"{response.json()['id']}.png").exists()
