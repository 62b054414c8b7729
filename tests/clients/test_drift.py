"""Drift features, the reference file and the tests: quiet on held-out shelf scenes, loud on darkened,
blurred and recoloured ones, and never a verdict on too few samples.

Scenes are small (96x160) generated shelves; the "model output" is the scene's true mask, which is
what a good segmenter returns. benchmarks/results/drift.json measures the same with the real model.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from clients.drift import (
    DRIFT,
    INSUFFICIENT_DATA,
    OK,
    DriftReference,
    DriftSettings,
    class_mix_test,
    image_features,
    output_features,
    psi,
    reference_path,
    summarize_outputs,
)
from datagen.shelves import render_scene, scene_seed

CLASSES = ("background", "product", "shelf_edge", "price_tag")
WINDOW = 40
REFERENCE_SIZE = 160
HELD_OUT_WINDOWS = 5


def shelf_scenes(seed: int, count: int) -> list:
    return [render_scene(scene_seed(seed, i), 96, 160) for i in range(count)]


def mask_summary(mask: np.ndarray) -> dict:
    return summarize_outputs("segmentation", {"masks": mask}, len(CLASSES))


def darken(image: np.ndarray) -> np.ndarray:
    return (image * 0.6).astype(np.uint8)


def blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), 2.0)


def recolour(image: np.ndarray) -> np.ndarray:  # a warm white-balance cast
    return np.clip(image * np.array([1.2, 1.0, 0.8], np.float32), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    scenes = shelf_scenes(seed=1, count=REFERENCE_SIZE)
    return DriftReference.build(
        "shelf_segmenter",
        "segmentation",
        CLASSES,
        [s.image for s in scenes],
        [mask_summary(s.mask) for s in scenes],
    )


@pytest.fixture(scope="module")
def held_out() -> list:
    return shelf_scenes(seed=2, count=WINDOW * HELD_OUT_WINDOWS)


def windows(reference: DriftReference, scenes: list, transform=None) -> list[dict]:
    reports = []
    for start in range(0, len(scenes), WINDOW):
        chunk = scenes[start : start + WINDOW]
        samples = [
            reference.sample(transform(s.image) if transform else s.image, mask_summary(s.mask))
            for s in chunk
        ]
        reports.append(reference.compare(samples))
    return reports


def test_held_out_windows_raise_no_alarm(reference, held_out):
    reports = windows(reference, held_out)
    assert [r["status"] for r in reports] == [OK] * HELD_OUT_WINDOWS
    # Single features do cross an uncorrected p < 0.05 on undrifted data: that is why the rule is
    # Bonferroni over every feature.
    assert all(r["tests"] == len(reference.feature_names) for r in reports)


@pytest.mark.parametrize(
    ("transform", "expected_feature"),
    [(darken, "brightness"), (blur, "blur"), (recolour, "cast_yellow_blue")],
    ids=["darkened", "blurred", "recoloured"],
)
def test_darkened_blurred_and_recoloured_windows_drift(reference, held_out, transform, expected_feature):
    reports = windows(reference, held_out, transform)
    assert [r["status"] for r in reports] == [DRIFT] * HELD_OUT_WINDOWS
    assert all(expected_feature in r["drifted_features"] for r in reports)


def test_too_few_samples_give_no_verdict(reference, held_out):
    dark = [reference.sample(darken(s.image), mask_summary(s.mask)) for s in held_out[:29]]
    report = reference.compare(dark, DriftSettings(min_samples=30))
    assert report["status"] == INSUFFICIENT_DATA
    assert report["features"] == {} and report["drifted_features"] == []
    assert reference.compare(dark[:0])["status"] == INSUFFICIENT_DATA


def test_a_changed_output_mix_drifts_even_when_images_look_the_same(reference, held_out):
    """The model's outputs are features too: a model that stops seeing price tags is noticed."""
    samples = []
    for scene in held_out[:WINDOW]:
        shares = mask_summary(scene.mask)["class_shares"]
        shares = [shares[0] + shares[3], shares[1], shares[2], 0.0]  # price tags read as background
        samples.append(reference.sample(scene.image, {"class_shares": shares}))
    report = reference.compare(samples)
    assert report["status"] == DRIFT
    assert "share_price_tag" in report["drifted_features"]
    assert not {"brightness", "blur", "colourfulness"} & set(report["drifted_features"])


def test_report_carries_every_statistic_and_is_json(reference, held_out):
    samples = [reference.sample(s.image, mask_summary(s.mask)) for s in held_out[:WINDOW]]
    report = json.loads(json.dumps(reference.compare(samples), allow_nan=False))
    brightness = report["features"]["brightness"]
    assert {"statistic", "p_value", "p_value_corrected", "wasserstein", "psi", "drifted"} <= set(brightness)
    assert brightness["p_value_corrected"] == pytest.approx(min(1.0, brightness["p_value"] * report["tests"]))
    assert {"embedding_pc1", "embedding_pc3", "width", "aspect_ratio", "share_product"} <= set(
        report["features"]
    )


def test_reference_round_trips_through_its_file(reference, held_out, tmp_path):
    path = reference_path("shelf_segmenter", 3, tmp_path)
    reference.save(path)
    assert path == tmp_path / "shelf_segmenter" / "3" / "drift_reference.json"
    loaded = DriftReference.load(path)
    assert loaded.class_names == CLASSES and loaded.num_samples == REFERENCE_SIZE
    samples = [loaded.sample(darken(s.image), mask_summary(s.mask)) for s in held_out[:WINDOW]]
    original = [reference.sample(darken(s.image), mask_summary(s.mask)) for s in held_out[:WINDOW]]
    assert loaded.compare(samples)["drifted_features"] == reference.compare(original)["drifted_features"]
    assert not list(path.parent.glob(".*partial"))


