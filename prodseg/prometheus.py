"""A real Prometheus on 127.0.0.1 with a throw-away TSDB: scrapes the embedded stack, answers PromQL.

Used by load runs (so their reports carry server-side series) and by the monitoring tests (which
check the chart's recording rules against real Triton and gateway metrics). The binary comes from
Debian's prometheus package, unpacked into .tools/bin by ``make tools``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from prodseg.processes import free_port, http_ok, stop_process_group, wait_until_ready
from prodseg.triton_server import PROJECT_ROOT


def find_prometheus() -> Path:
    for candidate in (PROJECT_ROOT / ".tools" / "bin" / "prometheus", shutil.which("prometheus")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise FileNotFoundError("prometheus is not installed: run `make tools`")


@dataclass
class PrometheusServer:
    """``targets`` maps a job name to a metrics URL (``http://127.0.0.1:8002/metrics``).

    ``target_labels`` adds static labels per job, e.g. the ``namespace``/``pod`` labels the Prometheus
    Operator would attach in a cluster, so the chart's rules see the same label set here.
    """

    targets: dict[str, str]
    rule_files: list[Path] = field(default_factory=list)
    target_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    scrape_interval_s: float = 1.0
    port: int = 0
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        self.port = self.port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="prodseg-prometheus-"))
        config = self._dir / "prometheus.yml"
        config.write_text(json.dumps(self._config()))  # JSON is YAML
        self._log = self._dir / "prometheus.log"
        with open(self._log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    str(find_prometheus()),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self._dir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until_ready(
                self.process, lambda: http_ok(f"{self.url}/-/ready"), 30, "prometheus", self._log_tail
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _config(self) -> dict:
        interval = f"{self.scrape_interval_s:g}s"
        scrape_configs = []
        for job, url in self.targets.items():
            parts = urlsplit(url)
            labels = self.target_labels.get(job, {})
            scrape_configs.append(
                {
                    "job_name": job,
                    "metrics_path": parts.path or "/metrics",
                    "static_configs": [{"targets": [parts.netloc], "labels": labels}],
                }
            )
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(Path(f).resolve()) for f in self.rule_files],
            "scrape_configs": scrape_configs,
        }

    def _log_tail(self) -> str:
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-20:])

    def query(self, promql: str) -> list[dict]:
        """Instant query: the result vector, each item ``{"metric": {...}, "value": [t, "v"]}``."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        if body["status"] != "success":
            raise RuntimeError(f"PromQL {promql!r} failed: {body}")
        return body["data"]["result"]

    def wait_for(self, promql: str, timeout_s: float = 30.0) -> list[dict]:
        """Poll until ``promql`` returns a non-empty vector (first scrapes and rule runs take seconds)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if result := self.query(promql):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"no series for {promql!r} after {timeout_s:.0f} s")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, 10)
        shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
