"""The whole pipeline and its commands, at test size, into scratch repositories and MLflow stores.

Nothing here writes into this checkout's model_repository/ or out/: every run names its repository,
run directory and tracking URI under tmp_path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")  # the training extra; serving-only installs skip this module

import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from clients.contract import ModelContract  # noqa: E402
from prodseg.cli import app  # noqa: E402
from tests.training.helpers import CRACKS, MODEL, make_repository, served_versions  # noqa: E402
from training import registry  # noqa: E402
from training.config import CONFIG_DIR, config_from_dict  # noqa: E402
from training.pipeline import GateRefused, RunDir, publish_stage, run_pipeline, seed_repository  # noqa: E402
from training.train import WEIGHTS_FILE, read_weights  # noqa: E402

TINY = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())


def tiny_config(tmp_path: Path, **sections: Any):
    """tiny.yaml aimed at a scratch repository (96x160 input) and a scratch MLflow store."""
    raw = {
        **TINY,
        "publish": {"repository": str(tmp_path / "repo")},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        **sections,
    }
    if not (tmp_path / "repo").exists():
        make_repository(tmp_path / "repo")
    return config_from_dict(raw, "tiny.yaml")


@pytest.fixture(autouse=True)
def scratch_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scratch MLflow store for anything that falls back to the environment, never out/mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'ambient-mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


@pytest.fixture
def cli() -> Callable[..., Any]:
    runner = CliRunner()  # in-process, so the environment set above applies
    return lambda *args: runner.invoke(app, list(args), env={"COLUMNS": "300"})


def test_full_pipeline_from_generated_boxes(
    tmp_path: Path, tiny_sam: Path, prodseg: Callable[..., Any]
) -> None:
    """SKU-110K-format boxes -> tiny SAM bootstrap -> train -> gate -> export + parity -> publish ->
    promote; then a second version through the CLI, and a rollback."""
    from training.sku110k import write_sku110k_from_synth

    write_sku110k_from_synth(tmp_path / "sku", count=8, seed=0, height=96, width=160)
    data = {
        "kind": "sku110k",
        "root": str(tmp_path / "sku"),
        "annotations": "annotations.csv",
        "images": "images",
        "labeler": "sam",
        "sam_checkpoint": str(tiny_sam),
        "sam_type": "tiny",
        "val_fraction": 0.2,
        "test_fraction": 0.2,
    }
    config = tiny_config(
        tmp_path, data=data, publish={"repository": str(tmp_path / "repo"), "promote": "production"}
    )
    run = RunDir(tmp_path / "run")

    result = run_pipeline(config, run.root)

    repository = tmp_path / "repo"
    assert result.gate.passed and result.version == 1
    assert result.promoted is not None and (result.promoted.alias, result.promoted.version) == (
        "production",
        1,
    )
    assert result.parity.onnxruntime >= 0.999
    assert result.evaluation.images == 2  # 8 images: 2 val, 2 test, 4 train
    bootstrap = json.loads(run.data_json.read_text())["bootstrap"]
    assert bootstrap["labeler"] == "sam" and bootstrap["model_type"] == "tiny" and bootstrap["boxes"] > 0
    assert sorted(p.name for p in (run.bootstrap / "masks").iterdir())[:1] == ["000000.png"]
    card = registry.read_card(repository, 1, MODEL)
    assert card["gate"]["passed"] and card["data"]["bootstrap"]["checkpoint_sha256"]
    assert card["task"] == "segmentation" and card["outputs"] == [
        {"name": "masks", "dtype": "uint8", "shape": [-1, 96, 160]}
    ]
    assert card["mlflow"]["run_id"] == result.run_id
    assert served_versions(repository)["configs/cpu.pbtxt"] == [1]
    kept = read_weights(repository / MODEL / "1" / WEIGHTS_FILE)  # the torch network, for warm starts
    assert kept["model_spec"] == config.to_dict()["model"] and kept["task"] == "segmentation"

    client = MlflowClient(config.tracking.uri)
    tracked = client.get_run(result.run_id)
    assert tracked.info.status == "FINISHED" and tracked.data.params["data.kind"] == "sku110k"
    metrics = tracked.data.metrics.keys()
    assert {"test/miou", "test/dice/product", "parity/onnxruntime", "parity/served", "gate/passed"} <= metrics
    assert tracked.data.tags["published_version"] == "1"
    artifacts = {
        a.path for folder in ("model", "evaluation") for a in client.list_artifacts(result.run_id, folder)
    }
    assert {"model/model.onnx", "model/model_card.json", "evaluation/confusion.png"} <= artifacts

    # The same run published again through the CLI (as a second candidate) and promoted...
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(_raw(config)))
    published = prodseg("publish", "--run-dir", str(run.root), "--config", str(config_file))
    assert published.returncode == 0, published.stderr
    assert (
        "published shelf_segmenter version 2" in published.stderr and "production: 1 -> 2" in published.stderr
    )
    assert served_versions(repository)["config.pbtxt"] == [2]
    # ...then rolled back.
    rolled = prodseg("rollback", "--model", MODEL, "--repository", str(repository))
    assert rolled.returncode == 0, rolled.stderr
    assert "production: 2 -> 1" in rolled.stderr
    assert set(map(tuple, served_versions(repository).values())) == {(1,)}
    assert ModelContract.load(MODEL, repository).height == 96


def _raw(config) -> dict[str, Any]:
    """A config back as YAML-able data (what a user would have written)."""
    raw = config.to_dict()
    raw.pop("source")
    return raw


def test_the_gate_refuses_a_model_below_its_floor(tmp_path: Path, cli: Callable[..., Any]) -> None:
    config = tiny_config(tmp_path, gate={"min_miou": 0.99})
    result = run_pipeline(config, tmp_path / "run")
    assert not result.gate.passed and result.version is None
    assert "failed: mIoU" in result.gate.reasons[0]
    assert registry.versions(tmp_path / "repo", MODEL) == []
    with pytest.raises(GateRefused, match="the quality gate refused this model: failed: mIoU"):
        publish_stage(config, RunDir(tmp_path / "run"), ModelContract.load(MODEL, tmp_path / "repo"))
    config_file = tmp_path / "strict.yaml"
    config_file.write_text(yaml.safe_dump(_raw(config)))
    refused = cli("publish", "--run-dir", str(tmp_path / "run"), "--config", str(config_file))
    assert refused.exit_code == 1 and "refused: the quality gate refused this model" in refused.stderr
    assert registry.versions(tmp_path / "repo", MODEL) == []


def test_seed_repository_fills_an_empty_one_once(tmp_path: Path) -> None:
    config = config_from_dict({**TINY, "publish": {"repository": str(tmp_path / "fresh")}}, "tiny.yaml")
    assert seed_repository(config)
    model_dir = tmp_path / "fresh" / MODEL
    assert {p.name for p in model_dir.iterdir()} == {"config.pbtxt", "configs", "labels.txt", "model.py"}
    assert (model_dir / "model.py").resolve() == (tmp_path / "fresh" / "onnx_runner.py").resolve()
    assert ModelContract.load(MODEL, tmp_path / "fresh") == ModelContract.load(MODEL)
    assert not seed_repository(config)  # already there: left alone


def test_the_crack_config_runs_the_same_pipeline(tmp_path: Path) -> None:
    """One pipeline, another model: the crack config at test size into a scratch repository."""
    raw = yaml.safe_load((CONFIG_DIR / "crack.yaml").read_text())
    raw |= {
        "data": {"kind": "procedural", "generator": "cracks", "train": 4, "val": 2, "test": 2},
        "augment": {**raw["augment"], "crop": [32, 32]},
        "train": {"steps": 2, "batch_size": 2, "threads": 1, "checkpoint_every": 2},
        "evaluate": {"batch_size": 2, "worst_k": 1},
        "export": {"parity_images": 2},
        "gate": {"min_served_agreement": 0.0, "max_regression": 1.0},
        "publish": {"repository": str(tmp_path / "repo")},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "input_size": [64, 64],
    }
    make_repository(tmp_path / "repo", size=(64, 64), model=CRACKS)
    result = run_pipeline(config_from_dict(raw, "crack.yaml"), tmp_path / "run")
    assert result.version == 1 and result.parity.served_engine == "openvino"
    assert {"miou", "iou/crack", "dice/crack"} <= result.evaluation.metrics().keys()
    card = registry.read_card(tmp_path / "repo", 1, CRACKS)
    assert card["classes"] == ["background", "crack"] and card["data"]["spec"]["generator"] == "cracks"
    assert "dice crack" in (tmp_path / "repo" / CRACKS / "1" / "MODEL_CARD.md").read_text()


@pytest.mark.slow  # five processes, each importing torch: ~35 s
def test_stage_commands_share_a_run_directory(tmp_path: Path, prodseg: Callable[..., Any]) -> None:
    """train -> export -> evaluate -> publish, each its own process, on one run directory."""
    config = tiny_config(tmp_path)
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(_raw(config)))
    common = ["--run-dir", str(tmp_path / "run"), "--config", str(config_file)]
    for stage, expect in [
        ("train", "trained 4 steps"),
        ("export", "agreement with PyTorch"),
        ("evaluate", "gate ok: no published version"),
        ("publish", f"published {MODEL} version 1"),
    ]:
        done = prodseg(stage, *common)
        assert done.returncode == 0 and expect in done.stderr, (stage, done.stderr)
    again = prodseg("train", *common)  # a finished run is not silently retrained
    assert again.returncode == 2 and "pass --resume" in again.stderr and "Traceback" not in again.stderr
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    run = MlflowClient(info["tracking_uri"]).get_run(info["run_id"])  # all four stages in one run
    assert {"summary/steps", "parity/onnxruntime", "test/miou"} <= run.data.metrics.keys()
    assert run.data.tags["published_version"] == "1"


def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, cli: Callable[..., Any]) -> None:
    repository = make_repository(tmp_path / "repo")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "model": {"encoder": "resnet9"}}))
    cases = [
        (
            ("pipeline", "--config", str(bad), "--run-dir", str(tmp_path / "r")),
            "bad.yaml: model.encoder: unknown encoder",
        ),
        (
            (
                "train",
                "--run-dir",
                str(tmp_path / "r"),
                "-c",
                str(CONFIG_DIR / "tiny.yaml"),
                "--set",
                "train.stepz=3",
            ),
            "unknown key(s) ['stepz']",
        ),
        (
            (
                "export",
                "--run-dir",
                str(tmp_path / "empty"),
                "--config",
                str(CONFIG_DIR / "tiny.yaml"),
                "--repository",
                str(repository),
            ),
            "run.json is missing: run `prodseg train`",
        ),  # fmt: skip
        (("promote", "7", "--model", MODEL, "--repository", str(repository)), "version 7 is not published"),
        (("rollback", "-m", MODEL, "--repository", str(repository)), "no alias 'production' to roll back"),
        (
            ("build-engine", "1", "--model", MODEL, "--repository", str(repository)),
            "TensorRT engine builds need an NVIDIA GPU",
        ),
    ]
    for args, message in cases:
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and result.stderr.startswith("error:"), (args, result.stderr)
        assert "Traceback" not in result.output
    assert (
        registry.versions(repository, MODEL) == []
    )  # nothing half-written, no run directories, no MLflow runs
    assert not (tmp_path / "r").exists() and not (tmp_path / "empty").exists()
    assert not (tmp_path / "ambient-mlflow.db").exists()


def test_no_command_trains_a_default_model(cli: Callable[..., Any]) -> None:
    for args in (("pipeline",), ("train", "--run-dir", "x"), ("promote", "1"), ("rollback",)):
        result = cli(*args)
        assert result.exit_code == 2 and "Missing option" in result.output, (args, result.output)


def test_every_command_explains_itself(cli: Callable[..., Any]) -> None:
    commands = ("pipeline", "train", "export", "evaluate", "publish", "promote", "rollback", "build-engine")
    for command in (*commands, "azureml-job"):
        result = cli(command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output, command
