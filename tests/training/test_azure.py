"""The Azure ML command job: built offline, dumped to YAML, loaded back. Never submitted here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml")

from azure.ai.ml import load_job  # noqa: E402

from training import azure  # noqa: E402
from training.config import CONFIG_DIR, PROJECT_ROOT, ConfigError, load_config  # noqa: E402

SKU110K = CONFIG_DIR / "sku110k.yaml"
EXAMPLE = PROJECT_ROOT / "infra" / "azureml" / "sku110k-job.yml"


def test_the_job_runs_the_pipeline_on_a_gpu_cluster() -> None:
    config = load_config(SKU110K)
    job = azure.build_job(config, SKU110K)
    assert job.compute == "gpu-a100" and job.experiment_name == "shelf_segmenter"
    assert job.command.startswith("python -m prodseg.cli pipeline --config ${{inputs.config}}")
    assert "--data-root ${{inputs.data}}" in job.command and "--seed-repository" in job.command
    assert job._to_job().inputs["config"] == "training/configs/sku110k.yaml"  # travels in the code snapshot
    assert (job.inputs["data"].path, job.inputs["data"].mode) == (config.azure.data, "ro_mount")
    assert job.outputs["model_repository"].path == "azureml://datastores/models/paths/model_repository"
    pip = job.environment.conda_file["dependencies"][-1]["pip"]
    assert "torch==2.13.0" in pip and azure.AZUREML_MLFLOW in pip  # pins from pyproject.toml


def test_procedural_data_needs_no_data_input() -> None:
    job = azure.build_job(load_config(CONFIG_DIR / "default.yaml"), CONFIG_DIR / "default.yaml")
    assert "data" not in job.inputs and "--data-root" not in job.command


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    config = load_config(SKU110K)
    path = azure.dump_job(azure.build_job(config, SKU110K), tmp_path / "jobs" / "train.yml")
    loaded = load_job(path)
    assert Path(path.parent, loaded.code).resolve() == PROJECT_ROOT
    assert loaded.command == azure.build_job(config, SKU110K).command
    assert loaded.compute == "gpu-a100"
    assert loaded.inputs["data"].path == config.azure.data and loaded.inputs["data"].mode == "ro_mount"
    assert loaded.outputs["model_repository"].mode == "rw_mount"
    assert loaded.environment.image == config.azure.image
    assert loaded.environment.conda_file == azure.conda_spec()


def test_the_committed_example_is_current(tmp_path: Path) -> None:
    fresh = azure.dump_job(azure.build_job(load_config(SKU110K), SKU110K), EXAMPLE.parent / ".check.yml")
    try:
        regenerate = "prodseg azureml-job --config training/configs/sku110k.yaml"
        assert fresh.read_text() == EXAMPLE.read_text(), f"{EXAMPLE} is stale: {regenerate}"
    finally:
        fresh.unlink()


def test_bad_azure_settings_name_the_key(tmp_path: Path) -> None:
    config = load_config(SKU110K, {"azure.data": "https://example.com/data"})
    with pytest.raises(ConfigError, match="sku110k.yaml: azure.data: expected a datastore URI"):
        azure.build_job(config, SKU110K)
    outside = tmp_path / "mine.yaml"
    outside.write_text(SKU110K.read_text())
    with pytest.raises(ConfigError, match="must lie inside the uploaded code folder"):
        azure.build_job(load_config(outside), outside)


def test_cli_writes_the_job_and_submission_needs_a_workspace(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "300"}
    command = [sys.executable, "-m", "prodseg.cli", "azureml-job", "--config", str(SKU110K)]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "job.yml")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert load_job(tmp_path / "job.yml").compute == "gpu-a100"
    refused = subprocess.run([*command, "--submit"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "--submit needs --subscription" in refused.stderr
    assert "Traceback" not in refused.stderr
