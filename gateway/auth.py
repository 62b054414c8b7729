"""API keys and per-key rate limits for the gateway.

- A key is ``psk_<id>_<secret>``: ``id`` (8 hex digits) finds its record, ``secret`` comes from
  ``secrets.token_urlsafe``. It is shown once, at creation; the store keeps only a salted scrypt
  hash, so a leaked store file leaks no keys.
- The store is one JSON file (``PRODSEG_API_KEYS_FILE``), written atomically by
  :class:`KeyStore` (``prodseg keys create|list|revoke``). The gateway re-reads it whenever its
  inode, size or mtime changes, so a revoked key stops working on its next request.
- :class:`Authenticator` answers ``authorize(header_value, model_name) -> KeyInfo`` or raises
  :class:`AuthError` with the HTTP status: 401 (missing or wrong key), 403 (key without scope for
  the model), 429 (over the key's token bucket; ``retry_after`` seconds). scrypt costs tens of
  milliseconds, so a verified key is cached for the process (as a SHA-256 digest, never the key);
  the cache is emptied whenever the store changes.
- Per-key counters ``prodseg_api_requests_total{key, model, outcome}`` carry the key's NAME.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from clients.atomic import write_text
from gateway.errors import ApiError

KEYS_FILE_ENV = "PRODSEG_API_KEYS_FILE"
KEY_PREFIX = "psk"
DEFAULT_RATE = "60/min"
STORE_SCHEMA = 1
# scrypt cost: n=2**14, r=8 is ~16 MB and tens of ms per hash, the interactive-login setting.
SCRYPT = {"n": 2**14, "r": 8, "p": 1}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PERIODS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


class AuthError(ApiError):
    """A refused request: ``status`` 401, 403, 429 (or 503: the store is unreadable).

    An ``ApiError``, so raised from a route or dependency it becomes the gateway's JSON error body
    with ``WWW-Authenticate`` (401) or ``Retry-After`` (429) headers.
    """

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        headers = {}
        if status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        elif retry_after is not None:
            headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
        super().__init__(status, code, message, headers)

    @property
    def status(self) -> int:
        return self.status_code


@dataclass(frozen=True)
class Rate:
    """``requests`` per ``period_s`` seconds: a token bucket of that size, refilled evenly."""

    requests: int
    period_s: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+)\s*", text)
        if not match or match[2] not in _PERIODS or int(match[1]) < 1:
            raise ValueError(f"rate {text!r} is not like '60/min' (periods: s, min, h)")
        return cls(int(match[1]), float(_PERIODS[match[2]]))

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.period_s)
        return f"{self.requests}/{unit}" if unit else f"{self.requests}/{self.period_s:g}s"


@dataclass(frozen=True)
class KeyInfo:
    """What a verified key may do. ``models`` None means every model."""

    key_id: str
    name: str
    models: tuple[str, ...] | None
    rate: Rate
    created: str

    def allows(self, model_name: str | None) -> bool:
        return self.models is None or model_name is None or model_name in self.models

    def to_dict(self) -> dict:
        models = list(self.models) if self.models is not None else None
        return {"name": self.name, "models": models, "rate": str(self.rate), "created": self.created}


# --- the store file ---


@dataclass(frozen=True)
class _Record:
    info: KeyInfo
    salt: bytes
    digest: bytes
    kdf: dict


class KeyStore:
    """The key store file: create, list and revoke keys (each change is one atomic rewrite)."""

    def __init__(self, path: Path | str, scrypt: Mapping[str, int] | None = None) -> None:
        self.path = Path(path)
        self.scrypt = dict(scrypt or SCRYPT)  # tests lower the cost; each record keeps its own

    @classmethod
    def from_env(cls) -> KeyStore:
        path = os.environ.get(KEYS_FILE_ENV)
        if not path:
            raise ValueError(f"set {KEYS_FILE_ENV} to the key store file (or pass --file)")
        return cls(path)

    def create(
        self, name: str, models: list[str] | None = None, rate: str = DEFAULT_RATE
    ) -> tuple[str, KeyInfo]:
        """A new key: returns (the key, shown once and never stored, its info)."""
        if not _NAME.match(name):
            raise ValueError(f"key name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        if models is not None and (not models or not all(_NAME.match(m) for m in models)):
            raise ValueError(f"model scopes {models!r} must be non-empty model names")
        key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        created = datetime.now(UTC).isoformat(timespec="seconds")
        info = KeyInfo(key_id, name, tuple(models) if models is not None else None, Rate.parse(rate), created)
        salt = secrets.token_bytes(16)
        record = _Record(info, salt, _hash(key, salt, self.scrypt), dict(self.scrypt))
        with self._locked():
            records = self._read()
            if any(r.info.name == name for r in records):
                raise ValueError(f"a key named {name!r} exists: revoke it first or pick another name")
            self._write([*records, record])
        return key, info

    def list(self) -> list[KeyInfo]:
        return [record.info for record in self._read()]

    def revoke(self, name: str) -> KeyInfo:
        with self._locked():
            records = self._read()
            found = [r for r in records if r.info.name == name]
            if not found:
                known = ", ".join(r.info.name for r in records) or "none"
                raise KeyError(f"no key named {name!r}; keys: {known}")
            self._write([r for r in records if r.info.name != name])
        return found[0].info

    @contextlib.contextmanager
    def _locked(self):
        """One writer at a time (two `prodseg keys create` at once would otherwise lose a key)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f".{self.path.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read(self) -> list[_Record]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return _parse_store(text, self.path)

    def _write(self, records: list[_Record]) -> None:
        keys = [
            record.info.to_dict()
            | {
                "id": record.info.key_id,
                "salt": record.salt.hex(),
                "hash": record.digest.hex(),
                "kdf": record.kdf,
            }
            for record in records
        ]
        write_text(
            self.path, json.dumps({"schema": STORE_SCHEMA, "keys": keys}, indent=2) + "\n", durable=True
        )
        os.chmod(self.path, 0o600)  # hashes only, but nobody else needs to read it


