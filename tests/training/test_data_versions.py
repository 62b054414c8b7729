"""Versioned feedback with real DVC: snapshots, versions, checkouts, an unreachable remote, lineage.

Feedback is written by the gateway's own FeedbackStore into a scratch data folder; every workspace
and DVC remote lives under tmp_path (a local folder remote: no network).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clients.contract import ModelContract
from clients.masks import encode_mask_png
from gateway.feedback import FeedbackStore
from prodseg.cli import app
from tests.training import mlflow_helpers
from training.data_versions import PROJECT_ROOT, DataWorkspace, code_commit, data_lineage

pytest.importorskip("dvc")  # the training extra

# A scratch MLflow store per test that needs one (tests/training/mlflow_helpers.py).
empty_mlflow_store = mlflow_helpers.empty_mlflow_store
mlflow_uri = mlflow_helpers.mlflow_uri

CRACKS = "crack_segmenter"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def add_feedback(
    store: FeedbackStore, contract: ModelContract, count: int, seed: int, size: tuple[int, int] = (24, 32)
) -> None:
    """``count`` segmentation corrections (image + mask of class ids) through the gateway's store."""
    rng = np.random.default_rng(seed)
    height, width = size
    for _ in range(count):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        mask = rng.integers(0, contract.num_classes, (height, width), dtype=np.uint8)
        store.add(contract, _png(image), height, width, None, encode_mask_png(mask), None, "1", None, None)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def cracks() -> ModelContract:
    return ModelContract.load(CRACKS)


@pytest.fixture
def feedback_root(tmp_path: Path) -> Path:
    return tmp_path / "gateway" / "feedback"  # what the gateway's data dir holds


@pytest.fixture
def cli(tmp_path: Path, feedback_root: Path) -> Any:
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        env = {"COLUMNS": "300", "PRODSEG_GATEWAY_DATA_DIR": str(feedback_root.parent)}
        env |= {"PRODSEG_DATA_WORKSPACE": str(tmp_path / "workspace")}
        env |= {"PRODSEG_DVC_REMOTE": str(tmp_path / "remote")}  # never out/dvc-remote of this checkout
        return runner.invoke(app, list(args), env=env)

    return invoke


def test_snapshots_version_new_feedback_only_and_checkouts_restore_each_exactly(
    tmp_path: Path, cracks: ModelContract, feedback_root: Path
) -> None:
    store = FeedbackStore(feedback_root)
    remote = tmp_path / "remote"
    workspace = DataWorkspace(tmp_path / "workspace", str(remote))
    add_feedback(store, cracks, 3, seed=0)
    at_v1 = files_of(store.folder(CRACKS))

    first = workspace.snapshot(CRACKS, feedback_root, "first labels")
    assert first.created and first.version is not None
    assert (first.version.id, first.version.entries, first.version.pushed) == (
        f"feedback/{CRACKS}/v1",
        3,
        True,
    )
    assert first.version.files == len(at_v1) == 7  # index.jsonl + 3 images + 3 masks
    assert sum(1 for p in remote.rglob("*") if p.is_file()) >= 7  # the objects reached the remote

    add_feedback(store, cracks, 2, seed=1)
    at_v2 = files_of(store.folder(CRACKS))
    second = workspace.snapshot(CRACKS, feedback_root)
    assert second.created and second.version is not None and second.version.id == f"feedback/{CRACKS}/v2"
    assert second.version.entries == 5 and second.version.md5 != first.version.md5

    again = workspace.snapshot(CRACKS, feedback_root)
    assert not again.created and again.version == second.version
    assert [(v.number, v.entries, v.message) for v in workspace.versions(CRACKS)] == [
        (1, 3, "first labels"),
        (2, 5, None),
    ]

    version, folder = workspace.checkout(CRACKS, "v1", tmp_path / "v1")
    assert version.number == 1 and files_of(folder) == at_v1

    # Lineage: the checkout is recognised as v1 by its content, wherever it lies; the workspace's
    # DVC-tracked copy by its .dvc file; a changed copy is not v1 any more.
    assert data_lineage("folder", [folder], workspace=workspace)["id"] == f"feedback/{CRACKS}/v1"
    tracked = data_lineage("folder", [workspace.root / "feedback" / CRACKS], workspace=workspace)
    assert tracked["sources"][0]["dvc_md5"] == second.version.md5
    (folder / "images" / "extra.png").write_bytes(b"not in v1")
    assert data_lineage("folder", [folder], workspace=workspace)["id"] == f"untracked:{folder}"

    # Without the local cache the files come from the remote: what was pushed is the whole version.
    shutil.rmtree(workspace.root / ".dvc" / "cache")
    version, folder = workspace.checkout(CRACKS, "latest", tmp_path / "v2")
    assert version.number == 2 and files_of(folder) == at_v2


