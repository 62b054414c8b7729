"""Experiment tracking with MLflow: one run per pipeline, params, per-epoch metrics, artifacts.

Where runs go is MLflow's tracking URI, chosen in this order: the config's ``tracking.uri``, the
``MLFLOW_TRACKING_URI`` environment variable, then a local SQLite store
``sqlite:///<project>/out/mlflow.db`` with artifacts beside it in ``out/mlartifacts``. The
environment variable is also how an Azure ML workspace is used: inside an Azure ML job the platform
sets it (and ``MLFLOW_RUN_ID``, which this tracker then logs into instead of starting a new run);
from a laptop, set it to the workspace's ``azureml://`` URI (needs the ``azureml-mlflow`` plugin).

The client API (``MlflowClient``) is used rather than ``mlflow.start_run``, so there is no global
active run and a run can be reopened by id: the separate ``prodseg train/export/evaluate/publish``
commands of one run directory log into one MLflow run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from training.config import PROJECT_ROOT, TrackingSpec

_MAX_PARAM_LENGTH = 6000  # MLflow's limit for one param value
_BATCH = 100  # MLflow accepts at most 100 params per log_batch call


def default_tracking_uri() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'out' / 'mlflow.db'}"


def tracking_uri(spec: TrackingSpec) -> str:
    return spec.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


class Tracker:
    """One MLflow run; a context manager that ends the run FINISHED, or FAILED on an exception."""

    def __init__(
        self, uri: str, experiment: str, run_name: str | None = None, run_id: str | None = None
    ) -> None:
        from mlflow.tracking import MlflowClient

        # A new SQLite store logs its schema migrations at INFO: noise on the command line.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        run_id = run_id or os.environ.get("MLFLOW_RUN_ID")  # set by Azure ML inside its jobs
        if run_id:
            self.run_id = self.client.get_run(run_id).info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment_id = self._experiment_id(experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    @classmethod
    def open(cls, spec: TrackingSpec, run_name: str | None = None, run_id: str | None = None) -> Tracker:
        return cls(tracking_uri(spec), spec.experiment, run_name, run_id)

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            # MLflow's default artifact root is ./mlruns under the *working directory*: keep a local
            # store's artifacts beside its database instead.
            database = Path(self.uri.removeprefix("sqlite:///"))
            database.parent.mkdir(parents=True, exist_ok=True)
            location = (database.parent / "mlartifacts" / name).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested mappings are flattened to dotted keys (``train.batch_size``)."""
        from mlflow.entities import Param

        flat = [Param(key, str(value)[:_MAX_PARAM_LENGTH]) for key, value in _flatten(params).items()]
        for start in range(0, len(flat), _BATCH):
            self.client.log_batch(self.run_id, params=flat[start : start + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=entries)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file, or a folder's contents, under ``artifact_path`` in the run's artifact store."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end(failed=exc_type is not None)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
