"""Retraining on feedback, end to end: served model -> corrections through the API -> `prodseg retrain`
-> gated on a feedback hold-out -> registered as `staging` -> promoted -> served by the same Triton.

Everything lives in a scratch repository (a 96x160 shelf_segmenter contract), a scratch MLflow store,
DVC workspace and remote, and its own Triton + gateway, stopped by PID. The corrections show a pattern
the served model never saw (magenta/green checkered price tags pasted on shelves), so it is wrong on
them and a retrain can learn them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

pytest.importorskip("torch")  # the training extra; serving-only installs skip this module

from clients.masks import encode_mask_png  # noqa: E402
from tests.training import mlflow_helpers  # noqa: E402
from tests.training.helpers import MODEL, make_repository  # noqa: E402

empty_mlflow_store = mlflow_helpers.empty_mlflow_store
mlflow_uri = mlflow_helpers.mlflow_uri

SIZE = (96, 160)  # the scratch contract's input: small, so training and serving take seconds
PRICE_TAG = 3  # shelf_segmenter's labels: background, product, shelf_edge, price_tag
CORRECTIONS = 24

# A small segmentation recipe: base data are procedural shelves; 2 threads would fight the other work.
CONFIG: dict[str, Any] = {
    "task": "segmentation",
    "model_name": MODEL,
    "data": {"kind": "procedural", "generator": "shelves", "seed": 0, "train": 24, "val": 4, "test": 8},
    "model": {
        "arch": "Unet",
        "encoder": "tu-mobilenetv3_small_100",
        "options": {"decoder_channels": [16, 16, 16, 16, 16]},
    },
    "augment": {"crop": [96, 160], "hflip": 0.5},
    "schedule": {"warmup_steps": 5},
    "optimizer": {"lr": 0.005},
    "train": {"steps": 80, "batch_size": 4, "seed": 0, "threads": 1, "checkpoint_every": 80},
    "evaluate": {"batch_size": 4, "worst_k": 0},
    "export": {"parity_images": 2},
    "gate": {"min_miou": 0.0, "max_regression": 0.05, "min_served_agreement": 0.9},
}


@pytest.fixture
def scratch(tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A scratch repository and config; MLflow, DVC workspace and remote under tmp_path (the
    environment is inherited by the `prodseg` subprocesses)."""
    monkeypatch.setenv("PRODSEG_DATA_WORKSPACE", str(tmp_path / "data"))
    monkeypatch.setenv("PRODSEG_DVC_REMOTE", str(tmp_path / "dvc-remote"))
    repository = make_repository(tmp_path / "repo", size=SIZE)
    config = tmp_path / "retrain.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "publish": {"repository": str(repository)}}))
    return {"repository": repository, "config": config, "feedback": tmp_path / "gateway" / "feedback"}