def test_a_half_written_entry_or_one_missing_files_is_left_out(
    tmp_path: Path, cracks: ModelContract, feedback_root: Path
) -> None:
    store = FeedbackStore(feedback_root)
    add_feedback(store, cracks, 2, seed=0)
    complete = [record["id"] for record in store.records(CRACKS)]
    index = store.folder(CRACKS) / "index.jsonl"
    lost = {"id": "lost", "files": ["images/lost.png", "masks/lost.png"], "kind": "correction"}
    with open(index, "a") as handle:
        handle.write(json.dumps(lost) + "\n")
        handle.write('{"id": "still-being-writ')  # the gateway is mid-append
    workspace = DataWorkspace(tmp_path / "workspace", str(tmp_path / "remote"))

    result = workspace.snapshot(CRACKS, feedback_root)
    assert result.version is not None and result.version.entries == 2 and result.skipped == ["lost"]
    _, folder = workspace.checkout(CRACKS, "1", tmp_path / "v1")
    kept = [json.loads(line)["id"] for line in (folder / "index.jsonl").read_text().splitlines()]
    assert kept == complete
    assert len(files_of(folder)) == 5


def test_an_unreachable_remote_keeps_the_version_and_the_command_says_what_failed(
    tmp_path: Path, cracks: ModelContract, feedback_root: Path, cli: Any
) -> None:
    store = FeedbackStore(feedback_root)
    add_feedback(store, cracks, 2, seed=0)
    at_v1 = files_of(store.folder(CRACKS))
    (tmp_path / "unmounted").write_text("a file where the remote's folder should be")
    unreachable = tmp_path / "unmounted" / "remote"

    done = cli("data", "snapshot", "--model", CRACKS, "--remote", str(unreachable), "--message", "m1")
    assert done.exit_code == 1, done.output
    assert "push" in done.output and str(unreachable) in done.output
    listed = json.loads(cli("data", "versions", "--model", CRACKS, "--json").stdout)
    assert [(v["id"], v["pushed"]) for v in listed] == [(f"feedback/{CRACKS}/v1", False)]
    assert listed[0]["push_error"]

    # Still versioned locally: the checkout comes from the cache.
    restored = cli("data", "checkout", "--model", CRACKS, "--version", "1", "--out", str(tmp_path / "v1"))
    assert restored.exit_code == 0, restored.output
    assert files_of(tmp_path / "v1") == at_v1
    add_feedback(store, cracks, 1, seed=1)
    assert cli("data", "snapshot", "--model", CRACKS, "--remote", str(unreachable)).exit_code == 1

    # The remote is back: nothing new, but both unpushed versions are pushed now.
    good = tmp_path / "remote"
    done = cli("data", "snapshot", "--model", CRACKS, "--remote", str(good))
    assert done.exit_code == 0, done.output
    assert "nothing new" in done.output and done.stdout.strip() == f"feedback/{CRACKS}/v2"
    listed = json.loads(cli("data", "versions", "--model", CRACKS, "--json").stdout)
    assert [(v["pushed"], v["remote"]) for v in listed] == [(True, str(good))] * 2
    shutil.rmtree(tmp_path / "workspace" / ".dvc" / "cache")  # v1 can only come from the remote now
    restored = cli("data", "checkout", "--model", CRACKS, "--version", "1", "--out", str(tmp_path / "v1b"))
    assert restored.exit_code == 0, restored.output
    assert files_of(tmp_path / "v1b") == at_v1


