"""Retraining: started by hand or by a policy, one run at a time per model, never into production.

The gateway runs in-process (no Triton is needed to take feedback or to start a run). Most tests give
the policy a stand-in training command (a short Python one-liner that prints what the pipeline prints)
so they take seconds; the slow one runs the real training pipeline on the tiny config.
"""

from __future__ import annotations

import json
import shutil
import sys
import time

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from clients.contract import default_repository
from clients.masks import encode_mask_png
from clients.repository import versions
from gateway.app import create_app
from gateway.settings import GatewaySettings
from prodseg.processes import free_port
from tests.conftest import copy_model

MODEL = "shelf_segmenter"
STAND_IN = f"{sys.executable} -c \"import time; time.sleep(1.5); print('published {{model}} version 2')\""


def client_for(tmp_path, policy: dict, **settings) -> TestClient:
    policies = tmp_path / "policies.json"
    policies.write_text(json.dumps({MODEL: policy}))
    config = GatewaySettings(
        triton_grpc_url=f"127.0.0.1:{free_port()}",
        data_dir=tmp_path / "data",
        models=(MODEL,),
        retrain_policies=str(policies),
        **settings,
    )
    return TestClient(create_app(config))


def wait_for_run(client: TestClient, status: str = "succeeded", timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.get(f"/v1/models/{MODEL}/retrain").json()["last_run"]
        if run and run["status"] == status:
            return run
        time.sleep(0.1)
    raise TimeoutError(f"no {status} run: {run}")


def test_a_manual_retrain_runs_once_at_a_time_and_reports_its_outcome(tmp_path):
    with client_for(tmp_path, {"command": STAND_IN, "min_new_labels": 0, "drift_sustained_s": 0}) as client:
        started = client.post(f"/v1/models/{MODEL}/retrain")
        assert started.status_code == 202 and started.json()["last_run"]["reason"] == "manual"
        run_id = started.json()["last_run"]["id"]
        busy = client.post(f"/v1/models/{MODEL}/retrain")
        assert busy.status_code == 409 and run_id in busy.json()["error"]["message"]
        run = wait_for_run(client)
        assert run["exit_code"] == 0 and run["published_version"] == 2
        assert (
            "published shelf_segmenter version 2"
            in client.get(f"/v1/models/{MODEL}/retrain").json()["last_run"]["log_tail"]
        )


def test_enough_new_labels_start_a_retrain_by_policy(tmp_path):
    policy = {"command": STAND_IN, "min_new_labels": 2, "drift_sustained_s": 0}
    with client_for(tmp_path, policy, retrain_check_s=0.2) as client:
        image = cv2.imencode(".png", np.zeros((40, 60, 3), np.uint8))[1].tobytes()
        mask = encode_mask_png(np.ones((40, 60), np.uint8))
        for _ in range(2):
            response = client.post(
                f"/v1/models/{MODEL}/feedback", files={"file": ("a.png", image), "mask": ("m.png", mask)}
            )
            assert response.status_code == 201, response.text
        run = wait_for_run(client)
        assert run["reason"].startswith("policy: 2 new labelled examples")


def test_a_missing_training_config_is_refused(tmp_path):
    policy = {"command": STAND_IN, "config": "training/configs/nope.yaml"}
    with client_for(tmp_path, policy) as client:
        response = client.post(f"/v1/models/{MODEL}/retrain")
        assert response.status_code == 422 and "nope.yaml" in response.json()["error"]["message"]


def test_the_kubernetes_launcher_creates_a_job_with_fake_kubectl(tmp_path, monkeypatch):
    """No kube-apiserver runs here: a fake ``kubectl`` records the Job it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "kubectl"
    fake.write_text(f"#!/bin/sh\ncat > {tmp_path}/job.json\necho job.batch/created\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    policy = {
        "launcher": "kubernetes",
        "image": "prodseg/training:1",
        "command": "prodseg pipeline --config {config}",
    }
    with client_for(tmp_path, policy) as client:
        assert client.post(f"/v1/models/{MODEL}/retrain").status_code == 202
    job = json.loads((tmp_path / "job.json").read_text())
    assert job["kind"] == "Job" and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "prodseg/training:1"
    assert container["command"][:3] == ["prodseg", "pipeline", "--config"]


@pytest.mark.slow
def test_a_real_retrain_publishes_a_new_version_without_touching_production(tmp_path):
    repository = tmp_path / "repository"
    repository.mkdir()
    shutil.copy2(default_repository() / "onnx_runner.py", repository)
    copy_model(MODEL, repository / MODEL)
    command = (
        "{python} -m prodseg.cli pipeline --config training/configs/tiny.yaml --run-dir {run_dir} "
        f"--repository {repository} --set tracking.uri=sqlite:///{tmp_path}/mlflow.db "
        "--set publish.promote=staging"
    )
    policy = {"command": command, "config": "training/configs/tiny.yaml"}
    with client_for(tmp_path, policy, model_repository=repository) as client:
        assert client.post(f"/v1/models/{MODEL}/retrain").status_code == 202
        run = wait_for_run(client, timeout_s=600)
    assert run["published_version"] == 2 and versions(repository / MODEL) == [1, 2]
    config = (repository / MODEL / "config.pbtxt").read_text()
    assert "specific" not in config  # production (what Triton serves) did not move
