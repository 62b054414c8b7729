"""API keys on the gateway: every /v1 route needs a key allowed for its model and within its rate.

In-process gateway (Starlette's TestClient); no Triton is needed to be refused, and a request that
passes the key check then meets an unreachable Triton (503), which is what these tests expect.
Keys are made with the real key store (scrypt at a lower cost for speed).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.auth import KeyStore
from gateway.settings import GatewaySettings
from prodseg.processes import free_port

MODEL = "shelf_segmenter"
FAST_SCRYPT = {"n": 2**10, "r": 8, "p": 1}


@pytest.fixture
def keys(tmp_path):
    store = KeyStore(tmp_path / "keys.json", FAST_SCRYPT)
    everything, _ = store.create("retail-app", rate="1000/min")
    cracks_only, _ = store.create("crack-team", models=["crack_segmenter"])
    slow, _ = store.create("slow-client", rate="2/min")
    return store, {"everything": everything, "cracks_only": cracks_only, "slow": slow}


def gateway(tmp_path, **settings) -> TestClient:
    config = GatewaySettings(
        triton_grpc_url=f"127.0.0.1:{free_port()}",
        data_dir=tmp_path / "data",
        models=(MODEL,),
        auth_enabled=True,
        api_keys_file=str(tmp_path / "keys.json"),
        **settings,
    )
    return TestClient(create_app(config))


def test_keys_decide_who_may_call_which_model(tmp_path, keys):
    store, key = keys
    png = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
    image = {"file": ("a.png", png)}
    with gateway(tmp_path) as client:
        answers = {
            "no key": client.post(f"/v1/models/{MODEL}/images", files=image),
            "wrong key": client.post(
                f"/v1/models/{MODEL}/images", files=image, headers=bearer("psk_00_nope")
            ),
            "other model's key": client.post(
                f"/v1/models/{MODEL}/images", files=image, headers=bearer(key["cracks_only"])
            ),
            "good key": client.post(
                f"/v1/models/{MODEL}/images", files=image, headers=bearer(key["everything"])
            ),
            "X-API-Key header": client.get("/v1/models", headers={"X-API-Key": key["everything"]}),
            "default route, no key": client.post("/v1/frames", files=image),
            "health": client.get("/healthz"),
            "readiness": client.get("/readyz"),
        }
        statuses = {case: response.status_code for case, response in answers.items()}
        assert statuses == {
            "no key": 401,
            "wrong key": 401,
            "other model's key": 403,
            "good key": 503,  # past the key check; Triton is not running in this test
            "X-API-Key header": 200,
            "default route, no key": 401,
            "health": 200,
            "readiness": 503,
        }
        assert answers["no key"].json()["error"]["code"] == "missing_api_key"
        assert answers["other model's key"].json()["error"]["code"] == "model_not_allowed"
        assert "WWW-Authenticate" in answers["no key"].headers

        limited = [client.get("/v1/models", headers=bearer(key["slow"])) for _ in range(3)]
        assert [r.status_code for r in limited] == [200, 200, 429]
        assert float(limited[2].headers["retry-after"]) > 0

        store.revoke("retail-app")  # takes effect on the next request: the store file changed
        assert client.get("/v1/models", headers=bearer(key["everything"])).status_code == 401
        metrics = client.get("/metrics").text
    assert 'prodseg_api_requests_total{key="retail-app",model="shelf_segmenter",outcome="allowed"}' in metrics
    assert key["everything"] not in metrics


def test_metrics_leave_the_public_port_when_they_have_their_own(tmp_path, keys):
    with gateway(tmp_path, metrics_port=free_port()) as client:
        assert client.get("/metrics").status_code == 404
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