def test_bad_input_is_named_with_exit_code_2(
    tmp_path: Path, cracks: ModelContract, feedback_root: Path, cli: Any
) -> None:
    add_feedback(FeedbackStore(feedback_root), cracks, 1, seed=0)
    done = cli("data", "snapshot", "--model", "no_such_model")
    assert done.exit_code == 2 and "no feedback for no_such_model" in done.output and CRACKS in done.output
    assert cli("data", "snapshot", "--model", CRACKS).exit_code == 0
    done = cli("data", "checkout", "--model", CRACKS, "--version", "7")
    assert done.exit_code == 2 and f"feedback/{CRACKS}/v1" in done.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    done = cli("data", "checkout", "--model", CRACKS, "--out", str(tmp_path / "busy"))
    assert done.exit_code == 2 and "not an empty folder" in done.output
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_code_commit_names_head_and_whether_the_tree_was_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "code"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "train.py").write_text("print(1)\n")
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout
    assert code_commit(repo) == {"commit": head.strip(), "dirty": False}
    (repo / "train.py").write_text("print(2)\n")
    assert code_commit(repo) == {"commit": head.strip(), "dirty": True}

    monkeypatch.delenv("PRODSEG_CODE_COMMIT", raising=False)
    (tmp_path / "no-git").mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git must not find a repo above
    assert code_commit(tmp_path / "no-git") == {"commit": None, "dirty": None}
    monkeypatch.setenv("PRODSEG_CODE_COMMIT", "abc123")  # an image built without .git
    assert code_commit(tmp_path / "no-git") == {"commit": "abc123", "dirty": None}


