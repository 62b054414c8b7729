"""gateway.web without a browser or Triton: the live socket's refusals, frame checks and runs; page config."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from gateway.app import create_app
from gateway.auth import KeyStore
from gateway.settings import GatewaySettings
from gateway.web import _class_runs

FAST_SCRYPT = {"n": 2**10, "r": 8, "p": 1}


@pytest.fixture
def client(tmp_path, monkeypatch):
    def make(auth_key_store: KeyStore | None = None) -> TestClient:
        if auth_key_store is not None:
            monkeypatch.setenv("PRODSEG_AUTH_ENABLED", "true")
            monkeypatch.setenv("PRODSEG_API_KEYS_FILE", str(auth_key_store.path))
        settings = GatewaySettings(data_dir=tmp_path / "data", triton_grpc_url="127.0.0.1:9")
        return TestClient(create_app(settings))

    return make


def test_class_runs_rebuild_the_mask_row_major():
    mask = np.array([[0, 0, 1], [1, 2, 2]], np.uint8)
    runs = _class_runs(mask)
    assert runs == [0, 2, 1, 2, 2, 2]
    rebuilt = np.repeat(runs[0::2], runs[1::2]).reshape(mask.shape)
    assert (rebuilt == mask).all()


def test_an_unknown_model_is_refused_with_the_json_error_and_a_4404_close(client):
    with client() as http, http.websocket_connect("/v1/models/nope/live") as socket:
        answer = socket.receive_json()
        assert answer["status"] == 404 and answer["error"]["code"] == "model_not_found"
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert closed.value.code == 4404


def test_a_frame_that_is_not_an_image_gets_an_error_and_the_stream_goes_on(client):
    with client() as http, http.websocket_connect("/v1/models/shelf_segmenter/live") as socket:
        socket.send_bytes(b"not a jpeg")
        first = socket.receive_json()
        socket.send_bytes(b"\xff\xd8 still not")
        second = socket.receive_json()
    assert first["error"]["code"] == second["error"]["code"] == "not_an_image"
    assert "latency_ms" in first and first["dropped"] == 0


def test_with_keys_on_the_first_message_must_carry_a_valid_key(client, tmp_path):
    store = KeyStore(tmp_path / "keys.json", scrypt=FAST_SCRYPT)
    key, _ = store.create("camera")
    with client(store) as http:
        with http.websocket_connect("/v1/models/shelf_segmenter/live") as socket:
            socket.send_text(json.dumps({"api_key": "psk_00000000_wrong"}))
            answer = socket.receive_json()
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
        assert answer["status"] == 401 and answer["error"]["code"] == "invalid_api_key"
        assert closed.value.code == 1008
        with http.websocket_connect("/v1/models/shelf_segmenter/live") as socket:
            socket.send_text(json.dumps({"api_key": key}))
            socket.send_bytes(b"not a jpeg")  # accepted: the frame itself is what fails
            assert socket.receive_json()["error"]["code"] == "not_an_image"


def test_the_page_config_names_grafana_only_when_configured(client, monkeypatch):
    with client() as http:
        assert http.get("/ui/config.json").json() == {"grafana_url": None}
        monkeypatch.setenv("PRODSEG_GRAFANA_URL", "https://grafana.example/d/prodseg")
        assert http.get("/ui/config.json").json() == {"grafana_url": "https://grafana.example/d/prodseg"}
        assert "/ui/config.json" not in http.get("/openapi.json").json()["paths"]
