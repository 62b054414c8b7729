"""Test helpers for training: scratch model repositories built from this checkout's files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from clients.contract import default_repository, read_model_config

MODEL = "shelf_segmenter"  # the model most training tests train (tiny.yaml names it)
CRACKS = "crack_segmenter"


def make_repository(root: Path, size: tuple[int, int] | None = (96, 160), model: str = MODEL) -> Path:
    """A scratch repository with this checkout's configs, labels and runner of ``model`` (no versions).

    ``size`` rewrites the contract's input size (a small one keeps training tests fast; publishing
    to a repository with another input size is a supported case); None keeps the served size.
    """
    checkout = default_repository()
    source, model_dir = checkout / model, root / model
    model_dir.mkdir(parents=True)
    if not (root / "onnx_runner.py").exists():
        shutil.copy(checkout / "onnx_runner.py", root / "onnx_runner.py")
    os.symlink(os.path.join("..", "onnx_runner.py"), model_dir / "model.py")
    for name in ("config.pbtxt", "labels.txt"):
        shutil.copy(source / name, model_dir / name)
    shutil.copytree(source / "configs", model_dir / "configs")
    if size is not None:
        served = read_model_config(source / "config.pbtxt").input[0].dims[:2]
        for path in [model_dir / "config.pbtxt", *(model_dir / "configs").glob("*.pbtxt")]:
            text = path.read_text().replace(f"{served[0]}, {served[1]}", f"{size[0]}, {size[1]}")
            path.write_text(text)
    return root


def served_versions(repository: Path, model: str = MODEL) -> dict[str, list[int] | str]:
    """What each served config loads: ``latest`` or the pinned versions."""
    model_dir = repository / model
    served: dict[str, list[int] | str] = {}
    for path in [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]:
        policy = read_model_config(path).version_policy
        pinned = policy.WhichOneof("policy_choice") == "specific"
        served[str(path.relative_to(model_dir))] = list(policy.specific.versions) if pinned else "latest"
    return served
