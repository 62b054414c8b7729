"""API keys: shown once, stored as salted hashes, scoped to models, rate-limited per key, revoked at
once (also for a client that was being rate-limited), counted per key name, fast once verified."""

from __future__ import annotations

import json
import os

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

import gateway.auth
from gateway.auth import Authenticator, AuthError, KeyInfo, KeyStore, Rate
from gateway.errors import install_error_handlers

FAST_SCRYPT = {"n": 2**10, "r": 8, "p": 1}  # the tests' cost; the store's default is n=2**14


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path) -> KeyStore:
    return KeyStore(tmp_path / "keys.json", scrypt=FAST_SCRYPT)


def refused(auth: Authenticator, header: str | None, model: str | None = "shelf_segmenter") -> AuthError:
    with pytest.raises(AuthError) as caught:
        auth.authorize(header, model)
    return caught.value


def test_keys_are_stored_only_as_salted_hashes(store):
    key_a, info = store.create("camera-1")
    key_b, _ = store.create("camera-2")
    text = store.path.read_text()
    assert key_a not in text and key_b not in text and key_a.split("_", 2)[2] not in text
    records = json.loads(text)["keys"]
    assert len({r["salt"] for r in records}) == 2 and len({r["hash"] for r in records}) == 2
    assert oct(os.stat(store.path).st_mode & 0o777) == "0o600"
    assert [k.name for k in store.list()] == ["camera-1", "camera-2"]
    assert info.rate == Rate(60, 60.0) and info.models is None


def test_concurrent_creates_keep_every_key(store):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(store.create, [f"cam-{i}" for i in range(8)]))
    assert sorted(k.name for k in store.list()) == [f"cam-{i}" for i in range(8)]


def test_bearer_and_x_api_key_headers_both_work(store):
    key, _ = store.create("cam")
    auth = Authenticator(store.path)
    assert auth.authorize(f"Bearer {key}", "shelf_segmenter").name == "cam"
    assert auth.authorize(key, "shelf_segmenter").name == "cam"  # the X-API-Key value
    assert Authenticator.key_from_headers({"X-API-Key": key}) == key
    assert (
        Authenticator.key_from_headers({"authorization": f"Bearer {key}", "x-api-key": "other"})
        == f"Bearer {key}"
    )


def test_missing_and_wrong_keys_are_401(store):
    key, _ = store.create("cam")
    auth = Authenticator(store.path)
    assert refused(auth, None).status == 401 and refused(auth, None).code == "missing_api_key"
    assert refused(auth, "Bearer ").code == "missing_api_key"
    wrong_secret = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for bad in (wrong_secret, "psk_00000000_nope", "not-a-key", key + "x"):
        error = refused(auth, f"Bearer {bad}")
        assert (error.status, error.code) == (401, "invalid_api_key")
        assert error.headers == {"WWW-Authenticate": "Bearer"}


def test_scopes_limit_a_key_to_its_models(store):
    key, _ = store.create("cracks-only", models=["crack_segmenter"])
    auth = Authenticator(store.path)
    assert auth.authorize(key, "crack_segmenter").name == "cracks-only"
    error = refused(auth, key, "shelf_segmenter")
    assert (error.status, error.code) == (403, "model_not_allowed")
    assert "shelf_segmenter" in error.message


def test_token_bucket_limits_each_key_and_says_when_to_retry(store):
    clock = Clock()
    key_a, _ = store.create("a", rate="3/min")
    key_b, _ = store.create("b", rate="3/min")
    auth = Authenticator(store.path, clock=clock)
    for _ in range(3):
        auth.authorize(key_a, "m")
    error = refused(auth, key_a, "m")
    assert error.status == 429 and error.retry_after == pytest.approx(20.0)
    assert error.headers == {"Retry-After": "20"}
    assert auth.authorize(key_b, "m").name == "b"  # another key has its own bucket
    clock.now += 20.0  # one token refilled (3 per 60 s)
    auth.authorize(key_a, "m")
    assert refused(auth, key_a, "m").status == 429


def test_revoked_key_stops_at_once_even_while_rate_limited(store):
    clock = Clock()
    key, _ = store.create("leaked", rate="1/h")
    auth = Authenticator(store.path, clock=clock)
    auth.authorize(key, "m")
    assert refused(auth, key, "m").status == 429
    store.revoke("leaked")
    error = refused(auth, key, "m")
    assert (error.status, error.code) == (401, "invalid_api_key")  # not 429: the key is gone
    # A new key under the same name starts with a full bucket; the old key stays dead.
    new_key, _ = store.create("leaked", rate="1/h")
    assert auth.authorize(new_key, "m").name == "leaked"
    assert refused(auth, key, "m").status == 401


