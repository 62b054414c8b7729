"""A scratch MLflow store per test, the registry of record for that test's scratch repository.

A new SQLite store runs MLflow's schema migrations (about 6 s on these cores): one empty store is
made per session and each test gets a copy of its file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # creates the schema
    return path


@pytest.fixture
def mlflow_uri(empty_mlflow_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``MLFLOW_TRACKING_URI`` at a fresh SQLite store under tmp_path, never out/mlflow.db."""
    database = tmp_path / "mlflow" / "mlflow.db"
    database.parent.mkdir()
    shutil.copyfile(empty_mlflow_store, database)
    uri = f"sqlite:///{database}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return uri
