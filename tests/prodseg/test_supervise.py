"""The embedded stack's supervisor (``EmbeddedStack.supervise``, what ``prodseg serve`` runs): a dead
part is restarted, a restart that fails counts as the next death, and too many deaths give up.

The parts here are real child processes that exit at once; the end-to-end run with a real Triton
killed by SIGKILL is tests/prodseg/test_cli.py::test_serve_restarts_a_killed_triton_and_gives_up_...
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from prodseg.processes import StartError
from prodseg.stack import EmbeddedStack


class ShortLivedPart:
    """Starts a process that exits with ``code`` at once; ``failing_restarts`` of its restarts raise
    ``StartError`` (as a Triton that is not ready in time does, after stopping its process)."""

    def __init__(self, code: int, failing_restarts: int = 0) -> None:
        self.code, self.failing_restarts = code, failing_restarts
        self.starts = 0
        self.removed_shared_memory = 0
        self.process: subprocess.Popen | None = None
        self.start_process()

    def start_process(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({self.code})"])
        self.process.wait()

    def start(self) -> ShortLivedPart:
        self.starts += 1
        self.start_process()
        if self.starts <= self.failing_restarts:
            raise StartError("tritonserver not ready after 120 s")
        return self

    def remove_shared_memory(self) -> None:
        self.removed_shared_memory += 1


def test_a_restart_that_fails_counts_as_a_death_and_too_many_deaths_give_up():
    triton = ShortLivedPart(code=3, failing_restarts=1)
    stack = EmbeddedStack(triton=triton)  # type: ignore[arg-type]
    logged: list[str] = []
    with pytest.raises(StartError, match="3 exits within 600 s: giving up"):
        stack.supervise(max_restarts=2, poll_s=0.01, log=logged.append)
    assert triton.starts == 2  # the failed restart was not retried in a loop of its own
    assert logged[:2] == ["tritonserver exited with 3; restarting it in 1 s", logged[1]]
    assert logged[1].startswith("tritonserver did not come back: tritonserver not ready after 120 s")
    assert "restarting it in 2 s" in logged[2]  # the backoff grows across failed restarts
    assert triton.removed_shared_memory == 2  # a dead server's /dev/shm regions, before each restart


def test_a_part_that_dies_is_restarted_until_the_limit():
    gateway = ShortLivedPart(code=1)
    stack = EmbeddedStack()
    stack.triton = None  # type: ignore[assignment]  # only the gateway is watched here
    stack.gateway = gateway  # type: ignore[assignment]
    logged: list[str] = []
    with pytest.raises(StartError, match="gateway exited with 1; 2 exits"):
        stack.supervise(max_restarts=1, poll_s=0.01, log=logged.append)
    assert gateway.starts == 1
    assert logged[0] == "gateway exited with 1; restarting it in 1 s"
    assert logged[1] == f"gateway is back (pid {gateway.process.pid})"
    assert len(logged) == 2


def test_a_gateway_whose_triton_dies_while_it_starts_fails_at_once(tmp_path):
    # A real gateway process; its Triton is a process that has already exited (e.g. killed mid-start).
    import time

    from prodseg.processes import free_port
    from prodseg.stack import GatewayProcess

    triton = ShortLivedPart(code=3)
    url = f"127.0.0.1:{free_port()}"  # nothing listens: the gateway would answer /readyz 503 forever
    gateway = GatewayProcess(url, data_dir=tmp_path / "data", startup_timeout_s=300, triton=triton)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(StartError, match="tritonserver exited with 3 while the gateway started"):
        gateway.start()
    assert time.monotonic() - started < 60  # not the 300 s timeout
    assert gateway.process.poll() is not None  # and the gateway it started is stopped
