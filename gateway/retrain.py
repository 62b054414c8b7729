"""Retraining, started by a policy per model or by hand, one run at a time per model.

A policy fires when a model has gathered ``min_new_labels`` corrections since its newest version, or
when its drift alarm has held for ``drift_sustained_s`` seconds (both off unless a policy file sets
them, so a gateway never trains by surprise); ``POST /v1/models/{model}/retrain``
starts a run by hand. A run is the training pipeline, launched:

- ``subprocess`` (the default, embedded stack): the command, in its own session, its log in the data
  volume;
- ``kubernetes``: a ``batch/v1`` Job with the same command, created with ``kubectl create -f -`` (the
  chart gives the gateway's service account the right to create Jobs in its namespace).

The pipeline publishes a new version only if its quality gate passes, and the command sets at most the
``staging`` alias: a retrain never promotes to ``production`` by itself. Runs are recorded in the
gateway store, so their status survives a restart.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clients.repository import versions
from gateway.errors import ApiError
from gateway.store import GatewayStore
from prodseg.processes import start_child, stop_process_groups

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# `prodseg retrain` (training/retrain.py): base data + the feedback's data version, gated on a
# feedback hold-out against production; it sets at most `staging`.
DEFAULT_COMMAND = "{python} -m prodseg.cli retrain --model {model} --config {config} --run-dir {run_dir}"
PUBLISHED = re.compile(r"published (\S+) version (\d+)")


@dataclass(frozen=True)
class RetrainPolicy:
    """Off by default (manual only): a deployment names its triggers in PRODSEG_RETRAIN_POLICIES."""

    min_new_labels: int = 0  # e.g. 50; 0: never by labels
    drift_sustained_s: float = 0.0  # e.g. 6 * 3600; 0: never by drift
    config: str = ""  # "": the config in training/configs/ that names the model (see training_config)
    launcher: str = "subprocess"  # or "kubernetes"
    command: str = DEFAULT_COMMAND
    image: str = ""  # kubernetes: the training image
    namespace: str = ""


@dataclass
class RetrainRun:
    id: str
    model: str
    reason: str
    status: str = "running"  # running | succeeded | failed
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    pid: int | None = None
    exit_code: int | None = None
    log: str = ""
    published_version: int | None = None
    launcher: str = "subprocess"


def load_policies(path: str | None) -> dict[str, RetrainPolicy]:
    """Policies per model from a JSON file (``{"model": {...}, "*": {...}}``); absent: the defaults."""
    if not path:
        return {}
    raw = json.loads(Path(path).read_text())
    return {model: RetrainPolicy(**values) for model, values in raw.items()}


class Retrainer:
    def __init__(
        self, store: GatewayStore, data_dir: Path, repository: Path, policies: dict[str, RetrainPolicy]
    ) -> None:
        self.store, self.repository, self.policies = store, Path(repository), policies
        self.logs = Path(data_dir) / "retrain"
        self._processes: dict[str, subprocess.Popen] = {}

    def policy(self, model: str) -> RetrainPolicy:
        return self.policies.get(model) or self.policies.get("*") or RetrainPolicy()

    def last_run(self, model: str) -> RetrainRun | None:
        stored = self.store.state(f"retrain:{model}").get(f"retrain:{model}")
        return RetrainRun(**stored) if stored else None

    def refresh(self, model: str) -> RetrainRun | None:
        """The model's last run, its status brought up to date from its process and log."""
        run = self.last_run(model)
        if run is None or run.status != "running":
            return run
        process = self._processes.get(model)
        if run.launcher == "kubernetes":
            return run  # the cluster owns it: `kubectl get job` tells its status
        if process is None:  # started by a previous gateway process, which took it along
            run.status, run.exit_code, run.finished_at = "failed", None, time.time()
            run.log = run.log or "the gateway restarted while this run was going"
        elif process.poll() is not None:
            run.exit_code, run.finished_at = process.returncode, time.time()
            run.status = "succeeded" if process.returncode == 0 else "failed"
            match = PUBLISHED.search(self._log_tail(run))
            run.published_version = int(match.group(2)) if match else None
            self._processes.pop(model, None)
        self._save(run)
        return run

    def start(self, model: str, reason: str) -> RetrainRun:
        current = self.refresh(model)
        if current is not None and current.status == "running":
            raise ApiError(409, "retrain_running", f"a retrain of {model} is running: {current.id}")
        policy = self.policy(model)
        config = policy.config.format(model=model) or training_config(model)
        if not config or not ((PROJECT_ROOT / config).is_file() or Path(config).is_file()):
            raise ApiError(
                422, "no_training_config", f"no training config {config or '(none names it)'} for {model}"
            )
        run = RetrainRun(uuid.uuid4().hex[:12], model, reason, launcher=policy.launcher)
        run_dir = PROJECT_ROOT / "out" / "runs" / f"retrain-{model}-{run.id}"
        command = policy.command.format(python=sys.executable, config=config, run_dir=run_dir, model=model)
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{run.id}.log"
        if policy.launcher == "kubernetes":
            manifest = kubernetes_job(run, shlex.split(command), policy)
            result = subprocess.run(
                ["kubectl", "create", "-f", "-"], input=json.dumps(manifest), capture_output=True, text=True
            )
            log_path.write_text(result.stdout + result.stderr)
            if result.returncode != 0:
                raise ApiError(502, "retrain_not_started", f"kubectl create failed: {result.stderr.strip()}")
        else:
            # Its own process group (stopped as a whole), and it dies with the gateway: a run the
            # gateway can no longer follow would publish behind everyone's back.
            process = start_child(shlex.split(command), log_path, cwd=PROJECT_ROOT)
            self._processes[model] = process
            run.pid = process.pid
        run.log = str(log_path)
        self._save(run)
        return run

    def due(self, model: str, new_labels: int, drifted_for_s: float) -> str | None:
        """Why a policy wants a retrain now, or None."""
        policy = self.policy(model)
        if policy.min_new_labels and new_labels >= policy.min_new_labels:
            return (
                f"{new_labels} new labelled examples since the last version (policy: {policy.min_new_labels})"
            )
        if policy.drift_sustained_s and drifted_for_s >= policy.drift_sustained_s:
            return f"drift alarm held for {drifted_for_s:.0f} s (policy: {policy.drift_sustained_s:.0f} s)"
        return None

    def last_version_time(self, model: str) -> float:
        """When the newest version was published (its folder's time); 0 when there is none."""
        found = versions(self.repository / model)
        return (self.repository / model / str(found[-1])).stat().st_mtime if found else 0.0

    def stop_all(self) -> None:
        """Stop the runs this gateway started (on shutdown); the store records them as failed."""
        running = [process for process in self._processes.values() if process.poll() is None]
        stop_process_groups(running, timeout_s=10.0)

    def _save(self, run: RetrainRun) -> None:
        self.store.put_state(f"retrain:{run.model}", asdict(run))

    def _log_tail(self, run: RetrainRun) -> str:
        try:
            return Path(run.log).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def status(self, model: str) -> dict[str, Any]:
        run = self.refresh(model)
        body = asdict(run) if run else None
        if body is not None:
            body["log_tail"] = self._log_tail(run)[-1500:]
        return {"model": model, "policy": asdict(self.policy(model)), "last_run": body}


def training_config(model: str) -> str:
    """The config in training/configs/ whose ``model_name`` is ``model`` (read as text: no YAML here)."""
    pattern = re.compile(rf"\bmodel_name:\s*{re.escape(model)}\b")
    for path in sorted((PROJECT_ROOT / "training" / "configs").glob("*.yaml")):
        if path.name != "tiny.yaml" and pattern.search(path.read_text()):
            return str(path.relative_to(PROJECT_ROOT))
    return ""


def kubernetes_job(run: RetrainRun, command: list[str], policy: RetrainPolicy) -> dict[str, Any]:
    """The ``batch/v1`` Job that runs ``command`` once in the cluster."""
    name = f"retrain-{run.model.replace('_', '-')}-{run.id}"[:63]
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/component": "retrain", "prodseg.io/model": run.model},
    }
    if policy.namespace:
        metadata["namespace"] = policy.namespace
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {
                "metadata": {"labels": metadata["labels"]},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "retrain", "image": policy.image, "command": command}],
                },
            },
        },
    }
