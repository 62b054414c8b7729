"""Fixtures of the chart tests: a model store as `prodseg publish` leaves it, with two models (and,
for the JPEG wire, the shelf model's companions)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clients import config_text
from clients.contract import default_repository
from clients.wire import wire_model_name
from tests.conftest import copy_model

MODEL = "shelf_segmenter"
SECOND = "second_model"  # a copy of the shelf model under another name: the store holds two models


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """The project's shelf model plus a second version, and a second model, as `prodseg publish`
    would leave them."""
    store = tmp_path / "store"
    store.mkdir()
    source = default_repository()
    for shared in ("onnx_runner.py", "jpeg_wire.py"):  # what model.py files link to
        shutil.copy2(source / shared, store / shared)
    copy_model(MODEL, store / MODEL)
    shutil.copytree(store / MODEL / "1", store / MODEL / "2", symlinks=True)
    shutil.copytree(store / MODEL, store / SECOND, symlinks=True)
    shutil.rmtree(store / SECOND / "2")
    for config in [store / SECOND / "config.pbtxt", *(store / SECOND / "configs").glob("*.pbtxt")]:
        config.write_text(config_text.set_string(config.read_text(), "name", SECOND))
    return store


@pytest.fixture
def store_with_jpeg_wire(store: Path) -> Path:
    """The store plus the JPEG wire's folders for the shelf model, as uploaded from the repository:
    the two shared steps and shelf_segmenter_jpeg. The second model has no wire folder."""
    for name in ("jpeg_decoder", "mask_encoder", wire_model_name(MODEL)):
        copy_model(name, store / name)
    return store
