"""Active learning: which production inputs the gateway queues "to label", its caps, and the queue's API.

The sampler tests run on the published models' contracts and the shelf model's held-out output
reference; the API tests run a gateway of their own over the real embedded Triton (its caps set by
environment variables, as a deployment would), and restart it on the same data to show the queue
is durable.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from clients.contract import ModelContract, default_repository
from clients.results import Classification, Detections, FrameResult, Segmentation
from gateway.active_learning import (
    ActiveLearner,
    ActiveLearningSettings,
    OutputReference,
    TokenBucket,
    ToLabelQueue,
    class_based,
    frame_agreement,
    low_confidence,
)
from gateway.errors import ApiError
from gateway.store import GatewayStore

SHELF, DETECTOR, CLASSIFIER = "shelf_segmenter", "mask_detector", "returns_classifier"


def settings(**overrides) -> ActiveLearningSettings:
    return ActiveLearningSettings(**overrides)


@pytest.fixture(scope="module")
def contracts() -> dict[str, ModelContract]:
    return {name: ModelContract.load(name) for name in (SHELF, DETECTOR, CLASSIFIER)}


@pytest.fixture(scope="module")
def shelf_reference(contracts) -> OutputReference:
    path = default_repository() / SHELF / "1" / "drift_reference.json"
    reference = OutputReference.load(path, contracts[SHELF].labels.names)
    assert reference is not None
    return reference


def probabilities(*values: float) -> Classification:
    return Classification(np.array(values, np.float32))


def detections(scores: list[float], classes: list[int] | None = None, shift: float = 0.0) -> Detections:
    boxes = np.array(
        [[10 + 40 * i + shift, 10, 40 + 40 * i + shift, 50] for i in range(len(scores))], np.float32
    )
    return Detections(
        boxes.reshape(-1, 4), np.array(scores, np.float32), np.array(classes or [0] * len(scores), np.int32)
    )


def typical_shelf_mask(reference: OutputReference) -> np.ndarray:
    """A 384x640 mask whose class shares are the held-out medians (rows painted top to bottom)."""
    mask = np.zeros((384, 640), np.uint8)
    row = 0
    for class_id, values in enumerate(reference.shares.values()):
        if class_id == 0:
            continue
        rows = round(float(np.median(values)) * 384)
        mask[row : row + rows] = class_id
        row += rows
    return mask


# ---- the reasons ----------------------------------------------------------------------------------


def test_a_classification_is_low_confidence_under_the_top_probability_or_the_margin(contracts):
    names = contracts[CLASSIFIER].labels.names
    s = settings(min_confidence=0.5, min_margin=0.1)
    unsure = low_confidence(probabilities(0.4, 0.3, 0.1, 0.1, 0.1), names, s, None)
    assert unsure is not None and unsure.reason == "low_confidence" and unsure.score == pytest.approx(0.9)
    torn = low_confidence(probabilities(0.52, 0.46, 0.01, 0.005, 0.005), names, s, None)
    assert torn is not None and "margin to the next 0.06" in torn.detail
    assert low_confidence(probabilities(0.9, 0.05, 0.03, 0.01, 0.01), names, s, None) is None


def test_a_detection_is_low_confidence_when_most_boxes_it_saw_score_in_the_uncertain_band(contracts):
    names = contracts[DETECTOR].labels.names
    s = settings(detection_band=(0.3, 0.5), uncertain_share=0.75)
    unsure = low_confidence(detections([0.35, 0.45, 0.1, 0.05]), names, s, None)  # 2 of 2 seen in band
    assert unsure is not None and unsure.score == 1.0 and "2 of 2 boxes" in unsure.detail
    assert low_confidence(detections([0.35, 0.45, 0.9]), names, s, None) is None  # a confident find too
    assert low_confidence(detections([0.4]), names, s, None) is None  # one middling box is common
    assert low_confidence(detections([]), names, s, None) is None


def test_a_segmentation_is_low_confidence_when_its_class_shares_are_atypical(contracts, shelf_reference):
    names = contracts[SHELF].labels.names
    s = settings(rare_output_tail=0.005)
    typical = Segmentation(typical_shelf_mask(shelf_reference))
    assert low_confidence(typical, names, s, shelf_reference) is None
    empty_shelf = Segmentation(np.zeros((384, 640), np.uint8))  # what the model answers on noise
    unsure = low_confidence(empty_shelf, names, s, shelf_reference)
    assert unsure is not None and unsure.reason == "low_confidence" and "atypical output" in unsure.detail
    assert low_confidence(empty_shelf, names, s, None) is None  # no reference, no proxy


def test_a_watched_class_is_sampled_for_every_task(contracts):
    s = settings(detection_band=(0.3, 0.5))
    classifier = contracts[CLASSIFIER].labels.names
    watched = class_based(probabilities(0.1, 0.1, 0.1, 0.1, 0.6), classifier, ("watches",), s)
    assert watched is not None and watched.reason == "class_based" and "watches" in watched.detail
    assert class_based(probabilities(0.6, 0.1, 0.1, 0.1, 0.1), classifier, ("watches",), s) is None
    detector = contracts[DETECTOR].labels.names
    boxes = detections([0.9, 0.35], classes=[0, 2])
    assert class_based(boxes, detector, ("mask_worn_incorrectly",), s).score == pytest.approx(0.35)
    assert class_based(detections([0.2], classes=[2]), detector, ("mask_worn_incorrectly",), s) is None
    shelf = contracts[SHELF].labels.names
    mask = np.zeros((384, 640), np.uint8)
    assert class_based(Segmentation(mask), shelf, ("price_tag",), s) is None
    mask[:8, :80] = 3  # 0.26% of the image is price tag
    assert class_based(Segmentation(mask), shelf, ("price_tag",), s).score == pytest.approx(640 / 245760, 0.1)


def test_frames_that_flicker_agree_less_than_frames_that_hold(contracts):
    mask = np.zeros((96, 160), np.uint8)
    mask[20:70, 30:120] = 1
    moved = np.roll(mask, 60, axis=1)  # the product jumped across the frame
    same, flicker = Segmentation(mask), Segmentation(moved)
    assert frame_agreement(same, Segmentation(mask.copy()), 4, 0.3) == 1.0
    assert frame_agreement(same, flicker, 4, 0.3) < 0.5
    assert frame_agreement(detections([0.9, 0.8]), detections([0.9, 0.8], shift=2), 3, 0.3) == 1.0
    assert frame_agreement(detections([0.9, 0.8]), detections([0.9, 0.8], shift=200), 3, 0.3) == 0.0
    assert frame_agreement(detections([0.9]), detections([0.9], classes=[1]), 3, 0.3) == 0.0  # class flip
    flip = frame_agreement(probabilities(0.9, 0.1), probabilities(0.1, 0.9), 2, 0.3)
    assert flip == pytest.approx(0.2)


# ---- caps and the queue ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_token_bucket_allows_n_an_hour():
    clock = Clock()
    bucket = TokenBucket(2, clock)
    assert [bucket.take(), bucket.take(), bucket.take()] == [True, True, False]
    clock.now += 1799  # half an hour less a second: not yet a whole token
    assert not bucket.take()
    clock.now += 1
    assert bucket.take() and not bucket.take()
    clock.now += 10 * 3600  # idle for hours: still at most one hour's worth at once
    assert sum(bucket.take() for _ in range(5)) == 2


def queue_learner(tmp_path: Path, clock=None, **overrides) -> tuple[ActiveLearner, GatewayStore]:
    store = GatewayStore(tmp_path / "gateway.sqlite")
    queue = ToLabelQueue(store, tmp_path / "to_label")
    return ActiveLearner(settings(**overrides), queue, default_repository(), clock=clock or Clock()), store


def offer_unsure_image(learner: ActiveLearner, contract: ModelContract):
    prediction = probabilities(0.4, 0.3, 0.1, 0.1, 0.1)
    sample = learner.assess(contract, "1", prediction)
    frame = np.full((32, 48, 3), 120, np.uint8)
    return learner.offer(contract, "1", sample, prediction, frame, None, "image", "a.jpg")


def test_rate_and_queue_caps_hold_per_model_and_the_queue_survives_reopening(tmp_path, contracts):
    clock = Clock()
    learner, store = queue_learner(tmp_path, clock, per_hour=3, queue_cap=2)
    contract = contracts[CLASSIFIER]
    first, second = offer_unsure_image(learner, contract), offer_unsure_image(learner, contract)
    assert first is not None and second is not None
    assert offer_unsure_image(learner, contract) is None  # queue full (2 open), token kept
    learner.queue.finish(learner.queue.claim(CLASSIFIER, first.id), "feedback-1")
    third = offer_unsure_image(learner, contract)
    assert third is not None  # room again: the third token
    learner.queue.finish(learner.queue.claim(CLASSIFIER, second.id), "feedback-2")
    assert offer_unsure_image(learner, contract) is None  # room, but the bucket is empty
    outcomes = {
        sample.labels["outcome"]: sample.value
        for metric in learner.samples.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
    assert outcomes == {"queued": 3.0, "queue_full": 1.0, "rate_capped": 1.0}
    store.close()

    reopened, store = queue_learner(tmp_path)  # a restarted gateway: same database, same folder
    items = reopened.queue.items(CLASSIFIER, 10)
    assert [i.id for i in items] == [third.id]  # the labelled ones are gone
    assert reopened.queue.image_path(items[0]).is_file()
    assert cv2.imread(str(reopened.queue.image_path(items[0]))).shape == (32, 48, 3)
    assert not reopened.queue.image_path(first).exists()  # its image now lives in the feedback
    with pytest.raises(ApiError) as refused:
        reopened.queue.claim(CLASSIFIER, first.id)
    assert refused.value.status_code == 409
    with pytest.raises(ApiError) as unknown:
        reopened.queue.claim(DETECTOR, third.id)  # another model's queue
    assert unknown.value.status_code == 404
    reopened.queue.release(reopened.queue.claim(CLASSIFIER, third.id))  # feedback refused: it waits again
    assert [i.id for i in reopened.queue.items(CLASSIFIER, 10)] == [third.id]
    store.close()


def test_a_video_queues_its_flickering_frame_at_most_once_per_gap(tmp_path, contracts):
    learner, store = queue_learner(tmp_path, per_hour=100, video_gap_frames=5)
    contract = contracts[DETECTOR]
    steady, jumped = detections([0.9, 0.8]), detections([0.9, 0.8], shift=200)
    frame = np.zeros((64, 64, 3), np.uint8)

    async def run_video() -> None:  # the hook runs in the job's event loop, as process_video calls it
        on_result = learner.watch_video(contract, "job-1", "clip.mp4")
        # frames 0-2 hold, 3 flickers (queued), 4 flickers back (within the gap: not queued), 5-7
        # hold, 8 flickers (5 frames after 3: queued)
        for index, prediction in enumerate([steady] * 3 + [jumped, steady] + [steady] * 3 + [jumped]):
            on_result(frame, FrameResult(index, prediction, model_version="1"))
        for _ in range(200):  # the samples are written by worker threads
            if len(learner.queue.items(DETECTOR, 10)) == 2:
                return
            await asyncio.sleep(0.05)

    asyncio.run(run_video())
    items = learner.queue.items(DETECTOR, 10)
    assert [(i.reason, i.frame_index, i.source, i.job_id) for i in items] == [
        ("temporal_instability", 8, "video", "job-1"),
        ("temporal_instability", 3, "video", "job-1"),
    ]
    store.close()


def test_settings_come_from_the_environment_and_bad_values_are_named(monkeypatch):
    monkeypatch.setenv("PRODSEG_TO_LABEL_PER_HOUR", "5")
    monkeypatch.setenv("PRODSEG_TO_LABEL_WATCH", json.dumps({SHELF: ["price_tag"]}))
    loaded = ActiveLearningSettings()
    assert loaded.per_hour == 5 and loaded.watch == {SHELF: ("price_tag",)}
    monkeypatch.setenv("PRODSEG_TO_LABEL_DETECTION_BAND", "0.6,0.2")
    with pytest.raises(ValueError, match="PRODSEG_TO_LABEL_DETECTION_BAND"):
        ActiveLearningSettings()
    monkeypatch.delenv("PRODSEG_TO_LABEL_DETECTION_BAND")
    monkeypatch.setenv("PRODSEG_TO_LABEL_WATCH", "price_tag")
    with pytest.raises(ValueError, match="PRODSEG_TO_LABEL_WATCH"):
        ActiveLearningSettings()


# ---- the API, on a gateway of its own over the real embedded Triton ------------------------------------

# The caps a deployment would set: room for every sample of these tests, a watch list for the
# classifier (every class: each image it sees is queued, whatever the untrained-on-photos model says),
# and a frame-agreement floor between a pan (~0.72) and a scene cut (~0.46).
LABELING_ENV = {
    "PRODSEG_TO_LABEL_PER_HOUR": "1000",
    "PRODSEG_TO_LABEL_WATCH": json.dumps({CLASSIFIER: ModelContract.load(CLASSIFIER).labels.names}),
    "PRODSEG_TO_LABEL_MIN_FRAME_AGREEMENT": "0.6",
    "PRODSEG_TO_LABEL_VIDEO_GAP_FRAMES": "2",
}


def start_labeling_gateway(triton, data_dir: Path):
    from prodseg.stack import GatewayProcess, serving_env

    process = GatewayProcess(triton.grpc_url, data_dir=data_dir, env=serving_env(triton) | LABELING_ENV)
    return process.start()


@pytest.fixture(scope="module")
def labeling_gateway(triton, tmp_path_factory):
    process = start_labeling_gateway(triton, tmp_path_factory.mktemp("labeling-gateway"))
    yield process
    process.stop()


def encoded(image: np.ndarray, extension: str = ".png") -> bytes:
    return cv2.imencode(extension, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def flat_image(size: tuple[int, int] = (120, 200)) -> bytes:
    """A grey card: no shelf at all, so the shelf model's class shares are atypical."""
    return encoded(np.full((*size, 3), 128, np.uint8))


