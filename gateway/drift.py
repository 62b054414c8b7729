"""Drift monitoring in the gateway: one :class:`DriftMonitor` per model with a drift reference.

The request path only calls :meth:`DriftMonitor.observe`, which puts the image and the output
summary on a bounded queue and returns at once (when the queue is full the observation is dropped
and counted: monitoring never slows or blocks inference). A worker thread computes features
(~1-2 ms per image) into a bounded sliding window and, every ``evaluate_every_s`` seconds, tests
the window against the reference (``clients.drift``) and publishes the result as Prometheus gauges:

=======================================================  ============================================
``prodseg_drift_detected{model}``                        1 when the window drifts (the alert's input)
``prodseg_drift_window_samples{model}``                  samples in the window
``prodseg_drift_insufficient_data{model}``               1 while the window is below ``min_samples``
``prodseg_drift_feature_statistic{model,feature,test}``  ks | psi | wasserstein | chi2
``prodseg_drift_feature_p_value{model,feature}``         Bonferroni-corrected p-value
``prodseg_drift_feature_drifted{model,feature}``         0/1
``prodseg_drift_last_evaluation_timestamp_seconds``      unix time of the last evaluation
``prodseg_drift_observations_total{model,outcome}``      queued | dropped | failed | source_limited
=======================================================  ============================================

``report()`` returns the last evaluation for ``GET /v1/models/{model}/drift``.

The tests assume the window is a sample of the same kind of population as the reference: many
scenes. Consecutive frames of one video (or one fixed camera) are one scene, and 100 of them drift
against any diverse reference, every time (benchmarks/results/drift.json, ``single_source``). Pass
``source`` (a video job id, an API key name, a camera id) to ``observe``: at most
``per_source_limit`` samples of one source stay in the window.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from clients.drift import INSUFFICIENT_DATA, DriftReference, DriftSettings, Sample, reference_path

log = logging.getLogger(__name__)

NUMERIC_STATISTICS = ("ks", "psi", "wasserstein")
HISTORY_LENGTH = 720  # evaluations GET .../drift returns: 6 hours at the default one every 30 s


class DriftMetrics:
    """The drift gauges of one registry, shared by every model's monitor (``model`` label)."""

    _per_registry: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> DriftMetrics:
        with cls._lock:
            if registry not in cls._per_registry:
                cls._per_registry[registry] = cls(registry)
            return cls._per_registry[registry]

    def __init__(self, registry: CollectorRegistry) -> None:
        self.detected = Gauge(
            "prodseg_drift_detected",
            "1 when the model's input/output window drifted",
            ["model"],
            registry=registry,
        )
        self.window_samples = Gauge(
            "prodseg_drift_window_samples", "Samples in the drift window", ["model"], registry=registry
        )
        self.insufficient = Gauge(
            "prodseg_drift_insufficient_data",
            "1 while the window is too small to judge",
            ["model"],
            registry=registry,
        )
        self.statistic = Gauge(
            "prodseg_drift_feature_statistic",
            "Drift statistic per feature (ks, psi, wasserstein in reference std devs, chi2)",
            ["model", "feature", "test"],
            registry=registry,
        )
        self.p_value = Gauge(
            "prodseg_drift_feature_p_value",
            "Bonferroni-corrected p-value per feature",
            ["model", "feature"],
            registry=registry,
        )
        self.drifted = Gauge(
            "prodseg_drift_feature_drifted",
            "1 when the feature drifted",
            ["model", "feature"],
            registry=registry,
        )
        self.last_evaluation = Gauge(
            "prodseg_drift_last_evaluation_timestamp_seconds",
            "Unix time of the last drift evaluation",
            ["model"],
            registry=registry,
        )
        self.observations = Counter(
            "prodseg_drift_observations",
            "Requests offered to the drift monitor by outcome: queued, dropped (queue full), failed, "
            "source_limited (its source already fills its share of the window)",
            ["model", "outcome"],
            registry=registry,
        )


