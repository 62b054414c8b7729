"""Triton's HTTP model-repository API on one server: which versions are READY, (re)load a model.

The one admin client of the platform: ``prodseg rollout`` moves replicas with it, ``prodseg ab``
reloads a model after changing the versions it serves, and the registry (``prodseg deploy``,
``promote``, ``rollback``) reloads Triton after pinning a version. A locked repository API (the
chart sets ``--http-restricted-api=model-repository:admin-key=...``) needs the key in an
``admin-key`` header: pass it, or set ``TRITON_ADMIN_KEY``.

Serving side: httpx only, no training code, no torch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import httpx

ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"  # the key of a locked model-repository API, when none is passed


class TritonAdmin:
    """Triton's HTTP model-repository API on one replica (``http_url`` is ``host:port``)."""

    def __init__(self, http_url: str, admin_key: str | None = None, load_timeout_s: float = 300.0) -> None:
        """``admin_key`` None: ``$TRITON_ADMIN_KEY`` (no key when unset); "" sends none."""
        key = os.environ.get(ADMIN_KEY_ENV, "") if admin_key is None else admin_key
        headers = {"admin-key": key} if key else {}
        self.http_url = http_url.removeprefix("http://")
        self._http = httpx.Client(base_url=f"http://{self.http_url}", headers=headers, timeout=10.0)
        self.load_timeout_s = load_timeout_s

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TritonAdmin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def ready_versions(self, model: str) -> list[int]:
        """The versions of ``model`` this replica reports READY."""
        response = self._http.post("/v2/repository/index", json={})
        response.raise_for_status()
        return sorted(
            int(entry["version"])
            for entry in response.json()
            if entry.get("name") == model
            and entry.get("state") == "READY"
            and entry.get("version", "").isdigit()
        )

    def load(self, model: str) -> None:
        """Reload ``model``: Triton re-reads its config and loads/unloads versions to match it.

        Returns once Triton has answered (it answers when the load is done); raises
        ``httpx.HTTPError`` when Triton cannot be reached and RuntimeError with Triton's reason
        when it refuses or fails to load.
        """
        response = self._http.post(f"/v2/repository/models/{model}/load", timeout=self.load_timeout_s)
        if response.status_code != 200:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise RuntimeError(f"Triton at {self.http_url} could not load {model}: {message}")

    def wait_until_serving(self, model: str, expected: Sequence[int], timeout_s: float) -> None:
        """Poll until exactly ``expected`` is READY (new ones loaded, dropped ones unloaded)."""
        deadline = time.monotonic() + timeout_s
        seen: list[int] = []
        while time.monotonic() < deadline:
            seen = self.ready_versions(model)
            if seen == sorted(expected):
                return
            time.sleep(0.2)
        raise RuntimeError(
            f"Triton at {self.http_url} serves {model} versions {seen} after {timeout_s:.0f} s, "
            f"expected {sorted(expected)}"
        )
