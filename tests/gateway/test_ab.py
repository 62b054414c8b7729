"""A/B tests between two versions of one model, on a real Triton serving both, driven by the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter

import cv2
import httpx
import pytest

from clients.contract import default_repository
from prodseg.stack import GatewayProcess, serving_env
from prodseg.triton_server import TritonServer
from tests.conftest import copy_model

pytestmark = pytest.mark.triton
MODEL = "shelf_segmenter"


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """A repository whose shelf model has versions 1 and 2 (the same weights: this tests the routing)."""
    repository = tmp_path_factory.mktemp("ab-repository")
    source = default_repository()
    shutil.copy2(source / "onnx_runner.py", repository / "onnx_runner.py")
    copy_model(MODEL, repository / MODEL)
    shutil.copytree(repository / MODEL / "1", repository / MODEL / "2", symlinks=True)
    triton = TritonServer(repository=repository, models=(MODEL,), log_path=repository / "triton.log")
    with triton:
        gateway = GatewayProcess(
            triton.grpc_url, data_dir=repository / "data", env=serving_env(triton)
        ).start()
        try:
            yield repository, triton, gateway
        finally:
            gateway.stop()


def ab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prodseg.cli", "ab", *args], capture_output=True, text=True, timeout=120
    )


def test_a_split_is_sticky_per_client_and_reported_per_version(two_versions):
    from datagen.shelves import render_scene

    repository, triton, gateway = two_versions
    common = [
        "--model",
        MODEL,
        "--gateway",
        gateway.url,
        "--triton-http",
        triton.http_url,
        "--repository",
        str(repository),
    ]
    started = ab("start", "--split", "1=30,2=70", *common)
    assert started.returncode == 0, started.stderr
    png = cv2.imencode(".png", cv2.cvtColor(render_scene(1, 192, 320).image, cv2.COLOR_RGB2BGR))[1].tobytes()
    seen: dict[str, set[str]] = {}
    # Each test id hashes the clients anew: with 100 clients at 30/70, version 1 getting as many as
    # version 2 has a chance of about 1 in 45,000 (with 30 clients it was 1 in 59: a fresh-clone run met it).
    clients = 100
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for _ in range(2):
            for i in range(clients):
                response = client.post(
                    f"/v1/models/{MODEL}/images",
                    files={"file": ("a.png", png)},
                    headers={"X-Client-Id": f"c{i}"},
                )
                assert response.status_code == 200, response.text
                seen.setdefault(f"c{i}", set()).add(response.headers["x-model-version"])
        assert all(len(versions) == 1 for versions in seen.values())  # sticky
        shares = Counter(next(iter(v)) for v in seen.values())
        assert set(shares) == {"1", "2"} and shares["2"] > shares["1"]  # both served, weighted

        report = client.get(f"/v1/models/{MODEL}/ab").json()
        assert report["weights"] == {"1": 30, "2": 70}
        assert sum(v["requests"] for v in report["versions"].values()) == 2 * clients
        for version in ("1", "2"):
            entry = report["versions"][version]
            assert entry["latency_ms"]["p95"] > 0 and entry["prediction_mix"]
        assert set(report["tests"]) >= {"prediction_mix", "confidence", "accuracy"}
        metrics = client.get("/metrics").text
        assert f'prodseg_gateway_predictions_total{{model="{MODEL}",version="1"}}' in metrics

        bad = client.put(f"/v1/models/{MODEL}/ab", json={"weights": {"1": 50, "2": 40}})
        assert bad.status_code == 422 and "sum to 100" in bad.json()["error"]["message"]
        bad = client.put(f"/v1/models/{MODEL}/ab", json={"weights": {"1": 50, "3": 50}})
        assert bad.status_code == 422 and "not loaded by Triton" in bad.json()["error"]["message"]

    stopped = ab("stop", "--keep", "2", *common)
    assert stopped.returncode == 0, stopped.stderr
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        assert client.get(f"/v1/models/{MODEL}/ab").status_code == 404
        response = client.post(f"/v1/models/{MODEL}/images", files={"file": ("a.png", png)})
        assert response.headers["x-model-version"] == "2"
    index = httpx.post(f"http://{triton.http_url}/v2/repository/index", json={"ready": True}).json()
    assert [m["version"] for m in index if m["name"] == MODEL] == ["2"]


def test_a_split_over_versions_triton_does_not_serve_is_refused(two_versions):
    repository, triton, gateway = two_versions
    result = ab(
        "start",
        "--model",
        MODEL,
        "--split",
        "1=50,9=50",
        "--gateway",
        gateway.url,
        "--triton-http",
        triton.http_url,
        "--repository",
        str(repository),
    )
    assert result.returncode == 2 and "no published version [9]" in result.stderr


def test_a_split_set_by_the_deployment_is_the_same_on_every_replica(tmp_path):
    from gateway.ab import ABTests
    from gateway.store import GatewayStore

    configured = {MODEL: {"1": 50, "2": 50}}
    replicas = [ABTests(GatewayStore(tmp_path / f"r{i}.sqlite")) for i in range(2)]
    for tests in replicas:
        tests.start_configured(configured)
    subjects = [f"client-{i}" for i in range(50)]
    first, second = ([tests.version_for(MODEL, s) for s in subjects] for tests in replicas)
    assert first == second and set(first) == {"1", "2"}
    with pytest.raises(ValueError, match="sum to 100"):
        replicas[0].start_configured({MODEL: {"1": 50, "2": 20}})
