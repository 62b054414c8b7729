"""Publish a classifier version into the Triton repository, with its model card.

The layout is the registry's (:mod:`training.registry`): ``<repository>/<model>/<N>/`` holds
``model.onnx``, ``model_card.json``, ``MODEL_CARD.md``, the evaluation plots and a relative
symlink ``model.py -> ../model.py``. It is assembled in a hidden staging folder inside the model
folder (Triton ignores non-integer names) and renamed into place, so Triton never sees half a
version and none is overwritten. The model folder must already hold its contract
(``config.pbtxt``), and the contract must match what was trained (task, classes, input size).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clients.contract import ModelContract, Task
from clients.repository import versions


class PublishError(ValueError):
    """A version that cannot be published; the message says which file and why."""


def check_contract(contract: ModelContract, classes: Sequence[str], height: int, width: int) -> None:
    """The served contract must be what the run trained: a classifier of these classes at this size."""
    problems = []
    if contract.task != Task.CLASSIFICATION:
        problems.append(f"task is {contract.task}, not classification")
    if contract.labels.names != list(classes):
        problems.append(f"labels.txt names {contract.labels.names}, the run trained {list(classes)}")
    if (contract.height, contract.width) != (height, width):
        problems.append(f"input is {contract.height}x{contract.width}, the run trained {height}x{width}")
    if problems:
        raise PublishError(f"{contract.model_name}: " + "; ".join(problems))


def publish(
    repository: Path, model_name: str, onnx_path: Path, card: dict[str, Any], extra_files: Sequence[Path] = ()
) -> int:
    """Write the next version of ``model_name`` and return its number."""
    model_dir = Path(repository) / model_name
    if not (model_dir / "config.pbtxt").is_file():
        raise PublishError(f"{model_dir} has no config.pbtxt: not a model of the Triton repository")
    staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=model_dir))
    try:
        os.chmod(staging, 0o755)
        shutil.copyfile(onnx_path, staging / "model.onnx")
        for path in extra_files:
            shutil.copyfile(path, staging / Path(path).name)
        os.symlink(os.path.join("..", "model.py"), staging / "model.py")
        while True:
            taken = {int(p.name) for p in model_dir.iterdir() if p.name.isdigit()} | set(versions(model_dir))
            version = 1 + max(taken, default=0)
            full_card = {**card, "model_name": model_name, "version": version}
            (staging / "model_card.json").write_text(json.dumps(full_card, indent=2) + "\n")
            (staging / "MODEL_CARD.md").write_text(card_markdown(full_card))
            try:
                os.rename(staging, model_dir / str(version))  # fails if it exists: never overwrites
            except OSError:
                continue  # another publisher took the number: try the next one
            return version
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def file_digest(path: Path) -> dict[str, Any]:
    return {"bytes": Path(path).stat().st_size, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def card_markdown(card: dict[str, Any]) -> str:
    """The human half of the card: what the model is, how it was trained, how good it is on held-out data."""
    evaluation, parity, training = card["evaluation"], card["parity"], card["training"]
    rows = [
        ("model", f"{card['model_name']} v{card['version']} ({card['task']})"),
        ("backbone", f"timm {card['backbone']} (random init), {card['params'] / 1e6:.2f} M parameters"),
        (
            "input",
            f"uint8 RGB [N, {card['input_size'][0]}, {card['input_size'][1]}, 3]; normalisation in the graph",
        ),
        ("output", f"probabilities FP32 [N, {len(card['classes'])}] (softmax in the graph)"),
        ("classes", ", ".join(card["classes"])),
        ("data", card["data"]["description"]),
        (
            "training",
            f"{training['steps']} steps x {training['batch_size']} ({training['images_seen']} images "
            f"seen) in {training['train_s']} s on {training['threads']} CPU threads",
        ),
        (
            "held-out accuracy",
            f"{evaluation['accuracy']} ({evaluation['images']} images, {evaluation['engine']})",
        ),
        ("macro F1", str(evaluation["macro_f1"])),
    ]
    rows += [
        (f"{name} P / R / F1", f"{row['precision']} / {row['recall']} / {row['f1']}")
        for name, row in evaluation["per_class"].items()
    ]
    binary = evaluation.get("binary")
    if binary:
        rows += [
            ("ROC AUC / average precision", f"{binary['roc_auc']} / {binary['average_precision']}"),
            (
                "decision threshold",
                f"p({card['classes'][1]}) >= {binary['threshold']} (best F1 on {binary['validation_images']} "
                f"validation images); test accuracy at it {binary['at_threshold']['accuracy']}",
            ),
        ]
    rows += [
        (
            "parity vs PyTorch",
            f"ONNX Runtime max abs diff {parity['onnxruntime_max_abs_diff']}, "
            f"top-1 {parity['onnxruntime_top1_agreement']}; "
            f"OpenVINO ({parity['openvino_precision']}) max abs diff {parity['openvino_max_abs_diff']}, "
            f"top-1 {parity['openvino_top1_agreement']}",
        ),
        ("gate", "; ".join(card["gate"]["checks"])),
        ("created", card["created"]),
    ]
    lines = [f"# {card['model_name']} version {card['version']}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    lines += ["", "## Data", "", card["data"]["rule"], ""] if card["data"].get("rule") else [""]
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in evaluation.get("plots", [])]
    return "\n".join(lines) + "\n"