def queued(http: httpx.Client, model: str) -> list[dict]:
    response = http.get(f"/v1/models/{model}/feedback", params={"state": "to_label", "limit": 500})
    assert response.status_code == 200, response.text
    return response.json()["items"]


@pytest.mark.triton
def test_predictions_feed_the_queue_and_feedback_completes_its_items(labeling_gateway):
    from tests.gateway.test_models_api import png
    from tests.gateway.test_video_jobs import assert_error

    with httpx.Client(base_url=labeling_gateway.url, timeout=60) as http:
        answer = http.post(f"/v1/models/{SHELF}/images", files={"file": ("grey.png", flat_image())})
        assert answer.status_code == 200
        shelf_items = queued(http, SHELF)
        assert [(i["reason"], i["filename"], i["source"]) for i in shelf_items] == [
            ("low_confidence", "grey.png", "image")
        ]
        item = shelf_items[0]
        assert item["version"] == answer.headers["x-model-version"] and "atypical output" in item["detail"]
        assert item["prediction"]["class_shares"]["background"] > 0.9
        image = http.get(item["image_url"])
        assert image.headers["content-type"] == "image/png"
        assert cv2.imdecode(np.frombuffer(image.content, np.uint8), cv2.IMREAD_COLOR).shape == (120, 200, 3)
        assert http.get(f"/v1/models/{SHELF}/feedback").json()["to_label"] == 1

        # a typical shelf (its shares are mid-range on the held-out set) is not worth a label here;
        # the classifier's watched classes always are
        http.post(f"/v1/models/{SHELF}/images", files={"file": ("shelf.png", png(9))})
        assert len(queued(http, SHELF)) == 1
        photo = ("item.jpg", encoded(np.full((64, 64, 3), 90, np.uint8), ".jpg"), "image/jpeg")
        classified = http.post(f"/v1/models/{CLASSIFIER}/images", files={"file": photo}).json()["results"][0]
        (watched,) = queued(http, CLASSIFIER)
        assert watched["reason"] == "class_based" and classified["label"] in watched["detail"]

        # completing: a verdict for the shelf image, a label for the classifier's
        done = http.post(f"/v1/models/{SHELF}/feedback", data={"to_label_id": item["id"], "verdict": "wrong"})
        assert done.status_code == 201, done.text
        record = done.json()
        assert record["to_label"] == {"id": item["id"], "reason": "low_confidence", "score": item["score"]}
        assert record["version"] == item["version"] and record["prediction"] == item["prediction"]
        assert queued(http, SHELF) == []
        folder = labeling_gateway.data_dir / "feedback" / SHELF
        assert cv2.imread(str(folder / "unlabelled" / f"{record['id']}.png")).shape == (120, 200, 3)
        assert_error(
            http.post(f"/v1/models/{SHELF}/feedback", data={"to_label_id": item["id"], "verdict": "wrong"}),
            409,
            "already_labelled",
            item["id"],
        )
        assert_error(http.get(item["image_url"]), 409, "already_labelled", item["id"])
        assert_error(
            http.post(f"/v1/models/{SHELF}/feedback", data={"to_label_id": "nope", "verdict": "correct"}),
            404,
            "to_label_not_found",
            "nope",
        )
        assert_error(
            http.get(f"/v1/models/{SHELF}/feedback/to_label/nope/image"), 404, "to_label_not_found", ""
        )
        assert_error(  # another model's item is not this model's
            http.post(
                f"/v1/models/{SHELF}/feedback", data={"to_label_id": watched["id"], "verdict": "wrong"}
            ),
            404,
            "to_label_not_found",
            watched["id"],
        )
        refused = http.post(
            f"/v1/models/{CLASSIFIER}/feedback", data={"to_label_id": watched["id"], "label": "socks"}
        )
        assert_error(refused, 422, "invalid_feedback", "socks")
        assert [i["id"] for i in queued(http, CLASSIFIER)] == [watched["id"]]  # still waiting
        labelled = http.post(
            f"/v1/models/{CLASSIFIER}/feedback", data={"to_label_id": watched["id"], "label": "watches"}
        )
        assert labelled.status_code == 201, labelled.text
        stored = (
            labeling_gateway.data_dir / "feedback" / CLASSIFIER / "watches" / f"{labelled.json()['id']}.png"
        )
        assert cv2.imread(str(stored)).shape == (64, 64, 3)
        assert queued(http, CLASSIFIER) == []


