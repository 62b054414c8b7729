"""MLflow tracking: where runs go, and what a run holds."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from training.config import PROJECT_ROOT, TrackingSpec  # noqa: E402
from training.tracking import Tracker, default_tracking_uri, tracking_uri  # noqa: E402


def test_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(TrackingSpec()) == default_tracking_uri() == f"sqlite:///{PROJECT_ROOT}/out/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/x")
    assert tracking_uri(TrackingSpec()).startswith("azureml://")  # how an Azure ML workspace is used
    assert tracking_uri(TrackingSpec(uri="sqlite:////tmp/x.db")) == "sqlite:////tmp/x.db"  # config wins


def test_a_run_holds_params_metrics_and_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root would be ./mlruns: it must not be used
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    artifact = tmp_path / "card.json"
    artifact.write_text("{}")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "confusion.png").write_bytes(b"png")

    with Tracker(uri, "shelf", run_name="r1") as tracker:
        tracker.log_params({"train": {"steps": 3, "seed": 0}, "model": {"options": {}}, "note": "x" * 7000})
        for step in (1, 2):
            tracker.log_metrics({"val/miou": 0.5 * step}, step=step)
        tracker.log_artifact(artifact, "model")
        tracker.log_artifact(tmp_path / "plots", "evaluation")
        tracker.set_tags({"published_version": 3})

    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert run.data.params["train.steps"] == "3" and run.data.params["model.options"] == "{}"
    assert len(run.data.params["note"]) == 6000  # MLflow's limit, truncated rather than failing
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "val/miou")] == [
        (1, 0.5),
        (2, 1.0),
    ]
    assert run.data.tags["published_version"] == "3"
    artifacts = {a.path for a in client.list_artifacts(tracker.run_id, "model")}
    artifacts |= {a.path for a in client.list_artifacts(tracker.run_id, "evaluation")}
    assert artifacts == {"model/card.json", "evaluation/confusion.png"}
    assert (tmp_path / "store" / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()


def test_runs_reopen_by_id_and_fail_on_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker(uri, "shelf") as first:
        first.log_metrics({"a": 1.0}, step=1)
    with pytest.raises(RuntimeError), Tracker(uri, "shelf", run_id=first.run_id) as again:
        again.log_metrics({"b": 2.0}, step=1)
        raise RuntimeError("stage failed")
    run = MlflowClient(uri).get_run(first.run_id)
    assert set(run.data.metrics) == {"a", "b"} and run.info.status == "FAILED"

    monkeypatch.setenv("MLFLOW_RUN_ID", first.run_id)  # what Azure ML sets inside a job
    with Tracker(uri, "shelf") as inside_job:
        assert inside_job.run_id == first.run_id
