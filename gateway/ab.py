"""A/B tests between versions of one model: weighted, sticky traffic split and a per-version report.

Triton serves both versions at once (``version_policy: specific``); the gateway sends each request to
the version its subject (API key name, else the ``X-Client-Id`` header, else the client address) is
assigned to. The assignment hashes the subject with the test's id, so it is sticky for the whole test
and independent between tests. Every prediction is recorded under the version that made it: requests,
latency, predicted-class mix and confidence, and accuracy once feedback labels exist. The report tests
the difference between versions: chi-square on the class mix, Mann-Whitney U on confidence,
a two-proportion z-test on accuracy.

Tests are durable (the gateway store), their statistics are kept in memory per replica, bounded.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from clients.results import Classification, Detections, Prediction, Segmentation
from gateway.errors import ApiError
from gateway.store import GatewayStore

SAMPLES_KEPT = 10_000  # per version: latencies and confidences for percentiles and tests


@dataclass
class VersionStats:
    requests: int = 0
    errors: int = 0
    latencies_s: deque = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))
    confidences: deque = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))
    classes: Counter = field(default_factory=Counter)
    labelled: int = 0
    correct: int = 0

    def report(self, labels: list[str]) -> dict[str, Any]:
        latencies = np.array(self.latencies_s) * 1000
        total = sum(self.classes.values())
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency_ms": {
                f"p{q}": round(float(np.percentile(latencies, q)), 2) if latencies.size else None
                for q in (50, 95, 99)
            },
            "prediction_mix": {
                labels[c] if c < len(labels) else str(c): round(n / total, 4)
                for c, n in sorted(self.classes.items())
            }
            if total
            else {},
            "mean_confidence": round(float(np.mean(self.confidences)), 4) if self.confidences else None,
            "accuracy": round(self.correct / self.labelled, 4) if self.labelled else None,
            "labelled": self.labelled,
        }


@dataclass
class ABTest:
    model: str
    weights: dict[str, int]  # version -> percent of subjects
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started_at: float = field(default_factory=time.time)
    per_version: dict[str, VersionStats] = field(default_factory=dict)

    def version_for(self, subject: str) -> str:
        """The subject's version: a stable bucket 0-99 from a hash, mapped through the weights."""
        bucket = int.from_bytes(hashlib.sha256(f"{self.id}:{subject}".encode()).digest()[:8], "big") % 100
        cumulative = 0
        for version, weight in self.weights.items():
            cumulative += weight
            if bucket < cumulative:
                return version
        return next(reversed(self.weights))

    def stats(self, version: str) -> VersionStats:
        return self.per_version.setdefault(version, VersionStats())

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "weights": self.weights, "started_at": self.started_at}


