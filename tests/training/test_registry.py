"""The registry: publishing versions, aliases with history, and served configs that follow them.

Aliases live in MLflow (each test has a scratch store); tests/training/test_mlflow_registry.py
covers registration, migration and deploy in detail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the training extra; serving-only installs skip this module

from mlflow.tracking import MlflowClient  # noqa: E402

from clients.contract import ModelContract, default_repository, read_model_config  # noqa: E402
from tests.training import mlflow_helpers  # noqa: E402
from tests.training.helpers import make_repository, served_versions  # noqa: E402
from training import registry  # noqa: E402
from training.registry import RegistryError  # noqa: E402

MODEL = "shelf_segmenter"

# A scratch MLflow store per test (tests/training/mlflow_helpers.py): never out/mlflow.db.
empty_mlflow_store = mlflow_helpers.empty_mlflow_store
mlflow_uri = mlflow_helpers.mlflow_uri


def publish_dummy(repository: Path, note: str) -> int:
    onnx = repository / f"{note}.onnx"
    onnx.write_bytes(note.encode())
    return registry.publish(onnx, {"note": note}, repository, MODEL)


@pytest.fixture
def repository(tmp_path: Path, mlflow_uri: str) -> Path:
    return make_repository(tmp_path / "repo")


def test_scratch_repository_has_the_small_contract(repository: Path) -> None:
    contract = ModelContract.load(MODEL, repository)
    assert (contract.height, contract.width) == (96, 160)
    assert contract.labels == ModelContract.load(MODEL).labels


def test_publish_writes_next_version_and_never_overwrites(repository: Path, tmp_path: Path) -> None:
    model_dir = repository / MODEL
    first, second, extra = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "model.xml"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    extra.write_text("<net/>")

    assert registry.publish(first, {"note": "a"}, repository, MODEL) == 1
    assert registry.publish(second, {"note": "b"}, repository, MODEL, extra_files=[extra]) == 2

    assert (model_dir / "1" / "model.onnx").read_bytes() == b"first"
    assert (model_dir / "2" / "model.onnx").read_bytes() == b"second"
    assert (model_dir / "2" / "model.xml").read_text() == "<net/>"
    card = registry.read_card(repository, 2, MODEL)
    assert card["version"] == 2 and card["note"] == "b" and card["model_name"] == MODEL
    assert "| model | shelf_segmenter v2 |" in (model_dir / "2" / "MODEL_CARD.md").read_text()
    link = model_dir / "1" / "model.py"
    assert link.is_symlink() and os.readlink(link) == "../model.py"
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".publish")]  # no staging left

    (model_dir / "7").mkdir()  # a gap in numbering: MLflow would call the next one 3, not 8
    with pytest.raises(RegistryError, match="the numbers must stay equal"):
        registry.publish(first, {}, repository, MODEL)
    assert registry.versions(repository, MODEL) == [1, 2]  # 7 is empty: not a published version
    assert not (model_dir / "8").exists()


def test_publish_needs_a_model_config(tmp_path: Path) -> None:
    (tmp_path / MODEL).mkdir()
    with pytest.raises(RegistryError, match="has no config.pbtxt"):
        registry.publish(tmp_path / "x.onnx", {}, tmp_path, MODEL)


def test_pin_version_keeps_comments_and_the_contract() -> None:
    source = default_repository() / MODEL
    for path in [source / "config.pbtxt", *(source / "configs").glob("*.pbtxt")]:
        text = path.read_text()
        pinned = registry.pin_version(text, 3, path)
        comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
        assert comments and all(line in pinned.splitlines() for line in comments)
        old, new = read_model_config(path), _parse(pinned)
        assert list(new.version_policy.specific.versions) == [3]
        old.ClearField("version_policy")
        new.ClearField("version_policy")
        assert old == new
        assert registry.pin_version(pinned, 4).count("version_policy") == pinned.count("version_policy")


def test_pin_version_handles_multiline_absent_and_commented_policies() -> None:
    multiline = (
        'name: "m"\n'
        "# version_policy: { all {} } is not read from comments\n"
        "version_policy {\n  latest {\n    num_versions: 2\n  }\n}\n"
        "max_batch_size: 4\n"
    )
    pinned = registry.pin_version(multiline, 5)
    assert "# version_policy: { all {} } is not read from comments" in pinned
    assert "num_versions" not in pinned and pinned.endswith("max_batch_size: 4\n")
    assert list(_parse(pinned).version_policy.specific.versions) == [5]

    absent = registry.pin_version('name: "m"\nmax_batch_size: 4\n', 2)
    assert list(_parse(absent).version_policy.specific.versions) == [2]
    with pytest.raises(RegistryError, match="not a valid Triton model config"):
        registry.pin_version("name: {", 1, "broken.pbtxt")


def test_promote_and_rollback_move_the_alias_and_the_served_configs(repository: Path) -> None:
    model_dir = repository / MODEL
    comment = "# CPU variant for the embedded server"
    for note in ("a", "b", "c"):
        publish_dummy(repository, note)
    assert served_versions(repository)["config.pbtxt"] == "latest"

    first = registry.promote(repository, MODEL, 1)
    assert (first.alias, first.previous, first.version) == ("production", None, 1)
    assert sorted(first.configs) == ["config.pbtxt", "configs/cpu.pbtxt", "configs/gpu.pbtxt"]
    assert set(map(tuple, served_versions(repository).values())) == {(1,)}

    registry.promote(repository, MODEL, "latest")
    assert registry.alias_version(repository, "production", MODEL) == 3
    assert set(map(tuple, served_versions(repository).values())) == {(3,)}
    assert comment in (model_dir / "configs" / "cpu.pbtxt").read_text()  # human comments survive
    assert ModelContract.load(MODEL, repository).height == 96  # the contract still parses, unchanged

    back = registry.rollback(repository, MODEL)
    assert (back.previous, back.version) == (3, 1)
    assert set(map(tuple, served_versions(repository).values())) == {(1,)}
    assert registry.alias_version(repository, "production", MODEL) == 1
    assert [(e["action"], e["from"], e["to"]) for e in registry.history(repository, MODEL)] == [
        ("promote", None, 1),
        ("promote", 1, 3),
        ("rollback", 3, 1),
    ]
    assert not (model_dir / "aliases.json").exists()  # MLflow holds the aliases, no file does
    with pytest.raises(RegistryError, match="no earlier version to roll back to"):
        registry.rollback(repository, MODEL)


def test_other_aliases_leave_the_served_configs_alone(repository: Path) -> None:
    publish_dummy(repository, "a")
    before = (repository / MODEL / "config.pbtxt").read_text()
    change = registry.promote(repository, MODEL, 1, alias="staging")
    assert change.configs == [] and registry.resolve(repository, "staging", MODEL) == 1
    assert (repository / MODEL / "config.pbtxt").read_text() == before


def test_bad_references_are_registry_errors(repository: Path, mlflow_uri: str) -> None:
    with pytest.raises(RegistryError, match="no published version"):
        registry.promote(repository, MODEL, "latest")
    publish_dummy(repository, "a")
    with pytest.raises(RegistryError, match="version 4 is not published"):
        registry.promote(repository, MODEL, 4)
    with pytest.raises(RegistryError, match="no alias 'canary'"):
        registry.promote(repository, MODEL, "canary")
    with pytest.raises(RegistryError, match="no alias 'production' to roll back"):
        registry.rollback(repository, MODEL)
    assert MlflowClient(mlflow_uri).get_registered_model(MODEL).aliases == {}  # failures moved none


def test_baseline_prefers_the_alias_then_the_latest(repository: Path) -> None:
    assert registry.baseline(repository, "production", MODEL) is None
    for note in ("a", "b"):
        publish_dummy(repository, note)
    assert registry.baseline(repository, "production", MODEL) == (2, None)
    registry.promote(repository, MODEL, 1)
    assert registry.baseline(repository, "production", MODEL) == (1, "production")


def test_a_triton_that_does_not_answer_is_reported(repository: Path) -> None:
    publish_dummy(repository, "a")
    with pytest.raises(RegistryError, match="configs updated, but Triton at 127.0.0.1:9 did not reload"):
        registry.promote(repository, MODEL, 1, triton_url="127.0.0.1:9")
    assert served_versions(repository)["config.pbtxt"] == [1]


def _parse(text: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())
