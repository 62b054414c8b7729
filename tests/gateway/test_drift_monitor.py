"""The gateway's drift monitor: cheap on the request path, a bounded window, gauges per model and
feature in the registry it is given, and a report for ``GET /v1/models/{model}/drift``."""

from __future__ import annotations

import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from clients.drift import DriftReference, DriftSettings, reference_path, summarize_outputs
from datagen.shelves import render_scene, scene_seed
from gateway.drift import DriftMonitor

CLASSES = ("background", "product", "shelf_edge", "price_tag")


def scenes(seed: int, count: int) -> list[tuple[np.ndarray, dict]]:
    out = []
    for i in range(count):
        scene = render_scene(scene_seed(seed, i), 96, 160)
        out.append((scene.image, summarize_outputs("segmentation", {"masks": scene.mask}, len(CLASSES))))
    return out


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    pairs = scenes(seed=1, count=120)
    return DriftReference.build(
        "shelf_segmenter", "segmentation", CLASSES, *zip(*pairs, strict=True), version=1
    )


@pytest.fixture(scope="module")
def live() -> list[tuple[np.ndarray, dict]]:
    return scenes(seed=2, count=40)


def gauge(registry: CollectorRegistry, name: str, **labels) -> float | None:
    return registry.get_sample_value(name, labels)


def test_window_reports_insufficient_data_then_ok_then_drift(reference, live):
    registry = CollectorRegistry()
    monitor = DriftMonitor(reference, registry, window=30, settings=DriftSettings(min_samples=20))
    assert monitor.report()["status"] == "insufficient_data"
    assert gauge(registry, "prodseg_drift_insufficient_data", model="shelf_segmenter") == 1
    assert gauge(registry, "prodseg_drift_detected", model="shelf_segmenter") == 0

    for image, summary in live[:30]:
        assert monitor.observe(image, summary)
    monitor.drain()
    report = monitor.evaluate()
    assert report["status"] == "ok" and report["samples"] == 30 and report["window"] == 30
    assert gauge(registry, "prodseg_drift_window_samples", model="shelf_segmenter") == 30

    # Darkened frames push the undrifted ones out of the bounded window, and the alarm goes up.
    for image, summary in live[:30]:
        monitor.observe((image * 0.5).astype(np.uint8), summary)
    monitor.drain()
    report = monitor.evaluate()
    assert report["status"] == "drift" and report["samples"] == 30
    assert "brightness" in report["drifted_features"]
    assert gauge(registry, "prodseg_drift_detected", model="shelf_segmenter") == 1
    assert (
        gauge(registry, "prodseg_drift_feature_drifted", model="shelf_segmenter", feature="brightness") == 1
    )
    p_value = gauge(registry, "prodseg_drift_feature_p_value", model="shelf_segmenter", feature="brightness")
    assert p_value == pytest.approx(report["features"]["brightness"]["p_value_corrected"])
    for test in ("ks", "psi", "wasserstein"):
        labels = {"model": "shelf_segmenter", "feature": "brightness", "test": test}
        assert gauge(registry, "prodseg_drift_feature_statistic", **labels) > 0


def test_observe_never_blocks_and_counts_what_it_drops(reference, live):
    registry = CollectorRegistry()
    monitor = DriftMonitor(reference, registry, window=30, queue_size=4)  # not started: nothing drains
    image, summary = live[0]
    started = time.perf_counter()
    accepted = [monitor.observe(image, summary) for _ in range(1000)]
    per_call_us = (time.perf_counter() - started) / 1000 * 1e6
    assert accepted.count(True) == 4
    assert (
        gauge(registry, "prodseg_drift_observations_total", model="shelf_segmenter", outcome="dropped") == 996
    )
    assert per_call_us < 200, f"observe took {per_call_us:.0f} us"


def test_sample_every_keeps_one_request_in_n(reference, live):
    monitor = DriftMonitor(reference, CollectorRegistry(), window=30, sample_every=3)
    image, summary = live[0]
    assert [monitor.observe(image, summary) for _ in range(6)] == [True, False, False, True, False, False]


def test_worker_thread_evaluates_on_its_own_and_survives_bad_summaries(reference, live):
    registry = CollectorRegistry()
    settings = DriftSettings(min_samples=20)
    with DriftMonitor(reference, registry, window=30, settings=settings, evaluate_every_s=0.2) as monitor:
        monitor.observe(live[0][0], {"wrong": "summary"})  # skipped and counted, the worker lives on
        for image, summary in live[:25]:
            monitor.observe(image, summary)
        deadline = time.monotonic() + 10
        while monitor.report()["samples"] < 25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert monitor.report()["status"] == "ok"
    assert gauge(registry, "prodseg_drift_observations_total", model="shelf_segmenter", outcome="failed") == 1


def test_one_video_cannot_fill_the_window(reference, live):
    """Frames of one source are one scene: at most ``per_source_limit`` of them stay in the window."""
    registry = CollectorRegistry()
    monitor = DriftMonitor(reference, registry, window=30, per_source_limit=2)
    image, summary = live[0]
    for _ in range(10):
        monitor.observe(image, summary, source="job-1")
    monitor.observe(image, summary, source="job-2")
    for image, summary in live[:5]:
        monitor.observe(image, summary)  # no source: independent requests, no limit
    monitor.drain()
    assert monitor.evaluate()["samples"] == 2 + 1 + 5
    limited = gauge(
        registry, "prodseg_drift_observations_total", model="shelf_segmenter", outcome="source_limited"
    )
    assert limited == 8


def test_two_models_share_one_registry(reference, live):
    registry = CollectorRegistry()
    other = DriftReference.from_dict(reference.to_dict() | {"model": "crack_segmenter"})
    DriftMonitor(reference, registry)
    DriftMonitor(other, registry)
    text = generate_latest(registry).decode()
    assert 'prodseg_drift_detected{model="shelf_segmenter"} 0.0' in text
    assert 'prodseg_drift_detected{model="crack_segmenter"} 0.0' in text


def test_for_model_reads_the_reference_beside_the_version(reference, tmp_path):
    registry = CollectorRegistry()
    assert DriftMonitor.for_model("shelf_segmenter", 1, registry, repository=tmp_path) is None
    reference.save(reference_path("shelf_segmenter", 1, tmp_path))
    monitor = DriftMonitor.for_model("shelf_segmenter", 1, registry, repository=tmp_path, window=50)
    assert monitor.report()["version"] == 1 and monitor.report()["window"] == 50


def test_bad_settings_are_refused(reference):
    with pytest.raises(ValueError, match="min_samples 30 exceeds the window of 10"):
        DriftMonitor(reference, CollectorRegistry(), window=10)
