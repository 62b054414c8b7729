"""Triton's own view of a load run, from its Prometheus endpoint: queue and compute time, batch size.

Counters are cumulative, so a run's figures are the difference between two scrapes.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

SERIES = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)


@dataclass(frozen=True)
class TritonSnapshot:
    values: dict[str, float]

    @classmethod
    def scrape(cls, metrics_url: str, model: str) -> TritonSnapshot:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
        values = dict.fromkeys(SERIES, 0.0)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                # The parser names counter samples "<family>_total"; Triton's own names have no suffix.
                if family.name in values and sample.labels.get("model") == model:
                    values[family.name] += sample.value
        return cls(values)

    def since(self, earlier: TritonSnapshot) -> dict[str, float | None]:
        """Per-request averages between two scrapes (None where nothing ran)."""
        delta = {name: self.values[name] - earlier.values[name] for name in SERIES}
        requests = delta["nv_inference_request_success"]
        executions = delta["nv_inference_exec_count"]

        def per(total: float, count: float) -> float | None:
            return round(total / count, 2) if count else None

        return {
            "requests": requests,
            "failures": delta["nv_inference_request_failure"],
            "queue_us_per_request": per(delta["nv_inference_queue_duration_us"], requests),
            "compute_us_per_request": per(delta["nv_inference_compute_infer_duration_us"], requests),
            # nv_inference_count counts frames (batch items); exec_count counts model executions.
            "average_batch_frames": per(delta["nv_inference_count"], executions),
        }