@pytest.mark.triton
def test_a_flickering_video_queues_its_unstable_frames(labeling_gateway, tmp_path):
    from clients.video import VideoSink
    from datagen.shelves import render_scene
    from tests.conftest import wait_for_job

    scenes = [render_scene(seed, 384, 640).image for seed in (21, 22)]
    video = tmp_path / "flicker.mp4"
    with VideoSink(video, fps=10) as sink:
        for index in range(8):  # two different shelves, alternating every frame
            sink.write(scenes[index % 2])
    with httpx.Client(base_url=labeling_gateway.url, timeout=60) as http:
        before = {i["id"] for i in queued(http, SHELF)}
        with video.open("rb") as upload:
            job = http.post(
                f"/v1/models/{SHELF}/videos", files={"file": ("flicker.mp4", upload, "video/mp4")}
            )
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        assert wait_for_job(http, job_id)["status"] == "succeeded"  # the shelf model is the default
        items = [i for i in queued(http, SHELF) if i["id"] not in before]
        unstable = [i for i in items if i["reason"] == "temporal_instability"]
        assert unstable, items
        assert all(i["source"] == "video" and i["job_id"] == job_id for i in unstable)
        frames = sorted(i["frame_index"] for i in items)
        assert all(b - a >= 2 for a, b in zip(frames, frames[1:], strict=False))  # the per-video gap
        assert frames[0] >= 1  # the first frame has no previous one to flicker against
        image = http.get(unstable[0]["image_url"])
        assert cv2.imdecode(np.frombuffer(image.content, np.uint8), cv2.IMREAD_COLOR).shape == (384, 640, 3)


