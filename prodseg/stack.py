"""The embedded stack: a real Triton server plus the gateway, on 127.0.0.1, stopped by PID.

Used by ``prodseg serve``, ``prodseg demo`` and the tests. Each part is its own process, as in a
cluster: the gateway talks to Triton over gRPC, users talk to the gateway over HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prodseg.processes import (
    StartError,
    free_port,
    http_ok,
    start_child,
    stop_process_group,
    stop_process_groups,
    wait_until_ready,
)
from prodseg.triton_server import PROJECT_ROOT, TritonServer

# glibc gives threads that allocate their own malloc arenas (up to 8 per core) and keeps their
# memory: under the soak's load (video jobs run in threads) the gateway's RSS stepped up 13% after
# warm-up with the default, and stayed flat with two arenas (benchmarks/results/soak*.json).
# The gateway image sets the same (infra/images/gateway.Dockerfile); the caller's environment wins.
GATEWAY_MALLOC_ENV = {"MALLOC_ARENA_MAX": "2"}


@dataclass
class GatewayProcess:
    triton_grpc_url: str
    port: int = 0
    data_dir: Path = field(default_factory=lambda: PROJECT_ROOT / "out" / "gateway")
    env: dict[str, str] = field(default_factory=dict)
    # Imports, model contracts, drift references and Triton's readiness: seconds on a quiet machine,
    # but a fresh-clone test run on 2 loaded cores once needed about a minute.
    startup_timeout_s: float = 120.0
    # The Triton it talks to, when started beside it: if that dies while the gateway starts, the
    # gateway can never become ready, so the start fails at once instead of after the timeout.
    triton: TritonServer | None = None
    process: subprocess.Popen | None = field(default=None, init=False)
    log_path: Path | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        self.port = self.port or free_port()
        self.log_path = PROJECT_ROOT / "out" / "logs" / f"gateway-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = (
            GATEWAY_MALLOC_ENV
            | dict(os.environ)
            | self.env
            | {
                "PRODSEG_TRITON_GRPC_URL": self.triton_grpc_url,
                "PRODSEG_GATEWAY_DATA_DIR": str(self.data_dir),
            }
        )
        command = [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = start_child(command, self.log_path, cwd=PROJECT_ROOT, env=env)
        try:
            self._wait_until_ready()
        except BaseException:  # including Ctrl-C while starting: never leave the process behind
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        def ready() -> bool:
            triton = self.triton.process if self.triton is not None else None
            if triton is not None and triton.poll() is not None:
                raise StartError(f"tritonserver exited with {triton.returncode} while the gateway started")
            return http_ok(f"{self.url}/readyz")

        wait_until_ready(self.process, ready, self.startup_timeout_s, "gateway", self._log_tail)

    def _log_tail(self) -> str:
        return (
            "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:]) if self.log_path else ""
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout_s)


def serving_env(triton: TritonServer) -> dict[str, str]:
    """What the gateway needs to know about the Triton it talks to: its models and config variant."""
    return {
        "PRODSEG_MODELS": ",".join(triton.models),
        "PRODSEG_TRITON_CONFIG_NAME": triton.config_name,
        "PRODSEG_MODEL_REPOSITORY": str(Path(triton.repository).resolve()),
    }


@dataclass
class EmbeddedStack:
    """Triton, then the gateway; stopped in reverse order, also when starting fails half-way."""

    triton: TritonServer = field(default_factory=TritonServer)
    gateway_port: int = 0
    gateway_env: dict[str, str] = field(default_factory=dict)
    gateway_data_dir: Path | None = None  # None: the gateway's default (out/gateway)
    gateway_startup_timeout_s: float = 120.0
    gateway: GatewayProcess | None = field(default=None, init=False)

    def start(self) -> EmbeddedStack:
        self.triton.start()
        try:
            gateway = GatewayProcess(
                self.triton.grpc_url,
                self.gateway_port,
                env=serving_env(self.triton) | self.gateway_env,
                triton=self.triton,
            )
            if self.gateway_data_dir is not None:
                gateway.data_dir = self.gateway_data_dir
            gateway.startup_timeout_s = self.gateway_startup_timeout_s
            self.gateway = gateway.start()
        except BaseException:
            self.triton.stop()
            raise
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop both at once, bounded: SIGTERM, then SIGKILL whatever is left after ``timeout_s``."""
        running = [p.process for p in (self.gateway, self.triton) if p is not None and p.process is not None]
        if self.triton is not None:
            self.triton.note_shared_memory()
        stop_process_groups(running, timeout_s)
        if self.triton is not None:
            self.triton.remove_shared_memory()

    def supervise(
        self,
        max_restarts: int = 5,
        window_s: float = 600.0,
        poll_s: float = 1.0,
        log: Callable[[str], None] = print,
    ) -> None:
        """Keep Triton and the gateway running until interrupted: a dead one is restarted (same ports)
        with growing backoff and the reason logged; more than ``max_restarts`` deaths within
        ``window_s`` raise ``StartError``, so neither a user nor Kubernetes waits on a stack that can
        never become ready."""
        deaths: deque[float] = deque()
        backoff = 1.0
        while True:
            time.sleep(poll_s)
            for name, part in (("tritonserver", self.triton), ("gateway", self.gateway)):
                if part is None or part.process is None or part.process.poll() is None:
                    continue
                code = part.process.returncode
                now = time.monotonic()
                deaths.append(now)
                while deaths and now - deaths[0] > window_s:
                    deaths.popleft()
                if len(deaths) > max_restarts:
                    raise StartError(
                        f"{name} exited with {code}; {len(deaths)} exits within {window_s:.0f} s: giving up"
                    )
                if part is self.triton:  # a killed server's stubs leave their regions in /dev/shm
                    self.triton.remove_shared_memory()
                log(f"{name} exited with {code}; restarting it in {backoff:.0f} s")
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                try:
                    part.start()
                except StartError as error:  # stopped again by start(): counted as the next death
                    log(f"{name} did not come back: {error}")
                    continue
                log(f"{name} is back (pid {part.process.pid})")

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
