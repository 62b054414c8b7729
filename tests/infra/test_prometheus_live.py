"""A real Prometheus (the Debian build from `make tools`), on loopback with a temporary TSDB,
scrapes the embedded Triton and the gateway from the session fixtures and evaluates the chart's
rules file: the recorded series the HPA and the dashboard use must appear, with live values."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import cv2
import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
import yaml

from prodseg.prometheus import PrometheusServer
from tests.charts.toolbox import RULES_FILE

pytestmark = [pytest.mark.k8s, pytest.mark.triton]

# Rule groups evaluate every 15 s (as in the cluster), so a series needs up to ~2 intervals.
RECORDED_WAIT_S = 60


@pytest.fixture(scope="module")
def prometheus(tools, triton, gateway):
    # The Prometheus Operator adds namespace and pod to every target; static labels do it here.
    server = PrometheusServer(
        targets={"triton": triton.metrics_url, "gateway": f"{gateway.url}/metrics"},
        rule_files=[RULES_FILE],
        target_labels={
            "triton": {"namespace": "test", "pod": "triton-0"},
            "gateway": {"namespace": "test", "pod": "gateway-0"},
        },
    )
    with server:
        yield server
    assert server.process.returncode is not None


@pytest.fixture(scope="module")
def traffic(triton, gateway):
    """Frames through Triton directly and through the gateway, in the background, until the tests end."""
    stop = threading.Event()
    frames = np.zeros((2, 384, 640, 3), np.uint8)
    image = cv2.imencode(".jpg", np.zeros((384, 640, 3), np.uint8))[1].tobytes()

    def send() -> None:
        client = triton_http.InferenceServerClient(triton.http_url)
        with httpx.Client(base_url=gateway.url, timeout=30) as web:
            deadline = time.monotonic() + 5 * RECORDED_WAIT_S
            while not stop.is_set() and time.monotonic() < deadline:
                images = triton_http.InferInput("images", list(frames.shape), "UINT8")
                images.set_data_from_numpy(frames)
                client.infer("shelf_segmenter", [images])
                web.post("/v1/frames", files={"file": ("frame.jpg", image, "image/jpeg")}).raise_for_status()
                stop.wait(0.25)
        client.close()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=30)


def wait_for_series(
    server: PrometheusServer, promql: str, accept=lambda value: True, count: int = 1
) -> list[dict]:
    """Poll until at least ``count`` series answer and every value is acceptable (bounded wait)."""
    deadline = time.monotonic() + RECORDED_WAIT_S
    result = []
    while time.monotonic() < deadline:
        result = server.query(promql)
        if len(result) >= count and all(accept(float(sample["value"][1])) for sample in result):
            return result
        time.sleep(1)
    raise AssertionError(f"{promql}: no acceptable series after {RECORDED_WAIT_S} s (last: {result})")


def test_both_targets_are_scraped(prometheus, traffic):
    up = wait_for_series(prometheus, "up", accept=lambda value: value == 1, count=2)
    assert {s["metric"]["job"] for s in up} == {"triton", "gateway"}


def test_the_hpa_metric_is_recorded_per_pod(prometheus, traffic):
    (sample,) = wait_for_series(prometheus, "prodseg:triton_queue_time_per_request_us:rate1m")
    assert sample["metric"] == {
        "__name__": "prodseg:triton_queue_time_per_request_us:rate1m",
        "namespace": "test",
        "pod": "triton-0",
    }
    assert float(sample["value"][1]) >= 0


def test_throughput_and_batch_size_are_recorded(prometheus, traffic):
    # Triton serves every model; this traffic goes to the shelf model (the others' rates are 0).
    shelf = '{model="shelf_segmenter"}'
    (fps,) = wait_for_series(
        prometheus, f"prodseg:triton_inferences_per_second:rate1m{shelf}", accept=lambda v: v > 0
    )
    assert fps["metric"]["model"] == "shelf_segmenter"
    (batch,) = wait_for_series(prometheus, f"prodseg:triton_batch_size:avg1m{shelf}", accept=lambda v: v >= 1)
    assert float(batch["value"][1]) <= 16  # cpu.pbtxt's max_batch_size
    wait_for_series(
        prometheus, f"prodseg:triton_compute_time_per_request_us:rate1m{shelf}", accept=lambda v: v > 0
    )
    # Other tests may have run video jobs through the shared gateway earlier: look at this traffic's source.
    (frames,) = wait_for_series(
        prometheus, 'prodseg:gateway_frames_per_second:rate1m{source="image"}', accept=lambda v: v > 0
    )
    assert frames["metric"]["namespace"] == "test"
    (errors,) = wait_for_series(prometheus, "prodseg:gateway_request_error_ratio:rate5m")
    assert float(errors["value"][1]) == 0


def test_every_rule_evaluates_without_error(prometheus, traffic):
    wait_for_series(prometheus, "prodseg:triton_inferences_per_second:rate1m")
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/rules", timeout=5) as r:
        groups = json.load(r)["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(RULES_FILE.read_text())["groups"])
    assert not [(r["name"], r.get("lastError")) for r in rules if r["health"] == "err"]
    assert {r["health"] for r in rules if r.get("type") == "recording"} <= {"ok", "unknown"}
    # Nothing is wrong with a healthy stack: no alert fires.
    assert not [r["name"] for r in rules if r["type"] == "alerting" and r["state"] == "firing"]
