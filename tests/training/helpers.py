"""Test helpers for training: scratch model repositories built from this checkout's files."""

from __future__ import annotations

import shutil
from pathlib import Path

from clients.contract import MODEL_NAME as MODEL
from clients.contract import default_repository, read_model_config


def make_repository(root: Path, size: tuple[int, int] | None = (96, 160)) -> Path:
    """A scratch repository with this checkout's configs, labels and runner (no versions).

    ``size`` rewrites the contract's input size (a small one keeps training tests fast; publishing
    to a repository with another input size is a supported case); None keeps 384x640.
    """
    source, model_dir = default_repository() / MODEL, root / MODEL
    model_dir.mkdir(parents=True)
    for name in ("config.pbtxt", "labels.txt", "model.py"):
        shutil.copy(source / name, model_dir / name)
    shutil.copytree(source / "configs", model_dir / "configs")
    if size is not None:
        for path in [model_dir / "config.pbtxt", *(model_dir / "configs").glob("*.pbtxt")]:
            path.write_text(path.read_text().replace("384, 640", f"{size[0]}, {size[1]}"))
    return root


def served_versions(repository: Path) -> dict[str, list[int] | str]:
    """What each served config loads: ``latest`` or the pinned versions."""
    model_dir = repository / MODEL
    served: dict[str, list[int] | str] = {}
    for path in [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]:
        policy = read_model_config(path).version_policy
        pinned = policy.WhichOneof("policy_choice") == "specific"
        served[str(path.relative_to(model_dir))] = list(policy.specific.versions) if pinned else "latest"
    return served
