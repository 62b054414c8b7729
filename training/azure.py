"""The same training run as an Azure ML command job: build it, dump it to YAML, submit it.

The job runs ``prodseg pipeline`` on a GPU cluster with:

* ``code``: this checkout (uploaded by Azure ML, .gitignore applies), so the config travels in it and
  ``inputs.config`` is its path inside the snapshot. (A local ``uri_file`` input does not survive
  ``dump``: azure-ai-ml 1.35 writes local paths back as ``azureml:<path>`` asset references.)
* ``inputs.data``: the dataset folder on a datastore (``uri_folder``, read-only mount), passed as
  ``--data-root``; procedural configs need none.
* ``outputs.model_repository``: the Triton model repository on a datastore, mounted read-write. The
  pipeline publishes the next version into it (seeding its configs from the snapshot on the first
  run), gates against its ``production`` alias, and promotes if the config says so.
* ``outputs.run``: the run directory (checkpoints, ONNX, evaluation plots).
* ``environment``: a CUDA base image plus a conda spec generated from ``pyproject.toml`` (one home
  for the pins; on Linux the PyPI torch wheel is the CUDA build) and ``azureml-mlflow``, so MLflow
  logs into the workspace: Azure ML sets ``MLFLOW_TRACKING_URI`` and ``MLFLOW_RUN_ID`` in the job.

Building and dumping are offline. :func:`submit` needs Azure credentials and the network, and is
never called by the tests.
"""

from __future__ import annotations

import io
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from training.config import PROJECT_ROOT, PipelineConfig

AZUREML_MLFLOW = "azureml-mlflow==1.62.0.post6"
_DATASTORE_URI = re.compile(r"^azureml://datastores/[^/]+/paths/.+")


def conda_spec(pyproject: Path = PROJECT_ROOT / "pyproject.toml") -> dict[str, Any]:
    """A conda environment with the project's pinned runtime and training dependencies."""
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    packages = [*project["dependencies"], *project["optional-dependencies"]["training"], AZUREML_MLFLOW]
    python = project["requires-python"].split(",")[0].removeprefix(">=")
    return {
        "name": "prodseg-train",
        "channels": ["conda-forge"],
        "dependencies": [f"python={python}", "pip", {"pip": packages}],
    }


def build_job(config: PipelineConfig, config_path: Path, code_dir: Path = PROJECT_ROOT) -> Any:
    """The command job (``azure.ai.ml.entities.Command``) that runs ``config_path`` on Azure ML."""
    from azure.ai.ml import Input, Output, command
    from azure.ai.ml.constants import AssetTypes, InputOutputModes
    from azure.ai.ml.entities import Environment

    code_dir = Path(code_dir).resolve()
    try:
        config_in_code = Path(config_path).resolve().relative_to(code_dir).as_posix()
    except ValueError:
        raise config.error(
            "azure", f"{config_path} must lie inside the uploaded code folder {code_dir}"
        ) from None
    spec = config.azure
    for key in ("data", "model_repository"):
        if not _DATASTORE_URI.match(getattr(spec, key)):
            raise config.error(
                f"azure.{key}", "expected a datastore URI azureml://datastores/<name>/paths/<path>"
            )

    arguments = [
        "python -m prodseg.cli pipeline --config ${{inputs.config}}",
        "--repository ${{outputs.model_repository}} --seed-repository",
        "--run-dir ${{outputs.run}}",
    ]
    inputs: dict[str, Any] = {"config": config_in_code}
    if config.data.kind in ("folder", "sku110k"):  # procedural data is rendered on the node
        inputs["data"] = Input(type=AssetTypes.URI_FOLDER, path=spec.data, mode=InputOutputModes.RO_MOUNT)
        arguments.append("--data-root ${{inputs.data}}")
    outputs = {
        "model_repository": Output(
            type=AssetTypes.URI_FOLDER, path=spec.model_repository, mode=InputOutputModes.RW_MOUNT
        ),
        "run": Output(type=AssetTypes.URI_FOLDER, mode=InputOutputModes.RW_MOUNT),
    }
    environment = Environment(image=spec.image, conda_file=conda_spec())  # anonymous: versioned by hash
    return command(
        code=str(code_dir),
        command=" ".join(arguments),
        inputs=inputs,
        outputs=outputs,
        environment=environment,
        compute=spec.compute,
        experiment_name=spec.experiment,
        display_name=f"prodseg-{Path(config_path).stem}",
        environment_variables={"PYTHONUNBUFFERED": "1"},
        tags={"config": config_in_code},
    )


def dump_job(job: Any, path: Path) -> Path:
    """Write ``job`` as Azure ML job YAML (``az ml job create -f PATH``).

    The SDK writes ``code`` as an absolute path of this machine; it is rewritten relative to the
    YAML file (how ``az ml`` and ``load_job`` resolve it), so the file works from any checkout.
    """
    import yaml

    from clients.atomic import write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    command_job = job._to_job()  # the builder dumps as a component; the job is what `az ml` reads
    code = os.path.relpath(command_job.code, path.parent.resolve())
    buffer = io.StringIO()
    command_job.dump(buffer)
    data = yaml.safe_load(buffer.getvalue())
    data["code"] = code
    write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def submit(job: Any, subscription_id: str, resource_group: str, workspace: str) -> str:
    """Submit ``job`` to a workspace (needs ``az login`` or another DefaultAzureCredential source);
    returns the run's studio URL."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    client = MLClient(DefaultAzureCredential(), subscription_id, resource_group, workspace)
    return client.jobs.create_or_update(job).studio_url
