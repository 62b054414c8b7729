"""The segmentation adapter passes the shared adapter tests, on the crack model at 64x64."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")  # the training extra; serving-only installs skip this module

from clients.contract import ModelContract, Task  # noqa: E402
from tests.training.adapter_testers import AdapterTester  # noqa: E402
from tests.training.helpers import CRACKS, make_repository  # noqa: E402
from training.config import PipelineConfig, config_from_dict  # noqa: E402
from training.tasks import DataSplits, adapter_for  # noqa: E402


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("repo"), size=(64, 64), model=CRACKS)


@pytest.fixture(scope="module")
def contract(repository: Path) -> ModelContract:
    return ModelContract.load(CRACKS, repository)


@pytest.fixture(scope="module")
def config(repository: Path) -> PipelineConfig:
    raw = {
        "task": "segmentation",
        "model_name": CRACKS,
        "data": {"kind": "procedural", "generator": "cracks", "train": 3, "val": 1, "test": 2},
        "model": {
            "arch": "Unet",
            "encoder": "tu-mobilenetv3_small_100",
            "options": {"decoder_channels": [16] * 5, "decoder_attention_type": "scse"},
        },
        "augment": {
            "crop": [32, 32],
            "vflip": 0.5,
            "transpose": 0.5,
            "brightness": 0.2,
            "jpeg_probability": 0.5,
        },
        "train": {"steps": 1, "batch_size": 2, "threads": 1},
        "publish": {"repository": str(repository)},
    }
    return config_from_dict(raw, "segmentation-test.yaml")


@pytest.fixture(scope="module")
def splits(
    config: PipelineConfig, contract: ModelContract, tmp_path_factory: pytest.TempPathFactory
) -> DataSplits:
    return adapter_for(Task.SEGMENTATION).build_splits(config, contract, tmp_path_factory.mktemp("work"))


class TestSegmentationAdapter(AdapterTester):
    task = Task.SEGMENTATION
