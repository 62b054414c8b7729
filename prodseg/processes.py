"""Child processes of the embedded stack: start them tied to their parent, free loopback ports,
readiness polling, stop by PID.

Every server is started with ``start_child``: its own process group (stopping it stops its children,
such as Triton's python stubs) and ``PR_SET_PDEATHSIG`` (Linux), so the kernel kills it if the process
that started it dies, even by SIGKILL: no orphaned Triton or gateway keeps ports and memory.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent's stop() is the only guard
        pass


def start_child(command: list[str], log_path, **kwargs) -> subprocess.Popen:
    """Start a server with its output in ``log_path``, in its own group, killed when its parent dies."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl; no locks taken
            **kwargs,
        )


class StartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports.

    All sockets stay bound until every port is picked: closing one before binding the next lets the
    kernel hand out the same port twice (Triton then refuses gRPC and metrics on one port).
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


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
    stop_process_groups([process], timeout_s)


def stop_process_groups(processes: list[subprocess.Popen], timeout_s: float) -> None:
    """SIGTERM every group at once, then SIGKILL what is left after ``timeout_s`` in all: bounded."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        # The leader may be gone while children of its group (python stubs) linger: kill the group.
        _signal_group(process, signal.SIGKILL, even_if_exited=True)
        process.wait()


def _signal_group(process: subprocess.Popen, signum: int, even_if_exited: bool = False) -> None:
    if process.poll() is not None and not even_if_exited:
        return
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
