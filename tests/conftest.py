"""Shared fixtures: a generated shelf video with ground truth, and the real embedded stack.

The Triton-backed fixtures are session-scoped: one real server (and one gateway process) serves
every test that needs it, and both are stopped by PID when the session ends.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.contract import ModelContract
from prodseg.stack import GatewayProcess, serving_env
from prodseg.triton_server import TritonServer

# Each scratch repository a test publishes into gets its own MLflow registry beside it; an exported
# MLFLOW_TRACKING_URI would make them all share one, and their version numbers collide.
os.environ.pop("MLFLOW_TRACKING_URI", None)

# The committed default model reliably scores ~0.8 on generated shelf video; a broken pipeline
# (wrong channel order, misaligned frames, resizing bugs) falls far below this.
MIOU_FLOOR = 0.6


def copy_model(model: str, destination: Path, keep_versions: tuple[str, ...] = ("1",), ignore=()) -> Path:
    """The checkout's ``model`` folder copied to ``destination`` with only ``keep_versions``: tests build
    on version 1 and add versions of their own, whatever the checkout has published since."""
    from clients.contract import default_repository

    source = default_repository() / model

    def skipped(folder: str, names: list[str]) -> list[str]:
        later = [n for n in names if n.isdigit() and n not in keep_versions] if Path(folder) == source else []
        return [*later, *(n for n in names if n == "__pycache__" or n in ignore)]

    shutil.copytree(source, destination, symlinks=True, ignore=skipped)
    return destination


def wait_for_job(client, job_id: str, timeout_s: float = 120) -> dict:
    """Poll ``GET /v1/videos/{id}`` (httpx or Starlette test client) until the job ends."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/videos/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not finish in {timeout_s} s")


@dataclass(frozen=True)
class ShelfVideo:
    video: Path
    masks: Path
    frames: int


FLAGSHIP = "shelf_segmenter"  # the generated test videos are shelves


@pytest.fixture(scope="session")
def contract() -> ModelContract:
    """The shelf model's contract: the fixtures' videos and scenes are shelves."""
    return ModelContract.load(FLAGSHIP)


@pytest.fixture(scope="session")
def shelf_video(tmp_path_factory: pytest.TempPathFactory, contract: ModelContract) -> ShelfVideo:
    from datagen.shelves import write_pan_video

    directory = tmp_path_factory.mktemp("shelf_video")
    video, masks = directory / "shelf.mp4", directory / "shelf_masks.zip"
    write_pan_video(video, masks, seed=11, num_frames=48, height=contract.height, width=contract.width)
    return ShelfVideo(video, masks, 48)


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> TritonServer:
    server = TritonServer(log_path=tmp_path_factory.mktemp("triton") / "triton.log")
    with server:
        yield server


@pytest.fixture(scope="session")
def gateway(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    # POST /v1/models/{m}/retrain (schemathesis calls it) runs a stand-in, never a real training run
    # into this checkout's repository; tests/gateway/test_retrain.py covers real runs in scratch ones.
    policies = tmp_path_factory.mktemp("retrain") / "policies.json"
    stand_in = f"{sys.executable} -c \"print('stand-in training run (tests): nothing is trained')\""
    policies.write_text(json.dumps({"*": {"command": stand_in}}))
    env = serving_env(triton) | {"PRODSEG_RETRAIN_POLICIES": str(policies)}
    process = GatewayProcess(triton.grpc_url, data_dir=tmp_path_factory.mktemp("gateway-data"), env=env)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def tools():
    """The chart and infrastructure tools `make tools` installed (tests/charts, tests/infra)."""
    from tests.charts.toolbox import find_tools

    return find_tools()


@pytest.fixture(scope="session")
def objects(tools) -> list[dict]:
    """The chart rendered with its default values (the production shape)."""
    from tests.charts.toolbox import render

    return render()