class ABTests:
    """The A/B tests of this gateway, one per model at most."""

    def __init__(self, store: GatewayStore) -> None:
        self._store = store
        self.tests: dict[str, ABTest] = {}
        for key, value in store.state("ab:").items():
            self.tests[key.removeprefix("ab:")] = ABTest(
                value["model"], value["weights"], value["id"], value["started_at"]
            )

    def start_configured(self, configured: dict[str, dict[str, int]]) -> None:
        """Tests the deployment names (same id on every replica: the split is the same everywhere)."""
        for model, weights in configured.items():
            weights = {str(v): int(w) for v, w in weights.items()}
            if sum(weights.values()) != 100 or len(weights) < 2:
                raise ValueError(f"PRODSEG_AB_TESTS: {model}: weights must name 2+ versions and sum to 100")
            test_id = hashlib.sha256(json.dumps([model, weights], sort_keys=True).encode()).hexdigest()[:12]
            if model not in self.tests or self.tests[model].id != test_id:
                self.tests[model] = ABTest(model, weights, test_id)
                self._store.put_state(f"ab:{model}", self.tests[model].to_dict())

    def start(self, model: str, weights: dict[str, int], loaded_versions: list[str]) -> ABTest:
        problems = []
        if len(weights) < 2:
            problems.append("an A/B test needs at least two versions")
        if any(not isinstance(w, int) or w < 0 for w in weights.values()):
            problems.append("weights are integers >= 0")
        elif sum(weights.values()) != 100:
            problems.append(f"weights must sum to 100, got {sum(weights.values())}")
        missing = [v for v in weights if v not in loaded_versions]
        if missing:
            problems.append(
                f"version(s) {', '.join(missing)} not loaded by Triton (loaded: {loaded_versions})"
            )
        if problems:
            raise ApiError(422, "invalid_ab_test", "; ".join(problems))
        test = ABTest(model, {str(v): int(w) for v, w in weights.items()})
        self.tests[model] = test
        self._store.put_state(f"ab:{model}", test.to_dict())
        return test

    def stop(self, model: str) -> ABTest:
        test = self.get(model)
        del self.tests[model]
        self._store.put_state(f"ab:{model}", None)
        return test

    def get(self, model: str) -> ABTest:
        if model not in self.tests:
            raise ApiError(404, "no_ab_test", f"no A/B test runs for {model}")
        return self.tests[model]

    def version_for(self, model: str, subject: str) -> str | None:
        test = self.tests.get(model)
        return test.version_for(subject) if test else None

    def record(self, model: str, version: str, latency_s: float, prediction: Prediction | None) -> None:
        test = self.tests.get(model)
        if test is None or version not in test.weights:
            return
        entry = test.stats(version)
        entry.requests += 1
        if prediction is None:
            entry.errors += 1
            return
        entry.latencies_s.append(latency_s)
        class_id, confidence = _top_class(prediction)
        if class_id is not None:
            entry.classes[class_id] += 1
        if confidence is not None:
            entry.confidences.append(confidence)

    def record_label(self, model: str, version: str, correct: bool) -> None:
        """Feedback on a prediction of ``version``: counts toward that version's accuracy."""
        test = self.tests.get(model)
        if test is not None and version in test.weights:
            entry = test.stats(version)
            entry.labelled += 1
            entry.correct += int(correct)

    def report(self, model: str, labels: list[str]) -> dict[str, Any]:
        test = self.get(model)
        versions = list(test.weights)
        per_version = {v: test.stats(v).report(labels) for v in versions}
        return test.to_dict() | {"versions": per_version, "tests": _significance(test, versions)}


def _top_class(prediction: Prediction) -> tuple[int | None, float | None]:
    if isinstance(prediction, Classification):
        return prediction.class_id, prediction.confidence
    if isinstance(prediction, Detections):
        if not len(prediction):
            return None, None
        best = int(np.argmax(prediction.confidence))
        return int(prediction.class_id[best]), float(prediction.confidence[best])
    if isinstance(prediction, Segmentation):  # the dominant non-background class
        counts = np.bincount(prediction.mask.ravel())
        counts[0] = 0
        return (int(np.argmax(counts)) if counts.any() else 0), None
    return None, None


def _significance(test: ABTest, versions: list[str]) -> dict[str, Any]:
    """Is the difference between the first two versions more than chance? (p-values; None: too little data)"""
    a, b = (test.stats(v) for v in versions[:2])
    result: dict[str, Any] = {"compared": versions[:2]}
    classes = sorted(set(a.classes) | set(b.classes))
    table = np.array([[a.classes[c] for c in classes], [b.classes[c] for c in classes]])
    table = table[:, table.sum(0) > 0]
    if table.shape[1] >= 2 and table.sum(1).min() >= 5:
        chi2, p, _, _ = stats.chi2_contingency(table)
        result["prediction_mix"] = {
            "test": "chi-square",
            "statistic": round(float(chi2), 4),
            "p_value": float(p),
        }
    else:
        result["prediction_mix"] = None
    if len(a.confidences) >= 5 and len(b.confidences) >= 5:
        u, p = stats.mannwhitneyu(list(a.confidences), list(b.confidences))
        result["confidence"] = {"test": "Mann-Whitney U", "statistic": float(u), "p_value": float(p)}
    else:
        result["confidence"] = None
    if a.labelled >= 5 and b.labelled >= 5:
        pooled = (a.correct + b.correct) / (a.labelled + b.labelled)
        se = math.sqrt(pooled * (1 - pooled) * (1 / a.labelled + 1 / b.labelled)) or float("inf")
        z = (a.correct / a.labelled - b.correct / b.labelled) / se
        result["accuracy"] = {
            "test": "two-proportion z",
            "statistic": round(z, 4),
            "p_value": float(2 * stats.norm.sf(abs(z))),
        }
    else:
        result["accuracy"] = None
    return result
