"""Child processes of the embedded stack: free loopback ports, readiness polling, stop by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable


class StartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_until_ready(
    process: subprocess.Popen,
    is_ready: Callable[[], bool],
    timeout_s: float,
    name: str,
    log_tail: Callable[[], str],
) -> None:
    """Poll ``is_ready`` until it holds; fail fast, with the log, if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(f"{name} exited with {process.returncode}:\n{log_tail()}")
        if is_ready():
            return
        time.sleep(0.2)
    raise StartError(f"{name} not ready after {timeout_s:.0f} s:\n{log_tail()}")


def stop_process_group(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM the process's group (it was started with ``start_new_session``), SIGKILL after a timeout."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
