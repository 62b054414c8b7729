"""The drift alert reaches someone: a real DriftMonitor raises its flag, a real Prometheus scrapes it
and evaluates the chart's ProdSegModelDrift rule, a real Alertmanager (Debian's, from `make tools`)
routes the firing alert, and a webhook receiver on 127.0.0.1 gets it. Everything runs on loopback
and is stopped by PID.

The rule is the chart's own expression, labels and annotations; only its ``for: 1h`` is shortened
to one second, so the test takes seconds (promtool's unit tests cover the hour).
"""

from __future__ import annotations

import json
import queue
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from clients.drift import DriftReference, DriftSettings, summarize_outputs
from datagen.shelves import render_scene, scene_seed
from gateway.drift import DriftMonitor
from prodseg.processes import free_port, http_ok, start_child, stop_process_group, wait_until_ready
from prodseg.prometheus import PrometheusServer
from tests.charts.toolbox import RULES_FILE, TOOLS

pytestmark = pytest.mark.k8s

ALERT = "ProdSegModelDrift"
CLASSES = ("background", "product", "shelf_edge", "price_tag")
DEBIAN_TEMPLATE = Path("/usr/share/prometheus/alertmanager/email.tmpl")  # infra/install-tools.sh


class AlertingPrometheus(PrometheusServer):
    """The project's loopback Prometheus, sending its alerts to one Alertmanager."""

    alertmanager: str = ""

    def _config(self) -> dict:
        return super()._config() | {
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [self.alertmanager]}]}]}
        }


class Alertmanager:
    def __init__(self, webhook_url: str) -> None:
        binary = TOOLS / "bin" / "alertmanager"
        if not binary.exists() or not DEBIAN_TEMPLATE.exists():
            pytest.fail(f"{binary} or {DEBIAN_TEMPLATE} is missing: run `make tools` (as root once)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="prodseg-alertmanager-"))
        config = {
            "route": {
                "receiver": "webhook",
                "group_by": ["alertname", "namespace", "model"],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook_url}]}],
        }
        (self.dir / "alertmanager.yml").write_text(json.dumps(config))
        self.log = self.dir / "alertmanager.log"
        self.process = start_child(
            [
                str(binary),
                f"--config.file={self.dir / 'alertmanager.yml'}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",  # no gossip port (it would bind 0.0.0.0:9094)
            ],
            self.log,
        )
        try:
            wait_until_ready(
                self.process, lambda: http_ok(f"{self.address_url}/-/ready"), 30, "alertmanager", self.tail
            )
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def address_url(self) -> str:
        return f"http://{self.address}"

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    def stop(self) -> None:
        stop_process_group(self.process, 10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def webhook():
    """A receiver on 127.0.0.1 that queues every notification Alertmanager posts."""
    received: queue.Queue = queue.Queue()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.put(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", received
    server.shutdown()
    server.server_close()


@pytest.fixture
def drifting_gateway_metrics():
    """A DriftMonitor that saw darkened frames, its registry served on 127.0.0.1 like the gateway's."""
    scenes = [render_scene(scene_seed(5, i), 96, 160) for i in range(100)]
    summaries = [summarize_outputs("segmentation", {"masks": s.mask}, len(CLASSES)) for s in scenes]
    reference = DriftReference.build(
        "shelf_segmenter", "segmentation", CLASSES, [s.image for s in scenes[:70]], summaries[:70]
    )
    registry = CollectorRegistry()
    monitor = DriftMonitor(reference, registry, window=30, settings=DriftSettings(min_samples=30))
    for scene, summary in zip(scenes[70:], summaries[70:], strict=True):
        monitor.observe((scene.image * 0.5).astype(np.uint8), summary)
    monitor.drain()
    assert monitor.evaluate()["status"] == "drift"
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_firing_drift_alert_is_delivered_to_the_webhook(tools, tmp_path, webhook, drifting_gateway_metrics):
    webhook_url, received = webhook
    rule = next(
        r
        for g in yaml.safe_load(RULES_FILE.read_text())["groups"]
        for r in g["rules"]
        if r.get("alert") == ALERT
    )
    rule_file = tmp_path / "drift-rule.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "drift", "rules": [rule | {"for": "1s"}]}]}))

    alertmanager = Alertmanager(webhook_url)
    prometheus = AlertingPrometheus(
        targets={"gateway": drifting_gateway_metrics},
        rule_files=[rule_file],
        target_labels={"gateway": {"namespace": "test", "pod": "gateway-0"}},
    )
    prometheus.alertmanager = alertmanager.address
    try:
        with prometheus:
            prometheus.wait_for(f'ALERTS{{alertname="{ALERT}",alertstate="firing"}}', timeout_s=60)
            try:
                notification = received.get(timeout=60)
            except queue.Empty:
                pytest.fail(f"no notification reached the webhook; alertmanager log:\n{alertmanager.tail()}")
    finally:
        alertmanager.stop()
    assert prometheus.process.returncode is not None and alertmanager.process.returncode is not None

    assert notification["status"] == "firing" and notification["receiver"] == "webhook"
    (alert,) = notification["alerts"]
    assert alert["labels"] == {
        "alertname": ALERT,
        "model": "shelf_segmenter",
        "namespace": "test",
        "severity": "warning",
    }
    assert (
        alert["annotations"]["summary"]
        == "Inputs or outputs of shelf_segmenter drifted from its reference in test"
    )
    assert "/v1/models/shelf_segmenter/drift" in alert["annotations"]["description"]
