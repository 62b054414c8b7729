"""Shared fixtures for the data tests: the served label map, a small SKU-110K folder, a tiny SAM."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from clients.contract import ModelContract
from clients.labels import LabelMap
from tests.training.helpers import MODEL


@pytest.fixture(scope="session")
def labels() -> LabelMap:
    return ModelContract.load(MODEL).labels


@pytest.fixture(scope="session")
def sku_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three generated 96x160 shelves in SKU-110K format: ``images/*.jpg`` + ``annotations.csv``.

    Shared by several tests: treat it as read-only.
    """
    from training.sku110k import write_sku110k_from_synth

    out = tmp_path_factory.mktemp("sku") / "sku"
    write_sku110k_from_synth(out, count=3, seed=0, height=96, width=160)
    return out


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.sam_bootstrap import build_tiny_sam

    return build_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam.pth")


@pytest.fixture
def prodseg() -> Callable[..., subprocess.CompletedProcess]:
    """Run the ``prodseg`` command line as a user does: a subprocess, output captured.

    A wide terminal keeps rich from wrapping messages, so tests can match them whole.
    """

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "prodseg.cli", *args]
        env = {**os.environ, "COLUMNS": "300"}
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    return run