def test_verified_keys_are_cached_so_scrypt_runs_once_per_key(tmp_path, monkeypatch):
    store = KeyStore(tmp_path / "keys.json")  # the production scrypt cost
    key, _ = store.create("cam", rate="100000/s")
    assert json.loads(store.path.read_text())["keys"][0]["kdf"]["n"] >= 2**14  # tens of ms per hash
    hashes = []
    real_hash = gateway.auth._hash
    monkeypatch.setattr(gateway.auth, "_hash", lambda *args: hashes.append(args[0]) or real_hash(*args))
    auth = Authenticator(store.path)
    for _ in range(200):
        auth.authorize(key, "m")
    assert len(hashes) == 1, "a verified key paid scrypt again on the hot path"


def test_per_key_counters_carry_names_never_keys(store):
    registry = CollectorRegistry()
    key, _ = store.create("cam", rate="1/min")
    auth = Authenticator(store.path, registry=registry)
    auth.authorize(key, "shelf_segmenter")
    refused(auth, key, "shelf_segmenter")
    refused(auth, "Bearer nope")

    def count(**labels) -> float | None:
        return registry.get_sample_value("prodseg_api_requests_total", labels)

    assert count(key="cam", model="shelf_segmenter", outcome="allowed") == 1
    assert count(key="cam", model="shelf_segmenter", outcome="rate_limited") == 1
    assert count(key="", model="shelf_segmenter", outcome="unauthorized") == 1
    assert key not in generate_latest(registry).decode()


def test_store_errors_name_the_problem(store, tmp_path):
    store.create("cam")
    with pytest.raises(ValueError, match="a key named 'cam' exists"):
        store.create("cam")
    with pytest.raises(ValueError, match="key name 'bad name'"):
        store.create("bad name")
    with pytest.raises(ValueError, match="rate '10 per minute' is not like '60/min'"):
        store.create("other", rate="10 per minute")
    with pytest.raises(KeyError, match="no key named 'ghost'; keys: cam"):
        store.revoke("ghost")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    error = refused(Authenticator(broken), "Bearer psk_1_2")
    assert (error.status, error.code) == (503, "key_store_unreadable")
    no_file = Authenticator(tmp_path / "absent.json")
    assert refused(no_file, "Bearer psk_1_2").status == 401  # no store: no key is valid


def test_from_env_is_off_without_the_variable(monkeypatch, store):
    monkeypatch.delenv("PRODSEG_API_KEYS_FILE", raising=False)
    assert Authenticator.from_env() is None
    monkeypatch.setenv("PRODSEG_API_KEYS_FILE", str(store.path))
    assert Authenticator.from_env().store_path == store.path
    assert [str(Rate.parse(r)) for r in ("60/min", "5/s", "1000/hour")] == ["60/min", "5/s", "1000/h"]


def test_auth_errors_become_the_gateways_json_errors_with_headers(store):
    """How the gateway wires it: a sync dependency (FastAPI runs it in a thread: scrypt never blocks
    the event loop) that raises AuthError, an ApiError, turned into the shared error body."""
    key, _ = store.create("cam", models=["shelf_segmenter"], rate="1/min")
    auth = Authenticator(store.path)
    app = FastAPI()
    install_error_handlers(app)

    def api_key(request: Request, model: str):
        return auth.authorize(Authenticator.key_from_headers(request.headers), model)

    @app.post("/v1/models/{model}/frames")
    def frames(model: str, info: KeyInfo = Depends(api_key)) -> dict:  # noqa: B008 (a local dependency)
        return {"key": info.name}

    client = TestClient(app)
    assert client.post("/v1/models/shelf_segmenter/frames", headers={"X-API-Key": key}).json() == {
        "key": "cam"
    }
    limited = client.post("/v1/models/shelf_segmenter/frames", headers={"Authorization": f"Bearer {key}"})
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "60"
    assert limited.json()["error"]["code"] == "rate_limited"
    missing = client.post("/v1/models/shelf_segmenter/frames")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    other = client.post("/v1/models/crack_segmenter/frames", headers={"X-API-Key": key})
    assert other.status_code == 403 and other.json()["error"]["code"] == "model_not_allowed"
