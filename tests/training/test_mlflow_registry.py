"""The MLflow Model Registry as the registry of record: registration, aliases, migration, deploy.

Every test has a scratch repository and a scratch SQLite MLflow store (``MLFLOW_TRACKING_URI``), and
looks at the results through ``MlflowClient`` as any other MLflow user would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")  # the training extra; serving-only installs skip this module

from mlflow.tracking import MlflowClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from clients.contract import default_repository  # noqa: E402
from prodseg.cli import app  # noqa: E402
from tests.training import mlflow_helpers  # noqa: E402
from tests.training.helpers import make_repository, served_versions  # noqa: E402
from training import registry  # noqa: E402
from training.registry import RegistryError  # noqa: E402

MODEL = "shelf_segmenter"

# The scratch MLflow store fixtures (tests/training/mlflow_helpers.py), used by this module's tests.
empty_mlflow_store = mlflow_helpers.empty_mlflow_store
mlflow_uri = mlflow_helpers.mlflow_uri


@pytest.fixture
def repository(tmp_path: Path, mlflow_uri: str) -> Path:
    return make_repository(tmp_path / "repo")


@pytest.fixture
def client(mlflow_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)


@pytest.fixture
def prodseg() -> Callable[..., Any]:
    """The ``prodseg`` command line in-process, so the scratch MLFLOW_TRACKING_URI applies."""
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args), env={"COLUMNS": "300"})


def publish(repository: Path, content: bytes, **card: object) -> int:
    onnx = repository.parent / "candidate.onnx"
    onnx.write_bytes(content)
    return registry.publish(onnx, dict(card), repository, MODEL)


def registered(client: MlflowClient) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))


def leftovers(repository: Path) -> list[str]:
    """Hidden staging folders (publish, deploy) left in the model folder."""
    return [p.name for p in (repository / MODEL).iterdir() if p.name.startswith(".")]


def test_publish_registers_the_version_with_its_card_figures_and_files(
    repository: Path, client: MlflowClient, tmp_path: Path
) -> None:
    card = {
        "task": "segmentation",
        "evaluation": {"miou": 0.81, "per_class_iou": {"product": 0.9}, "engine": "onnxruntime"},
        "data_version": {"id": "d41d8cd9", "source": "dvc"},
        "code_commit": {"commit": "0123abcd", "dirty": True},
    }
    assert publish(repository, b"first", **card) == 1
    assert publish(repository, b"second") == 2

    assert registered(client) == [1, 2]
    first = client.get_model_version(MODEL, "1")
    assert first.tags["evaluation.miou"] == "0.81" and first.tags["task"] == "segmentation"
    assert first.tags["data_version"] == "d41d8cd9" and first.tags["code_commit"] == "0123abcd"
    assert first.tags["code_commit.dirty"] == "True"
    assert "| model | shelf_segmenter v1 (segmentation) |" in first.description  # MODEL_CARD.md
    second = client.get_model_version(MODEL, "2")
    assert "data_version" not in second.tags and "code_commit" not in second.tags

    # The registered source holds the version's files (the link is a tag, not a copy).
    import mlflow.artifacts

    fetched = Path(mlflow.artifacts.download_artifacts(first.source, dst_path=str(tmp_path / "dl")))
    assert (fetched / "model.onnx").read_bytes() == b"first"
    assert json.loads((fetched / "model_card.json").read_text())["version"] == 1
    assert not (fetched / "model.py").exists()
    assert json.loads(first.tags["prodseg.links"]) == {"model.py": "../model.py"}


def test_publish_logs_into_the_training_run_the_card_names(
    repository: Path, client: MlflowClient, mlflow_uri: str
) -> None:
    experiment = client.create_experiment("training")
    run_id = client.create_run(experiment).info.run_id
    publish(repository, b"trained", mlflow={"tracking_uri": mlflow_uri, "run_id": run_id})
    version = client.get_model_version(MODEL, "1")
    assert version.run_id == run_id
    files = [item.path for item in client.list_artifacts(run_id, f"published/{MODEL}/1")]
    assert f"published/{MODEL}/1/model.onnx" in files


def test_numbers_that_would_diverge_are_refused_and_nothing_is_left(
    repository: Path, client: MlflowClient
) -> None:
    model_dir = repository / MODEL
    publish(repository, b"one")
    (model_dir / "7").mkdir()  # a stray folder: the repository would say 8, MLflow 2
    with pytest.raises(RegistryError, match="next version is 8 but MLflow's .* is 2"):
        publish(repository, b"two")
    assert registry.versions(repository, MODEL) == [1] and not (model_dir / "8").exists()
    assert registered(client) == [1] and leftovers(repository) == []

    (model_dir / "7").rmdir()
    assert publish(repository, b"two") == 2
    # MLflow never reuses a deleted version's number: 2 deleted, the next would be 3, not 2.
    client.delete_model_version(MODEL, "2")
    shutil.rmtree(model_dir / "2")
    with pytest.raises(RegistryError, match="numbered shelf_segmenter's new version 3, not 2"):
        publish(repository, b"again")
    assert registry.versions(repository, MODEL) == [1] and registered(client) == [1]
    assert leftovers(repository) == []
    runs = client.search_runs([client.get_experiment_by_name(MODEL).experiment_id])
    statuses = sorted(run.info.status for run in runs)  # one registration run per attempt
    assert statuses == ["FAILED", "FINISHED", "FINISHED"]


def test_aliases_move_in_mlflow_and_rollback_follows_their_history(
    repository: Path, client: MlflowClient
) -> None:
    for content in (b"a", b"b", b"c"):
        publish(repository, content)
    registry.promote(repository, MODEL, 1)
    registry.promote(repository, MODEL, 3)
    registry.promote(repository, MODEL, 2, alias="staging")
    registry.promote(repository, MODEL, "staging", alias="challenger")
    assert client.get_registered_model(MODEL).aliases == {"production": 3, "staging": 2, "challenger": 2}
    assert int(client.get_model_version_by_alias(MODEL, "production").version) == 3
    assert set(map(tuple, served_versions(repository).values())) == {(3,)}

    back = registry.rollback(repository, MODEL)
    assert (back.previous, back.version) == (3, 1)
    assert int(client.get_model_version_by_alias(MODEL, "production").version) == 1
    assert set(map(tuple, served_versions(repository).values())) == {(1,)}
    tags = client.get_registered_model(MODEL).tags
    assert json.loads(tags["prodseg.alias.production.stack"]) == [1]
    history = json.loads(tags["prodseg.alias.production.history"])
    assert [(e["action"], e["from"], e["to"]) for e in history] == [
        ("promote", None, 1),
        ("promote", 1, 3),
        ("rollback", 3, 1),
    ]
    with pytest.raises(RegistryError, match="no earlier version to roll back to"):
        registry.rollback(repository, MODEL)
    assert not (repository / MODEL / "aliases.json").exists()


def test_an_alias_moved_in_mlflow_directly_rolls_back_to_where_it_was(
    repository: Path, client: MlflowClient
) -> None:
    for content in (b"a", b"b"):
        publish(repository, content)
    registry.promote(repository, MODEL, 1, alias="staging")
    client.set_registered_model_alias(MODEL, "staging", "2")  # someone used MLflow's UI
    back = registry.rollback(repository, MODEL, alias="staging")
    assert (back.previous, back.version) == (2, 1)


def test_an_aliases_json_is_migrated_into_mlflow_once(repository: Path, client: MlflowClient) -> None:
    for content in (b"a", b"b", b"c"):
        publish(repository, content)
    old = {
        "production": {
            "version": 3,
            "stack": [1, 3],
            "history": [{"action": "promote", "from": 1, "to": 3, "at": "2026-11-30T10:00:00+00:00"}],
        },
        "staging": 2,  # the bare form the chart's examples used
        "canary": {"version": 9, "stack": [9], "history": []},  # a version that does not exist
    }
    path = repository / MODEL / "aliases.json"
    path.write_text(json.dumps(old))

    report = registry.sync(repository, MODEL)
    assert report.migrated == {"production": 3, "staging": 2}
    assert "version 9 is not registered" in report.dropped["canary"]
    assert not path.exists()
    assert client.get_registered_model(MODEL).aliases == {"production": 3, "staging": 2}
    history = json.loads(client.get_registered_model(MODEL).tags["prodseg.alias.production.history"])
    assert history[0]["at"] == "2026-11-30T10:00:00+00:00" and history[-1]["action"] == "migrate"

    back = registry.rollback(repository, MODEL)  # the migrated stack is the rollback history
    assert (back.previous, back.version) == (3, 1)
    assert registry.sync(repository, MODEL).migrated == {}  # once: the file is gone


def test_a_fresh_clone_registers_its_published_versions_from_their_cards(
    repository: Path, client: MlflowClient, prodseg: Callable[..., Any]
) -> None:
    committed = default_repository() / MODEL / "1"
    copy = repository / MODEL / "1"
    shutil.copytree(committed, copy, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    card = json.loads((copy / "model_card.json").read_text())

    done = prodseg("registry", "sync", "--model", MODEL, "--repository", str(repository))
    assert done.exit_code == 0, done.output
    assert "registered versions 1" in done.stderr
    version = client.get_model_version(MODEL, "1")
    assert version.tags["evaluation.miou"] == str(card["evaluation"]["miou"])
    onnx_hash = hashlib.sha256((copy / "model.onnx").read_bytes()).hexdigest()
    assert version.tags["prodseg.onnx_sha256"] == onnx_hash

    # Publishing continues the numbering both sides share.
    assert publish(repository, b"next") == 2 and registered(client) == [1, 2]


def test_deploy_materialises_a_deleted_version_and_pins_the_configs(
    repository: Path, client: MlflowClient, prodseg: Callable[..., Any]
) -> None:
    model_dir = repository / MODEL
    for content in (b"a", b"b"):
        publish(repository, content)
    registry.promote(repository, MODEL, 1)
    registry.promote(repository, MODEL, 2, alias="staging")
    shutil.rmtree(model_dir / "1")  # another machine, or a repository that never had it
    shutil.rmtree(model_dir / "2")

    done = prodseg("deploy", "--model", MODEL, "--alias", "production", "--repository", str(repository))
    assert done.exit_code == 0, done.output
    assert "production is version 1 (copied from the MLflow registry)" in done.stderr
    assert (model_dir / "1" / "model.onnx").read_bytes() == b"a"
    assert os.readlink(model_dir / "1" / "model.py") == "../model.py"
    assert registry.read_card(repository, 1, MODEL)["version"] == 1
    assert set(map(tuple, served_versions(repository).values())) == {(1,)}
    assert not (model_dir / "2").exists()  # only the alias's version is materialised
    assert leftovers(repository) == []

    # Promoting production takes the same path: the missing version 2 is copied in first.
    change = registry.promote(repository, MODEL, "staging")
    assert change.materialised and (model_dir / "2" / "model.onnx").read_bytes() == b"b"
    assert set(map(tuple, served_versions(repository).values())) == {(2,)}


def test_deploy_of_an_alias_that_points_nowhere_exits_2_naming_it(
    repository: Path, prodseg: Callable[..., Any]
) -> None:
    publish(repository, b"a")
    before = served_versions(repository)
    done = prodseg("deploy", "--model", MODEL, "--alias", "challenger", "--repository", str(repository))
    assert done.exit_code == 2
    assert "alias 'challenger' of shelf_segmenter points nowhere" in done.stderr
    assert "Traceback" not in done.stderr
    assert served_versions(repository) == before


def test_a_failed_materialisation_leaves_nothing_half_written(repository: Path, client: MlflowClient) -> None:
    model_dir = repository / MODEL
    for content in (b"a", b"b"):
        publish(repository, content)
    registry.promote(repository, MODEL, 1)
    shutil.rmtree(model_dir / "2")
    # The artifact store's copy of version 2 is damaged: its hash no longer matches the registration.
    stored = Path(client.get_model_version(MODEL, "2").source.removeprefix("file://")) / "model.onnx"
    stored.write_bytes(b"tampered")
    configs_before = {p: p.read_text() for p in [model_dir / "config.pbtxt", *model_dir.glob("configs/*")]}

    with pytest.raises(RegistryError, match="differs from MLflow's registered version"):
        registry.promote(repository, MODEL, 2)
    assert not (model_dir / "2").exists() and leftovers(repository) == []
    assert {p: p.read_text() for p in configs_before} == configs_before
    assert int(client.get_model_version_by_alias(MODEL, "production").version) == 1  # alias unmoved


def test_deploy_reports_a_triton_that_does_not_answer(repository: Path) -> None:
    publish(repository, b"a")
    registry.promote(repository, MODEL, 1, alias="staging")
    with pytest.raises(RegistryError, match="configs updated, but Triton at 127.0.0.1:9 did not reload"):
        registry.deploy(repository, MODEL, "staging", triton_url="127.0.0.1:9")
    assert served_versions(repository)["config.pbtxt"] == [1]


def test_a_deploy_to_replicas_that_cannot_be_reached_exits_2_and_changes_no_config(
    repository: Path, prodseg: Callable[..., Any]
) -> None:
    for content in (b"a", b"b"):
        publish(repository, content)
    registry.promote(repository, MODEL, 1)
    registry.promote(repository, MODEL, 2, alias="staging")
    before = served_versions(repository)
    command = ["deploy", "--model", MODEL, "--alias", "staging", "--repository", str(repository)]

    done = prodseg(*command, "--triton", "127.0.0.1:9,127.0.0.1:10")  # two replicas: a rollout

    assert done.exit_code == 2, done.output
    said = " ".join(done.stderr.split())
    assert "cannot roll shelf_segmenter version 2 out: Triton at 127.0.0.1:9 is not reachable" in said
    assert "Traceback" not in done.output
    assert served_versions(repository) == before  # still version 1: no replica moved, no config changed
