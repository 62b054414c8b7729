"""Typed results per task: they validate themselves, come from Triton's tensors, scale and serialise."""

from __future__ import annotations

import numpy as np
import pytest

from clients.labels import Label, LabelMap
from clients.results import (
    Classification,
    Detections,
    FrameResult,
    Segmentation,
    rle_counts,
    rle_decode,
)

LABELS = LabelMap((Label(0, "a", (0, 0, 0)), Label(1, "b", (255, 0, 0)), Label(2, "c", (0, 255, 0))))


def test_segmentation_scales_with_nearest_neighbour_and_reports_shares():
    mask = np.zeros((4, 6), np.uint8)
    mask[:, 3:] = 2
    big = Segmentation(mask).to_image_size(40, 60)
    assert big.mask.shape == (40, 60) and set(np.unique(big.mask)) == {0, 2}  # no invented ids
    assert Segmentation(mask).class_shares(3).tolist() == [0.5, 0.0, 0.5]


def test_segmentation_json_is_coco_rle_that_decodes_to_the_same_mask():
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 3, (17, 23), dtype=np.uint8)
    body = Segmentation(mask).to_json(LABELS)
    rebuilt = np.zeros_like(mask)
    for item in body["masks"]:
        binary = rle_decode(item["rle"]["counts"], *item["rle"]["size"])
        assert binary.sum() == item["pixels"]
        rebuilt[binary] = item["class_id"]
    assert np.array_equal(rebuilt, mask)
    assert rle_counts(np.array([True, True, False])) == [0, 2, 1]  # COCO: counts start with zeros


def test_detections_drop_padding_and_scale_to_the_image():
    outputs = {
        "boxes": np.array([[[10, 20, 30, 40], [0, 0, 64, 64], [0, 0, 0, 0]]], np.float32),
        "scores": np.array([[0.9, 0.4, 0.0]], np.float32),
        "class_ids": np.array([[1, 2, 0]], np.int32),
        "num_detections": np.array([[2]], np.int32),
    }
    (detections,) = Detections.from_outputs(outputs)
    assert len(detections) == 2
    scaled = detections.scaled((64, 64), (128, 256))
    assert scaled.xyxy[0].tolist() == [40, 40, 120, 80]
    assert scaled.xyxy[1].tolist() == [0, 0, 256, 128]
    assert len(detections.with_min_confidence(0.5)) == 1
    body = detections.to_json(LABELS)["detections"]
    assert body[0] == {"box": [10.0, 20.0, 30.0, 40.0], "label": "b", "class_id": 1, "score": 0.9}


@pytest.mark.parametrize(
    ("xyxy", "confidence", "class_id", "message"),
    [
        ([[0, 0, 1]], [0.5], [0], r"\[N, 4\]"),
        ([[5, 0, 1, 1]], [0.5], [0], "x2 >= x1"),
        ([[0, 0, 1, 1]], [1.5], [0], r"\[0, 1\]"),
        ([[0, 0, 1, 1]], [0.5], [-1], ">= 0"),
        ([[0, 0, 1, 1]], [0.5, 0.2], [0], "must be"),
    ],
)
def test_invalid_detections_are_refused(xyxy, confidence, class_id, message):
    with pytest.raises(ValueError, match=message):
        Detections(np.array(xyxy, np.float32), np.array(confidence, np.float32), np.array(class_id, np.int32))


def test_classification_picks_the_top_class():
    (result,) = Classification.from_outputs({"probabilities": np.array([[0.1, 0.7, 0.2]], np.float32)})
    assert (result.class_id, round(result.confidence, 3)) == (1, 0.7)
    assert [i for i, _ in result.top(2)] == [1, 2]
    body = result.to_json(LABELS)
    assert body["label"] == "b" and set(body["probabilities"]) == {"a", "b", "c"}
    with pytest.raises(ValueError, match="sum to 1"):
        Classification(np.array([0.5, 0.9], np.float32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frame_index": -1, "prediction": Segmentation(np.zeros((2, 2), np.uint8))}, "frame_index"),
        ({"frame_index": 0, "prediction": np.zeros((2, 2), np.uint8)}, "typed result"),
        ({"frame_index": 0, "prediction": Detections.empty(), "timings": {"infer": -1.0}}, "timings"),
    ],
)
def test_invalid_frame_results_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FrameResult(**kwargs)


def test_a_segmentation_mask_must_be_uint8_2d():
    with pytest.raises(ValueError, match="uint8"):
        Segmentation(np.zeros((2, 2), np.int64))
    with pytest.raises(AttributeError, match="no mask"):
        _ = FrameResult(0, Detections.empty()).mask
