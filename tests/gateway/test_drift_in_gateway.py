"""Drift monitoring inside the real gateway: the window fills from the image route, the report and
the gauges say so, and darkened images raise the alarm (the real Triton serves the model)."""

from __future__ import annotations

import time

import cv2
import httpx
import numpy as np
import pytest

from prodseg.stack import GatewayProcess, serving_env

pytestmark = pytest.mark.triton
MODEL = "shelf_segmenter"


def test_darkened_images_raise_the_drift_alarm(triton, tmp_path):
    from datagen.shelves import render_scene

    env = serving_env(triton) | {
        "PRODSEG_DRIFT_WINDOW": "40",
        "PRODSEG_DRIFT_EVALUATE_EVERY_S": "0.3",
        "PRODSEG_DRIFT_SAMPLE_EVERY": "1",
    }
    gateway = GatewayProcess(triton.grpc_url, data_dir=tmp_path / "data", env=env).start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            report = client.get(f"/v1/models/{MODEL}/drift").json()
            assert report["status"] == "insufficient_data"  # never a verdict on too few samples
            for seed in range(45):
                dark = (render_scene(2000 + seed, 192, 320).image * 0.25).astype(np.uint8)
                png = cv2.imencode(".png", cv2.cvtColor(dark, cv2.COLOR_RGB2BGR))[1].tobytes()
                assert (
                    client.post(f"/v1/models/{MODEL}/images", files={"file": ("d.png", png)}).status_code
                    == 200
                )
            deadline = time.monotonic() + 30
            while (
                client.get(f"/v1/models/{MODEL}/drift").json()["status"] != "drift"
                and time.monotonic() < deadline
            ):
                time.sleep(0.3)
            report = client.get(f"/v1/models/{MODEL}/drift").json()
            assert report["status"] == "drift"
            metrics = client.get("/metrics").text
            assert f'prodseg_drift_detected{{model="{MODEL}"}} 1.0' in metrics
            assert client.get("/v1/models/nope/drift").status_code == 404
    finally:
        gateway.stop()
