"""The embedded Triton: NVIDIA's official ``tritonserver`` binary, run from the nvidia-pytriton wheel.

Only the binary is used (not PyTriton's ``bind()`` proxies), so the project's real model repository
is served exactly as the NGC image would serve it. The server runs in its own virtualenv
(``.venv-triton``) because its python backend stub needs numpy < 2 (see shared NOTES), bound to
127.0.0.1, with explicit model control, and is stopped by PID (its whole process group, which
includes the python stubs). Beside the models it loads their JPEG-wire companions (``<model>_jpeg``
and the shared ``jpeg_decoder``/``mask_encoder``, ``clients/wire.py``) when the repository has them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from clients.contract import CPU_CONFIG, default_repository
from clients.repository import discover, versions
from prodseg.processes import (
    StartError,
    free_ports,
    http_ok,
    start_child,
    stop_process_group,
    wait_until_ready,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Each python-backend stub gets a shared-memory region named on its command line. Triton unlinks them
# when it stops cleanly; a server that was killed leaves them in /dev/shm (RAM) for good.
SHM_DIRECTORY = Path("/dev/shm")
SHM_REGION = re.compile(r"triton_python_backend_shm_region_[0-9a-f-]+")


@dataclass(frozen=True)
class TritonInstall:
    """Where the server binary, its python backend and the stub's Python live."""

    venv: Path
    server_root: Path  # .../site-packages/pytriton/tritonserver
    python_version: str  # "3.11": picks the matching backend stub
    libpython_dir: Path

    @classmethod
    def find(cls, venv: Path | None = None) -> TritonInstall:
        venv = Path(venv or os.environ.get("PRODSEG_TRITON_VENV", PROJECT_ROOT / ".venv-triton"))
        python = venv / "bin" / "python"
        if not python.exists():
            raise StartError(f"no Triton environment at {venv}: run `make install` first")
        probe = (
            "import json, sys, sysconfig, pytriton, pathlib;"
            "print(json.dumps({'root': str(pathlib.Path(pytriton.__file__).parent / 'tritonserver'),"
            "'version': f'{sys.version_info[0]}.{sys.version_info[1]}',"
            "'libdir': sysconfig.get_config_var('LIBDIR')}))"
        )
        found = json.loads(subprocess.run([python, "-c", probe], check=True, capture_output=True).stdout)
        return cls(venv, Path(found["root"]), found["version"], Path(found["libdir"]))

    @property
    def binary(self) -> Path:
        return self.server_root / "bin" / "tritonserver"

    def backend_directory(self) -> Path:
        """A backends/ folder whose python backend carries the stub for this venv's Python version."""
        backends = self.venv / "prodseg-backends"
        python_backend = backends / "python"
        stub = self.server_root / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"
        if not (python_backend / stub.name).exists():
            staging = backends.with_name(backends.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(self.server_root / "backends", staging)
            shutil.copy2(stub, staging / "python" / stub.name)
            shutil.rmtree(backends, ignore_errors=True)
            staging.rename(backends)
        return backends

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The stub embeds libpython: it must load the venv interpreter's own, not Debian's 3.11.2.
        libs = [str(self.libpython_dir), str(self.server_root.parents[1] / "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), env.get("PATH", "")])
        env.pop("PYTHONPATH", None)  # the stub must see the Triton venv, not the caller's
        return env


@dataclass
class TritonServer:
    """Start/stop one embedded server. Use as a context manager; ports 0 pick free ones."""

    repository: Path = field(default_factory=default_repository)
    models: tuple[str, ...] = ()  # () = every model of the repository whose contract holds
    jpeg_wire: bool = True  # also load the models' JPEG-wire companions the repository holds
    config_name: str = CPU_CONFIG
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    log_path: Path | None = None
    startup_timeout_s: float = 120.0
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = field(default=None, init=False)
    refused: dict[str, str] = field(default_factory=dict, init=False)
    companions: tuple[str, ...] = field(default=(), init=False)  # helpers loaded beside the models
    shm_regions: set[str] = field(default_factory=set, init=False)  # its stubs' regions in /dev/shm

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> TritonServer:
        install = TritonInstall.find()
        found = discover(self.repository)
        if not self.models:
            self.refused = dict(found.errors)  # reported by `prodseg serve`; the other models still load
            for name in found.contracts:
                if not versions(Path(self.repository) / name):
                    self.refused[name] = f"{name}: no published version to serve"
            self.models = tuple(name for name in found.contracts if name not in self.refused)
        if self.jpeg_wire:
            self.companions = found.companions_of(self.models)
        spare = iter(free_ports(3))
        self.http_port, self.grpc_port, self.metrics_port = (
            port or next(spare) for port in (self.http_port, self.grpc_port, self.metrics_port)
        )
        if self.log_path is None:
            self.log_path = PROJECT_ROOT / "out" / "logs" / f"triton-{self.http_port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            str(install.binary),
            f"--model-repository={Path(self.repository).resolve()}",
            f"--backend-directory={install.backend_directory()}",
            "--model-control-mode=explicit",
            *[f"--load-model={model}" for model in (*self.models, *self.companions)],
            f"--model-config-name={self.config_name}",
            "--exit-on-error=false",  # a model that fails to load is reported, not a dead server
            "--strict-readiness=true",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-cpu-metrics=true",
            *self.extra_args,
        ]
        # Its own process group: stopping it stops the python stubs too.
        self.process = start_child(command, self.log_path, env=install.environment())
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        def ready(model: str) -> bool:
            return http_ok(f"http://{self.http_url}/v2/models/{model}/ready")

        def models_ready() -> bool:
            return all(ready(model) for model in self.models)

        wait_until_ready(self.process, models_ready, self.startup_timeout_s, "tritonserver", self.log_tail)
        self.note_shared_memory()
        # Startup loads finish before the server answers, so a companion not ready now failed to load
        # (e.g. no OpenCV in the stub's environment): the models serve raw, and serve reports it.
        for name in [name for name in self.companions if not ready(name)]:
            self.refused[name] = f"{name}: did not load, so the JPEG wire is off (see {self.log_path})"
        self.companions = tuple(name for name in self.companions if name not in self.refused)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the server's process group, then SIGKILL whatever is left after ``timeout_s``; then
        remove its stubs' shared memory, which only a clean exit removes itself."""
        if self.process is not None:
            self.note_shared_memory()  # stubs of models loaded since start (a rollout's new version)
            stop_process_group(self.process, timeout_s)
            self.remove_shared_memory()

    def remove_shared_memory(self) -> None:
        """Once the server is gone: unlink what its stubs left in /dev/shm (nothing after a clean exit)."""
        for name in self.shm_regions:
            (SHM_DIRECTORY / name).unlink(missing_ok=True)
        self.shm_regions.clear()

    def note_shared_memory(self) -> None:
        """Remember the shared-memory regions of the server's running stubs (named on their command lines)."""
        if self.process is None:
            return
        try:
            server = psutil.Process(self.process.pid)
            processes = [server, *server.children(recursive=True)]
        except psutil.NoSuchProcess:  # killed: the regions noted at start are what is left to remove
            return
        for process in processes:
            try:
                self.shm_regions.update(SHM_REGION.findall(" ".join(process.cmdline())))
            except psutil.Error:
                continue

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


if __name__ == "__main__":  # python -m prodseg.triton_server: serve until Ctrl-C (handy for debugging)
    with TritonServer(http_port=8000, grpc_port=8001, metrics_port=8002) as server:
        print(f"Triton ready: http {server.http_url}, grpc {server.grpc_url}", file=sys.stderr)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