def _parse_store(text: str, path: Path) -> list[_Record]:
    try:
        data = json.loads(text)
        if data.get("schema") != STORE_SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r} is not {STORE_SCHEMA}")
        records = []
        for item in data["keys"]:
            models = tuple(item["models"]) if item["models"] is not None else None
            info = KeyInfo(item["id"], item["name"], models, Rate.parse(item["rate"]), item["created"])
            kdf = {k: int(v) for k, v in item["kdf"].items()}
            records.append(_Record(info, bytes.fromhex(item["salt"]), bytes.fromhex(item["hash"]), kdf))
        return records
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"key store {path} is malformed: {error}") from error


def _hash(key: str, salt: bytes, kdf: Mapping[str, int]) -> bytes:
    return hashlib.scrypt(key.encode(), salt=salt, n=kdf["n"], r=kdf["r"], p=kdf["p"], maxmem=2**26, dklen=32)


# --- the gateway side ---


class _TokenBucket:
    def __init__(self, rate: Rate, now: float) -> None:
        self.capacity = float(rate.requests)
        self.refill_per_s = rate.requests / rate.period_s
        self.tokens, self.updated = self.capacity, now

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.refill_per_s)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.refill_per_s


class Authenticator:
    """Checks ``Authorization: Bearer <key>`` / ``X-API-Key`` values against the key store file."""

    def __init__(
        self,
        store_path: Path | str,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store_path = Path(store_path)
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._records: dict[str, _Record] = {}
        self._verified: dict[bytes, str] = {}  # sha256(key) -> key id, for keys that passed scrypt
        self._buckets: dict[str, _TokenBucket] = {}
        self.requests = Counter(
            "prodseg_api_requests",
            "API requests by key name and outcome (allowed, unauthorized, forbidden, rate_limited)",
            ["key", "model", "outcome"],
            registry=registry if registry is not None else CollectorRegistry(),
        )

    @classmethod
    def from_env(cls, registry: CollectorRegistry | None = None) -> Authenticator | None:
        """The authenticator for ``PRODSEG_API_KEYS_FILE``, or None when it is unset (auth off)."""
        path = os.environ.get(KEYS_FILE_ENV)
        return cls(path, registry) if path else None

    @staticmethod
    def key_from_headers(headers: Mapping[str, str]) -> str | None:
        """The header value carrying the key: ``Authorization`` (Bearer) first, then ``X-API-Key``."""
        lowered = {k.lower(): v for k, v in headers.items()}
        return lowered.get("authorization") or lowered.get("x-api-key")

    def authorize(self, header_value: str | None, model_name: str | None = None) -> KeyInfo:
        """The key's info, or ``AuthError`` (401, 403, 429). ``model_name`` None: a model-less route."""
        model = model_name or ""
        key = _strip_scheme(header_value)
        if not key:
            self.requests.labels("", model, "unauthorized").inc()
            raise AuthError(
                401, "missing_api_key", "send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        record = self._verify(key)
        if record is None:
            self.requests.labels("", model, "unauthorized").inc()
            raise AuthError(401, "invalid_api_key", "the API key is not valid (wrong, or revoked)")
        info = record.info
        if not info.allows(model_name):
            self.requests.labels(info.name, model, "forbidden").inc()
            raise AuthError(403, "model_not_allowed", f"key {info.name!r} may not use model {model_name!r}")
        with self._lock:
            bucket = self._buckets.setdefault(info.key_id, _TokenBucket(info.rate, self._clock()))
            wait = bucket.take(self._clock())
        if wait > 0:
            self.requests.labels(info.name, model, "rate_limited").inc()
            raise AuthError(429, "rate_limited", f"key {info.name!r} is over {info.rate}", retry_after=wait)
        self.requests.labels(info.name, model, "allowed").inc()
        return info

    def _verify(self, key: str) -> _Record | None:
        digest = hashlib.sha256(key.encode()).digest()
        with self._lock:
            self._reload_if_changed()
            if (key_id := self._verified.get(digest)) is not None:
                return self._records.get(key_id)
            parts = key.split("_", 2)
            record = self._records.get(parts[1]) if len(parts) == 3 and parts[0] == KEY_PREFIX else None
        # scrypt (tens of ms) runs outside the lock, so other keys' requests do not wait for it.
        if record is None or not hmac.compare_digest(_hash(key, record.salt, record.kdf), record.digest):
            return None
        with self._lock:
            current = self._records.get(record.info.key_id)
            if current is None or current.digest != record.digest:
                return None  # revoked while it was being hashed
            self._verified[digest] = current.info.key_id
        return current

    def _reload_if_changed(self) -> None:
        try:
            status = os.stat(self.store_path)
            stamp = (status.st_ino, status.st_size, status.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and self._stamp is not None:
            return
        try:
            records = _parse_store(self.store_path.read_text(), self.store_path) if stamp else []
        except (OSError, ValueError) as error:  # fail closed: no key can be checked, none passes
            self._records, self._stamp = {}, None
            self._verified.clear()
            raise AuthError(503, "key_store_unreadable", f"API keys cannot be checked: {error}") from error
        self._records = {record.info.key_id: record for record in records}
        self._verified.clear()  # a revoked key must pass scrypt again, which it cannot
        self._buckets = {k: b for k, b in self._buckets.items() if k in self._records}
        self._stamp = stamp


def _strip_scheme(header_value: str | None) -> str:
    value = (header_value or "").strip()
    scheme, _, rest = value.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else value