@pytest.mark.triton
def test_the_queue_survives_a_gateway_restart(triton, tmp_path):
    data_dir = tmp_path / "data"
    first = start_labeling_gateway(triton, data_dir)
    try:
        with httpx.Client(base_url=first.url, timeout=60) as http:
            http.post(f"/v1/models/{SHELF}/images", files={"file": ("grey.png", flat_image((60, 90)))})
            (item,) = queued(http, SHELF)
            image = http.get(item["image_url"]).content
    finally:
        first.stop()
    second = start_labeling_gateway(triton, data_dir)
    try:
        with httpx.Client(base_url=second.url, timeout=60) as http:
            assert queued(http, SHELF) == [item]
            assert http.get(item["image_url"]).content == image
            done = http.post(
                f"/v1/models/{SHELF}/feedback", data={"to_label_id": item["id"], "verdict": "correct"}
            )
            assert done.status_code == 201, done.text
    finally:
        second.stop()


@pytest.mark.triton
def test_live_camera_frames_feed_the_queue_and_the_drift_monitor(triton, tmp_path, monkeypatch):
    """A live socket is a video: its flickering frames are queued, and every frame reaches drift."""
    from fastapi.testclient import TestClient

    from datagen.shelves import render_scene
    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    for name, value in LABELING_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PRODSEG_DRIFT_SAMPLE_EVERY", "1")
    scenes = [encoded(render_scene(seed, 384, 640).image, ".jpg") for seed in (21, 22)]
    settings = GatewaySettings(data_dir=tmp_path / "data", triton_grpc_url=triton.grpc_url)
    with TestClient(create_app(settings)) as http:
        with http.websocket_connect(f"/v1/models/{SHELF}/live") as socket:
            for index in range(8):  # two shelves alternating: every frame flickers against the last
                socket.send_bytes(scenes[index % 2])
                assert socket.receive_json()["task"] == "segmentation"
        deadline = time.monotonic() + 10  # samples are written by a worker thread
        while not (items := queued(http, SHELF)) and time.monotonic() < deadline:
            time.sleep(0.1)
        metrics = http.get("/metrics").text
    unstable = [item for item in items if item["reason"] == "temporal_instability"]
    assert unstable, items
    assert all(item["job_id"].startswith("live-") for item in unstable)
    frames = sorted(item["frame_index"] for item in unstable)
    assert frames[0] >= 1 and all(b - a >= 2 for a, b in zip(frames, frames[1:], strict=False))
    observed = f'prodseg_drift_observations_total{{model="{SHELF}",outcome="queued"}} 8.0'
    assert observed in metrics