def mispredicted_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A shelf with checkered magenta/green price tags pasted on it, and its correct mask."""
    from datagen.shelves import render_scene

    scene = render_scene(10_000 + seed, *SIZE)
    image, mask = scene.image.copy(), scene.mask.copy()
    rng = np.random.default_rng(seed)
    for _ in range(3):
        height, width = int(rng.integers(14, 24)), int(rng.integers(20, 36))
        top, left = int(rng.integers(0, SIZE[0] - height)), int(rng.integers(0, SIZE[1] - width))
        rows, cols = np.indices((height, width))
        checkered = ((rows // 4 + cols // 4) % 2).astype(bool)
        image[top : top + height, left : left + width] = np.where(
            checkered[..., None], np.array([255, 0, 255], np.uint8), np.array([0, 200, 0], np.uint8)
        )
        mask[top : top + height, left : left + width] = PRICE_TAG
    return image, mask


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture
def served(scratch: dict[str, Path], prodseg: Callable[..., Any]) -> Iterator[tuple[Any, Any]]:
    """Version 1 trained on the base data and promoted to production, served by a Triton + gateway."""
    from prodseg.stack import GatewayProcess, serving_env
    from prodseg.triton_server import TritonServer

    first = prodseg(
        "pipeline",
        "--config",
        str(scratch["config"]),
        "--run-dir",
        str(scratch["repository"].parent / "run-v1"),
        "--set",
        "publish.promote=production",
    )
    assert first.returncode == 0, first.stderr
    logs = scratch["repository"].parent / "logs"
    logs.mkdir()
    triton = TritonServer(repository=scratch["repository"], models=(MODEL,), log_path=logs / "triton.log")
    triton.start()
    gateway = GatewayProcess(triton.grpc_url, data_dir=scratch["feedback"].parent, env=serving_env(triton))
    try:
        gateway.start()
        yield triton, gateway
    finally:
        gateway.stop()
        triton.stop()


def predict(gateway: Any, image: np.ndarray) -> Any:
    import httpx

    return httpx.post(
        f"{gateway.url}/v1/models/{MODEL}/images", files={"file": ("shelf.png", png(image))}, timeout=30
    )


@pytest.mark.triton
@pytest.mark.slow
def test_corrections_through_the_api_retrain_a_version_that_the_running_triton_serves(
    scratch: dict[str, Path], served: tuple[Any, Any], prodseg: Callable[..., Any], mlflow_uri: str
) -> None:
    import httpx
    from mlflow.tracking import MlflowClient

    triton, gateway = served
    pid = triton.process.pid

    # Users correct what version 1 got wrong, by prediction id.
    for seed in range(CORRECTIONS):
        image, mask = mispredicted_scene(seed)
        answer = predict(gateway, image)
        assert answer.status_code == 200 and answer.headers["X-Model-Version"] == "1"
        sent = httpx.post(
            f"{gateway.url}/v1/models/{MODEL}/feedback",
            data={"prediction_id": answer.headers["X-Prediction-Id"]},
            files={"mask": ("mask.png", encode_mask_png(mask))},
            timeout=30,
        )
        assert sent.status_code == 201, sent.text
    counts = httpx.get(f"{gateway.url}/v1/models/{MODEL}/feedback", timeout=30).json()
    assert counts["corrections"] == CORRECTIONS

    run_dir = scratch["repository"].parent / "run-retrain"
    done = prodseg(
        "retrain",
        "--model",
        MODEL,
        "--config",
        str(scratch["config"]),
        "--feedback-dir",
        str(scratch["feedback"]),
        "--run-dir",
        str(run_dir),
    )
    assert done.returncode == 0, done.stderr
    print(done.stderr)  # the loop's log (shown with -s)
    log = json.loads((run_dir / "retrain.json").read_text())

    # The loop's figures: every correction accounted for, a hold-out the candidate wins on.
    feedback, gate = log["feedback"], log["gate"]
    assert feedback["data_version"] == f"feedback/{MODEL}/v1" and feedback["corrections"] == CORRECTIONS
    assert feedback["train"] + feedback["holdout"] == CORRECTIONS and feedback["holdout"] >= 3
    assert log["data_version"].endswith(f"feedback/{MODEL}/v1")
    # Warm start: version 1's whole network, kept with it, so training began at its validation score.
    kept = scratch["repository"] / MODEL / "1" / "weights.pt"
    assert log["warm_start"] == {"from": 1, "weights": str(kept)}
    production_val = json.loads((scratch["repository"].parent / "run-v1" / "train.json").read_text())
    assert log["train"]["initial_val_score"] == pytest.approx(production_val["val_score"], abs=1e-6)
    holdout = gate["feedback_holdout"]
    assert holdout["production_version"] == 1 and holdout["candidate"] > holdout["production"]
    base = gate["base_test"]
    assert base["candidate"] >= base["production"] - base["max_regression"]
    assert gate["passed"] and log["version"] == 2
    assert log["aliases"] == [{"alias": "staging", "from": None, "to": 2}] and log["production"] == 1
    assert f"published {MODEL} version 2" in done.stderr and "staging: None -> 2" in done.stderr

    # Registered in MLflow with its lineage; staging moved, production did not.
    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    aliases = client.get_registered_model(MODEL).aliases
    assert {alias: int(version) for alias, version in aliases.items()} == {"production": 1, "staging": 2}
    assert f"feedback/{MODEL}/v1" in client.get_model_version(MODEL, "2").tags["data_version"]
    assert predict(gateway, mispredicted_scene(0)[0]).headers["X-Model-Version"] == "1"

    # Promoted: the running Triton reloads and serves version 2, no restart.
    promoted = prodseg(
        "promote",
        "2",
        "--model",
        MODEL,
        "--repository",
        str(scratch["repository"]),
        "--triton-url",
        triton.http_url,
    )
    assert promoted.returncode == 0, promoted.stderr
    print(promoted.stderr)  # the alias move and the reload (shown with -s)
    deadline = time.monotonic() + 30
    while predict(gateway, mispredicted_scene(0)[0]).headers["X-Model-Version"] != "2":
        assert time.monotonic() < deadline, "Triton did not serve version 2"
        time.sleep(0.5)
    assert triton.process.pid == pid and triton.process.poll() is None


def test_a_held_out_correction_stays_held_out_as_feedback_grows() -> None:
    """The hold-out is decided per entry id: later retrains never train on an earlier hold-out image."""
    from training.retrain import MIN_HOLDOUT, NothingToRetrain, split_holdout

    first = [f"entry-{i}" for i in range(30)]
    train, held = split_holdout(first, 0.3)
    assert sorted(train + held) == sorted(first) and not set(train) & set(held)
    assert 0.15 * len(first) <= len(held) <= 0.45 * len(first)
    assert split_holdout(list(reversed(first)), 0.3) == (train, held)  # order does not matter

    more_train, more_held = split_holdout(first + [f"entry-{i}" for i in range(30, 90)], 0.3)
    assert set(held) <= set(more_held) and set(train) <= set(more_train)

    few_train, few_held = split_holdout(first[:5], 0.1)  # 10 % of 5 rounds to nothing: the floor holds
    assert len(few_held) == MIN_HOLDOUT and len(few_train) == 2
    with pytest.raises(NothingToRetrain, match="too few"):
        split_holdout(first[:MIN_HOLDOUT], 0.3)


def test_no_new_corrections_exit_0_without_a_version(
    scratch: dict[str, Path], prodseg: Callable[..., Any], tmp_path: Path
) -> None:
    """No feedback at all, then only corrections older than the newest version: no run, no version."""
    arguments = ["retrain", "--model", MODEL, "--config", str(scratch["config"])]
    arguments += ["--feedback-dir", str(scratch["feedback"]), "--run-dir", str(tmp_path / "run")]

    nothing = prodseg(*arguments)
    assert nothing.returncode == 0, nothing.stderr
    assert "nothing to retrain" in nothing.stderr and "no new version" in nothing.stderr

    # A published version 1 (a copy of tiny's shape is not needed: only its card's time is read),
    # and corrections all made before it.
    version_dir = scratch["repository"] / MODEL / "1"
    version_dir.mkdir()
    (version_dir / "model.onnx").write_bytes(b"not read")
    (version_dir / "model_card.json").write_text(json.dumps({"created": "2026-01-01T00:00:00+00:00"}))
    folder = scratch["feedback"] / MODEL
    lines = []
    for number in range(5):
        image, mask = mispredicted_scene(number)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(exist_ok=True)
        (folder / "images" / f"e{number}.png").write_bytes(png(image))
        (folder / "masks" / f"e{number}.png").write_bytes(encode_mask_png(mask))
        files = [f"images/e{number}.png", f"masks/e{number}.png"]
        record = {"id": f"e{number}", "kind": "correction", "verdict": "wrong", "created_at": 1e9}
        lines.append(json.dumps(record | {"version": "1", "files": files}) + "\n")
    (folder / "index.jsonl").write_text("".join(lines))

    old = prodseg(*arguments)
    assert old.returncode == 0, old.stderr
    assert "no corrections of shelf_segmenter since version 1" in old.stderr.replace("\n", " ")
    assert sorted(p.name for p in (scratch["repository"] / MODEL).iterdir() if p.name.isdigit()) == ["1"]
    assert not (tmp_path / "run").exists()