def test_broken_reference_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="prodseg drift reference"):
        DriftReference.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not JSON"):
        DriftReference.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"schema": 99}))
    with pytest.raises(ValueError, match="schema 99"):
        DriftReference.load(tmp_path / "old.json")


def test_image_features_measure_what_they_name():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    features = image_features(sharp)
    assert (features["width"], features["height"]) == (200, 120)
    assert features["aspect_ratio"] == pytest.approx(200 / 120)
    assert image_features(darken(sharp))["brightness"] < features["brightness"] * 0.7
    assert image_features(blur(sharp))["blur"] < features["blur"] / 10
    grey = np.repeat(sharp[..., :1], 3, axis=2)
    assert image_features(grey)["colourfulness"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"RGB uint8 image \[H, W, 3\], got float32"):
        image_features(sharp.astype(np.float32))


def test_output_features_of_every_task_and_bad_summaries():
    detection = output_features("detection", {"count": 2, "class_ids": [1, 1]}, ["nose", "mask"])
    assert detection.numeric == {"detections": 2.0} and detection.classes == {"detected_classes": (1, 1)}
    top = output_features("classification", {"class_id": 0, "confidence": 0.9}, ["ok", "crack"])
    assert top.numeric == {"top_confidence": 0.9} and top.classes == {"predicted_class": (0,)}
    with pytest.raises(ValueError, match="needs 'class_shares'"):
        output_features("segmentation", {"shares": []}, CLASSES)
    with pytest.raises(ValueError, match="class_shares has 2 values, the model has 4 classes"):
        output_features("segmentation", {"class_shares": [0.5, 0.5]}, CLASSES)
    with pytest.raises(ValueError, match="count is 3 but 1 class_ids"):
        output_features("detection", {"count": 3, "class_ids": [0]}, ["a"])
    with pytest.raises(ValueError, match=r"class ids \[5\] are outside 0..1"):
        output_features("classification", {"class_id": 5, "confidence": 0.5}, ["a", "b"])


def test_summaries_of_raw_model_outputs():
    mask = np.array([[0, 1], [1, 3]], np.uint8)
    assert summarize_outputs("segmentation", {"masks": mask}, 4) == {"class_shares": [0.25, 0.5, 0.0, 0.25]}
    detection = {"num_detections": np.array([2]), "class_ids": np.array([1, 0, 0, 0], np.int32)}
    assert summarize_outputs("detection", detection, 2) == {"count": 2, "class_ids": [1, 0]}
    probabilities = {"probabilities": np.array([0.1, 0.7, 0.2], np.float32)}
    summary = summarize_outputs("classification", probabilities, 3)
    assert summary["class_id"] == 1 and summary["confidence"] == pytest.approx(0.7)


def test_class_mix_and_psi_tests():
    reference = np.array([500, 300, 200, 0])
    same = class_mix_test(reference, np.array([50, 31, 19, 0]), CLASSES)
    changed = class_mix_test(reference, np.array([20, 20, 60, 0]), CLASSES)
    assert same["p_value"] > 0.5 and changed["p_value"] < 1e-6
    assert class_mix_test(reference, np.zeros(4, int), CLASSES)["p_value"] == 1.0  # nothing observed
    values = np.random.default_rng(0).normal(size=1000)
    assert psi(values, values) == pytest.approx(0.0)
    assert psi(values, values + 1.0) > 0.25


def noise_images(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (0, 0), 1.0) for _ in range(count)
    ]


def window_of(reference: DriftReference, seed: int, summaries: list[dict]) -> dict:
    images = noise_images(seed, len(summaries))
    return reference.compare([reference.sample(i, s) for i, s in zip(images, summaries, strict=True)])


def test_detection_reference_notices_a_changed_class_mix():
    rng = np.random.default_rng(0)

    def detections(mix: list[float], n: int) -> list[dict]:
        counts = rng.poisson(3, n)
        return [{"count": int(c), "class_ids": rng.choice(3, int(c), p=mix).tolist()} for c in counts]

    classes = ["no_mask", "mask", "mask_wrong"]
    usual = [0.3, 0.6, 0.1]
    reference = DriftReference.build(
        "mask_detector", "detection", classes, noise_images(1, 200), detections(usual, 200)
    )
    assert window_of(reference, 2, detections(usual, 60))["status"] == OK
    fewer_masks = window_of(reference, 3, detections([0.6, 0.3, 0.1], 60))
    assert fewer_masks["status"] == DRIFT and fewer_masks["drifted_features"] == ["detected_classes"]
    assert fewer_masks["features"]["detected_classes"]["window_share"]["no_mask"] > 0.5


def test_classification_reference_notices_falling_confidence():
    rng = np.random.default_rng(0)

    def predictions(low: float, n: int) -> list[dict]:
        ids = rng.choice(2, n, p=[0.8, 0.2])
        return [{"class_id": int(i), "confidence": float(rng.uniform(low, 1.0))} for i in ids]

    classes = ["ok", "damaged"]
    reference = DriftReference.build(
        "returns", "classification", classes, noise_images(1, 200), predictions(0.7, 200)
    )
    assert window_of(reference, 2, predictions(0.7, 60))["status"] == OK
    unsure = window_of(reference, 4, predictions(0.4, 60))
    assert unsure["status"] == DRIFT and unsure["drifted_features"] == ["top_confidence"]