class DriftMonitor:
    """Sliding-window drift monitor of one model; ``start()`` it, ``close()`` it on shutdown.

    ``window`` is the number of most recent samples tested; ``sample_every`` keeps one request in
    N (1 = all); ``evaluate_every_s`` paces the tests (~10 ms for 100 samples). With the defaults
    (window 100, alpha 0.01 family-wise) no undrifted window of shelf_segmenter alarmed (0 of 20
    disjoint, 0 of 191 sliding) and every darkened, blurred or recoloured one did, 14-23 drifted
    images after drift began (benchmarks/results/drift.json).
    """

    def __init__(
        self,
        reference: DriftReference,
        registry: CollectorRegistry,
        window: int = 100,
        settings: DriftSettings | None = None,
        evaluate_every_s: float = 30.0,
        queue_size: int = 256,
        sample_every: int = 1,
        per_source_limit: int = 2,
    ) -> None:
        if window < 2 or queue_size < 1 or sample_every < 1 or evaluate_every_s <= 0 or per_source_limit < 1:
            raise ValueError(
                "need window >= 2, queue_size >= 1, sample_every >= 1, evaluate_every_s > 0, "
                "per_source_limit >= 1"
            )
        self.reference = reference
        self.model_name = reference.model_name
        self.settings = settings or DriftSettings()
        if self.settings.min_samples > window:
            raise ValueError(f"min_samples {self.settings.min_samples} exceeds the window of {window}")
        self.evaluate_every_s = evaluate_every_s
        self.sample_every = sample_every
        self.per_source_limit = per_source_limit
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._window: deque[tuple[str | None, Sample]] = deque(maxlen=window)
        self._window_lock = threading.Lock()
        self._offered = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._metrics = DriftMetrics.for_registry(registry)
        # The verdicts over time, so a page (or an operator's curl) sees more than the latest one.
        self._history: deque[dict] = deque(maxlen=HISTORY_LENGTH)
        self._report: dict = self._evaluate_now()  # insufficient_data until samples arrive

    @classmethod
    def for_model(
        cls,
        model_name: str,
        version: int,
        registry: CollectorRegistry,
        repository: Path | None = None,
        **options,
    ) -> DriftMonitor | None:
        """The monitor of a model version, or None when it has no ``drift_reference.json`` (logged)."""
        path = reference_path(model_name, version, repository)
        if not path.is_file():
            log.warning("%s v%s has no %s: drift is not monitored", model_name, version, path.name)
            return None
        return cls(DriftReference.load(path), registry, **options)

    # --- the request path ---

    def observe(self, image: np.ndarray, output_summary: Mapping, source: str | None = None) -> bool:
        """Offer one request (RGB uint8 image as received, summary as in ``clients.drift``).

        ``source`` names where correlated images come from (a video job, a camera); None: independent.
        Never blocks: returns False when the observation was skipped or the queue was full.
        """
        self._offered += 1  # a race here only shifts which request is sampled
        if (self._offered - 1) % self.sample_every:
            return False
        try:
            self._queue.put_nowait((image, output_summary, source))
        except queue.Full:
            self._metrics.observations.labels(self.model_name, "dropped").inc()
            return False
        self._metrics.observations.labels(self.model_name, "queued").inc()
        return True

    # --- the worker ---

    def start(self) -> DriftMonitor:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"drift-{self.model_name}", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> DriftMonitor:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _run(self) -> None:
        next_evaluation = time.monotonic() + self.evaluate_every_s
        while not self._stop.is_set():
            timeout = max(0.0, min(0.2, next_evaluation - time.monotonic()))
            try:
                self._add(*self._queue.get(timeout=timeout))
            except queue.Empty:
                pass
            if time.monotonic() >= next_evaluation:
                self.evaluate()
                next_evaluation = time.monotonic() + self.evaluate_every_s

    def _add(self, image: np.ndarray, summary: Mapping, source: str | None) -> None:
        if source is not None:
            with self._window_lock:
                held = sum(1 for held_source, _ in self._window if held_source == source)
            if held >= self.per_source_limit:
                self._metrics.observations.labels(self.model_name, "source_limited").inc()
                return
        try:
            sample = self.reference.sample(image, summary)
        except (ValueError, KeyError, TypeError) as error:  # a bad summary must not kill the worker
            self._metrics.observations.labels(self.model_name, "failed").inc()
            log.warning("drift monitor %s: observation skipped: %s", self.model_name, error)
            return
        with self._window_lock:
            self._window.append((source, sample))

    def drain(self, timeout_s: float = 10.0) -> None:
        """Process everything queued so far (tests and shutdown; the worker does this on its own)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            self._add(*item)

    # --- evaluation and reporting ---

    def evaluate(self) -> dict:
        """Test the current window now, publish the gauges and return the report."""
        self._report = self._evaluate_now()
        return self._report

    def _evaluate_now(self) -> dict:
        with self._window_lock:
            samples = [sample for _, sample in self._window]
        report = self.reference.compare(samples, self.settings)
        report |= {"window": self._window.maxlen, "evaluated_at": time.time()}
        self._publish(report)
        self._history.append(
            {
                "evaluated_at": report["evaluated_at"],
                "status": report["status"],
                "samples": report["samples"],
                "drifted": len(report["drifted_features"]),
            }
        )
        return report

    def report(self) -> dict:
        """The last evaluation (``status``: ok | drift | insufficient_data), the queue's state and
        ``history``: the last ``HISTORY_LENGTH`` evaluations' verdicts, oldest first."""
        return self._report | {"queued": self._queue.qsize(), "history": list(self._history)}

    def _publish(self, report: dict) -> None:
        m, model = self._metrics, self.model_name
        insufficient = report["status"] == INSUFFICIENT_DATA
        m.detected.labels(model).set(1 if report["status"] == "drift" else 0)
        m.window_samples.labels(model).set(report["samples"])
        m.insufficient.labels(model).set(1 if insufficient else 0)
        m.last_evaluation.labels(model).set(report["evaluated_at"])
        for name, result in report["features"].items():
            if result["kind"] == "numeric":
                for test in NUMERIC_STATISTICS:
                    value = result["statistic"] if test == "ks" else result[test]
                    m.statistic.labels(model, name, test).set(value)
            else:
                m.statistic.labels(model, name, "chi2").set(result["statistic"])
            m.p_value.labels(model, name).set(result["p_value_corrected"])
            m.drifted.labels(model, name).set(1 if result["drifted"] else 0)
        if insufficient:  # no verdict: per-feature gauges say "not drifted", not stale values
            for name in self.reference.feature_names:
                m.drifted.labels(model, name).set(0)