@pytest.mark.slow  # 25-32 s on 2 busy cores: DVC processes, torch and MLflow imports
def test_a_run_on_a_feedback_version_names_it_and_the_commit_in_mlflow_and_the_card(
    tmp_path: Path, feedback_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """feedback -> snapshot -> checkout -> the pipeline's data stage on it (MLflow tags, data.json)
    -> the registry's card of that run's lineage. No model is trained: the card's other fields are
    stand-ins."""
    pytest.importorskip("torch")
    import yaml
    from mlflow.tracking import MlflowClient

    from tests.training.helpers import MODEL, make_repository
    from training import registry
    from training.config import CONFIG_DIR, config_from_dict
    from training.pipeline import RunDir, open_tracker, prepare_data

    repository = make_repository(tmp_path / "repo")  # shelf_segmenter at 96x160
    contract = ModelContract.load(MODEL, repository)
    add_feedback(FeedbackStore(feedback_root), contract, 6, seed=0, size=(96, 160))
    monkeypatch.setenv("PRODSEG_DATA_WORKSPACE", str(tmp_path / "workspace"))
    workspace = DataWorkspace(remote=str(tmp_path / "remote"))
    workspace.snapshot(MODEL, feedback_root)
    _, train_set = workspace.checkout(MODEL, "1", tmp_path / "train_set")

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    raw = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    raw |= {
        "data": {"kind": "folder", "root": str(train_set), "val_fraction": 0.2, "test_fraction": 0.2},
        "publish": {"repository": str(repository)},
        "tracking": {"uri": tracking},
    }
    config = config_from_dict(raw, "tiny.yaml")
    run = RunDir(tmp_path / "run")
    with open_tracker(config, run) as tracker:
        prepare_data(config, run, contract, tracker)
        run_id = tracker.run_id

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    tags = MlflowClient(tracking).get_run(run_id).data.tags
    assert tags["data_version"] == f"feedback/{MODEL}/v1"
    assert tags["code_commit"] == tags["mlflow.source.git.commit"] == head
    lineage = json.loads(run.data_json.read_text())["lineage"]
    assert lineage["code_commit"]["commit"] == head and isinstance(lineage["code_commit"]["dirty"], bool)

    # A later stage (export, evaluate) rebuilds the splits but keeps the lineage the run trained on.
    first = sorted((train_set / "images").iterdir())[0]
    shutil.copy(first, train_set / "images" / "late.png")
    shutil.copy(train_set / "masks" / first.name, train_set / "masks" / "late.png")
    prepare_data(config, run, contract)
    assert json.loads(run.data_json.read_text())["lineage"] == lineage

    (tmp_path / "model.onnx").write_bytes(b"stand-in")
    card = registry.model_card(
        contract=contract,
        model={"arch": "Unet", "encoder": "tu-mobilenetv3_small_100"},
        params=1,
        data=json.loads(run.data_json.read_text()),
        training={},
        evaluation={},
        parity={},
        onnx_path=tmp_path / "model.onnx",
        opset=17,
        data_version=lineage["data_version"],
        code_commit=lineage["code_commit"],
    )
    assert card["data_version"]["id"] == f"feedback/{MODEL}/v1" and card["code_commit"]["commit"] == head
    markdown = registry.card_markdown({**card, "version": 1})
    assert f"| data version | feedback/{MODEL}/v1 |" in markdown and f"| code commit | {head}" in markdown


# --- base training sets -------------------------------------------------------------------------


def test_a_base_set_is_tracked_beside_the_feedback_and_either_kind_is_restored(
    tmp_path: Path, cracks: ModelContract, feedback_root: Path, cli: Any
) -> None:
    from datagen.cracks import write_crack_folder

    add_feedback(FeedbackStore(feedback_root), cracks, 2, seed=0)
    assert cli("data", "snapshot", "--model", CRACKS).stdout.strip() == f"feedback/{CRACKS}/v1"
    base = tmp_path / "crack-base"
    write_crack_folder(base, count=3, seed=0, height=32, width=32)
    at_v1 = files_of(base)

    done = cli("data", "track", "--model", CRACKS, str(base), "--message", "first base set")
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == f"base/{CRACKS}/v1" and "3 images, 6 files" in done.stderr
    again = cli("data", "track", "--model", CRACKS, str(base))
    assert again.exit_code == 0 and "nothing new since" in again.stderr

    write_crack_folder(base, count=4, seed=0, height=32, width=32)  # one more image: a new version
    assert cli("data", "track", "--model", CRACKS, str(base)).stdout.strip() == f"base/{CRACKS}/v2"

    listed = json.loads(cli("data", "versions", "--model", CRACKS, "--json").stdout)
    assert [(v["id"], v["entries"], v["pushed"]) for v in listed] == [
        (f"base/{CRACKS}/v1", 3, True),
        (f"base/{CRACKS}/v2", 4, True),
        (f"feedback/{CRACKS}/v1", 2, True),
    ]
    assert listed[0]["source"] == str(base.resolve()) and listed[0]["message"] == "first base set"
    table = cli("data", "versions", "--model", CRACKS)
    assert f"base/{CRACKS}/v2" in table.output and f"feedback/{CRACKS}/v1" in table.output

    # Either kind comes back, the base set from the remote alone too.
    shutil.rmtree(tmp_path / "workspace" / ".dvc" / "cache")
    restored = cli(
        "data", "checkout", "--model", CRACKS, "--version", "base/v1", "--out", str(tmp_path / "b1")
    )
    assert restored.exit_code == 0, restored.output
    assert files_of(tmp_path / "b1") == at_v1
    restored = cli("data", "checkout", "--model", CRACKS, "--version", "1", "--out", str(tmp_path / "f1"))
    assert restored.exit_code == 0 and (tmp_path / "f1" / "index.jsonl").is_file()
    assert cli("data", "checkout", "--model", CRACKS, "--version", "base/v3").exit_code == 2

    # A run on the base folder names its base version; one on the restored v1, v1.
    workspace = DataWorkspace(tmp_path / "workspace")
    lineage = data_lineage("folder", [base], workspace=workspace)
    assert (lineage["id"], lineage["base_version"], lineage["feedback_version"]) == (
        f"base/{CRACKS}/v2",
        f"base/{CRACKS}/v2",
        None,
    )
    assert (
        data_lineage("folder", [tmp_path / "b1"], workspace=workspace)["base_version"] == f"base/{CRACKS}/v1"
    )


def test_tracking_a_missing_path_exits_2_naming_it_and_an_unreachable_remote_keeps_the_version(
    tmp_path: Path, cli: Any
) -> None:
    from datagen.cracks import write_crack_folder

    missing = tmp_path / "no-such-set"
    done = cli("data", "track", "--model", CRACKS, str(missing))
    assert done.exit_code == 2 and str(missing) in " ".join(done.stderr.split())
    assert "does not exist" in done.stderr and "Traceback" not in done.output
    assert cli("data", "track", str(missing)).exit_code == 2  # no --model
    assert cli("data", "track", "--model", CRACKS).exit_code == 2  # neither PATH nor --config

    base = tmp_path / "crack-base"
    write_crack_folder(base, count=2, seed=0, height=32, width=32)
    (tmp_path / "unmounted").write_text("a file where the remote's folder should be")
    unreachable = tmp_path / "unmounted" / "remote"
    done = cli("data", "track", "--model", CRACKS, str(base), "--remote", str(unreachable))
    assert done.exit_code == 1, done.output
    assert f"push of base/{CRACKS}/v1" in done.stderr and str(unreachable) in done.stderr
    listed = json.loads(cli("data", "versions", "--model", CRACKS, "--json").stdout)
    assert [(v["id"], v["pushed"]) for v in listed] == [(f"base/{CRACKS}/v1", False)]
    restored = cli(
        "data", "checkout", "--model", CRACKS, "--version", "base/latest", "--out", str(tmp_path / "b")
    )
    assert restored.exit_code == 0 and files_of(tmp_path / "b") == files_of(base)  # from the local cache

    done = cli("data", "track", "--model", CRACKS, str(base), "--remote", str(tmp_path / "remote"))
    assert done.exit_code == 0 and "nothing new" in done.stderr  # and now pushed
    assert json.loads(cli("data", "versions", "--model", CRACKS, "--json").stdout)[0]["pushed"]


@pytest.mark.slow  # ~40 s on 2 busy cores: DVC processes, torch and MLflow imports
def test_a_procedural_base_set_tracked_from_its_config_is_named_with_the_feedback_in_a_retrain_run(
    tmp_path: Path, feedback_root: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str, cli: Any
) -> None:
    """`prodseg data track --config` renders tiny.yaml's procedural scenes into a base version; a
    retrain's lineage (data.json, MLflow params and tags, the model card) names it and the feedback."""
    pytest.importorskip("torch")
    import yaml
    from mlflow.tracking import MlflowClient

    from tests.training.helpers import MODEL, make_repository
    from training import registry
    from training.config import CONFIG_DIR, load_config
    from training.data_versions import config_lineage
    from training.pipeline import RunDir, open_tracker, prepare_data
    from training.retrain import _write_lineage

    repository = make_repository(tmp_path / "repo")  # shelf_segmenter at 96x160
    raw = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    raw |= {"publish": {"repository": str(repository)}, "tracking": {"uri": mlflow_uri}}
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PRODSEG_DATA_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("PRODSEG_DVC_REMOTE", str(tmp_path / "remote"))

    done = cli("data", "track", "--config", str(config_file))
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == f"base/{MODEL}/v1"
    assert cli("data", "track", "--config", str(config_file)).stdout.strip() == f"base/{MODEL}/v1"  # same
    restored = tmp_path / "base-v1"
    assert (
        cli("data", "checkout", "--model", MODEL, "--version", "base/v1", "--out", str(restored)).exit_code
        == 0
    )
    counts = {split: len(list((restored / split / "images").iterdir())) for split in ("train", "val", "test")}
    assert counts == {"train": 4, "val": 2, "test": 2}  # tiny.yaml's sizes, rendered at 96x160

    config = load_config(config_file)
    lineage = config_lineage(config)
    assert lineage["id"] == lineage["base_version"] == f"base/{MODEL}/v1"
    assert lineage["sources"][0]["recipe"] == "procedural:shelves:seed=0:4/2/2"
    other = load_config(config_file, {"data.seed": 1})  # another recipe: not that version
    assert config_lineage(other)["base_version"] is None
    assert config_lineage(other)["id"] == "procedural:shelves:seed=1:4/2/2"

    # A retrain's lineage: the base version and the feedback version it trains on.
    contract = config.contract()
    add_feedback(FeedbackStore(feedback_root), contract, 4, seed=0, size=(96, 160))
    workspace = DataWorkspace()
    workspace.snapshot(MODEL, feedback_root)
    _, checkout = workspace.checkout(MODEL, "1", tmp_path / "run" / "feedback")
    run = RunDir(tmp_path / "run")
    _write_lineage(config, run, checkout)
    with open_tracker(config, run) as tracker:
        prepare_data(config, run, contract, tracker)
        run_id = tracker.run_id
    recorded = json.loads(run.data_json.read_text())["lineage"]["data_version"]
    assert recorded["id"] == f"base/{MODEL}/v1 + feedback/{MODEL}/v1"
    assert (recorded["base_version"], recorded["feedback_version"]) == (
        f"base/{MODEL}/v1",
        f"feedback/{MODEL}/v1",
    )
    tracked = MlflowClient(mlflow_uri).get_run(run_id).data
    assert tracked.params["data_version.base"] == f"base/{MODEL}/v1"
    assert tracked.params["data_version.feedback"] == f"feedback/{MODEL}/v1"
    assert tracked.tags["data_version"] == recorded["id"]

    (tmp_path / "model.onnx").write_bytes(b"stand-in")
    card = registry.model_card(
        contract=contract,
        model=config.to_dict()["model"],
        params=1,
        data=json.loads(run.data_json.read_text()),
        training={},
        evaluation={},
        parity={},
        onnx_path=tmp_path / "model.onnx",
        opset=17,
        data_version=recorded,
    )
    markdown = registry.card_markdown({**card, "version": 1})
    assert f"| base data version | base/{MODEL}/v1 |" in markdown
    assert f"| feedback data version | feedback/{MODEL}/v1 |" in markdown
