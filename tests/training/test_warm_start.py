"""Warm starts: a run from ``initial_weights`` begins exactly where the production model is (its whole
network: encoder, decoder and head), and weights of another network are refused, naming the file.

"Production" is tiny.yaml trained for a few steps on a 96x160 contract; the retrain-style run trains
on other scenes with another seed, as `prodseg retrain` trains on base data plus feedback.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the training extra; serving-only installs skip this module

import torch  # noqa: E402

from clients.contract import ModelContract  # noqa: E402
from tests.training.helpers import MODEL, make_repository  # noqa: E402
from training.config import CONFIG_DIR, PipelineConfig, load_config  # noqa: E402
from training.datasets import ProceduralDataset  # noqa: E402
from training.export import ServingModel, torch_predictor  # noqa: E402
from training.tasks import DataSplits, adapter_for  # noqa: E402
from training.train import (  # noqa: E402
    WEIGHTS_FILE,
    CheckpointError,
    load_trained_model,
    read_weights,
    save_weights,
    train,
)

SEGMENTATION = adapter_for("segmentation")


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory) -> ModelContract:
    return ModelContract.load(MODEL, make_repository(tmp_path_factory.mktemp("repo")))  # 96x160 input


@pytest.fixture(scope="module")
def config() -> PipelineConfig:
    tiny = load_config(CONFIG_DIR / "tiny.yaml")
    # fp32 in the default memory format, as load_trained_model rebuilds a model: equal numerics.
    return dataclasses.replace(tiny, train=dataclasses.replace(tiny.train, bf16=False))


@pytest.fixture(scope="module")
def splits(config: PipelineConfig, contract: ModelContract, tmp_path_factory) -> DataSplits:
    return SEGMENTATION.build_splits(config, contract, tmp_path_factory.mktemp("work"))


@pytest.fixture(scope="module")
def production(config: PipelineConfig, contract: ModelContract, splits: DataSplits, tmp_path_factory) -> Path:
    """The checkpoint of a trained "production" run; its weights.pt is kept beside it."""
    folder = tmp_path_factory.mktemp("production")
    train(config, contract, splits.train, splits.val, checkpoint=folder / "last.pt")
    save_weights(folder / "last.pt", folder / WEIGHTS_FILE)
    return folder / "last.pt"


def val_score(model: torch.nn.Module, config: PipelineConfig, contract: ModelContract, val) -> float:
    """The headline metric of ``model`` on ``val``, scored as the trainer validates."""
    serving = ServingModel(model, SEGMENTATION.serving_head(contract))
    predict = torch_predictor(serving, contract.output_names)
    scored = SEGMENTATION.evaluate(predict, val, contract, "pytorch", worst_k=0, batch_size=2)
    return scored.metrics()[SEGMENTATION.headline]


def test_a_retrain_style_run_begins_at_the_production_models_score(
    config: PipelineConfig, contract: ModelContract, splits: DataSplits, production: Path
) -> None:
    production_model = load_trained_model(production, contract)
    production_score = val_score(production_model, config, contract, splits.val)
    weights = production.parent / WEIGHTS_FILE
    assert read_weights(weights)["model_spec"] == config.to_dict()["model"]
    assert weights.stat().st_size < production.stat().st_size / 2  # no optimiser state

    other_scenes = ProceduralDataset("train", 4, 7, contract.height, contract.width, contract.labels)
    retrain = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=1))
    result = train(retrain, contract, other_scenes, splits.val, initial_weights=weights)

    assert result.summary.initial_val_score == pytest.approx(production_score, abs=1e-9)
    trained, started = result.model.state_dict(), production_model.state_dict()
    assert any(not torch.equal(trained[key], started[key]) for key in started)  # and it trained on

    # The encoder alone (how warm starts used to load) does not start from production's score.
    encoder_only = production.parent / "state_dict.pt"
    torch.save(started, encoder_only)
    spec = dataclasses.replace(config.model, encoder_weights=encoder_only)
    torch.manual_seed(config.train.seed)
    half_warm = SEGMENTATION.build_model(spec, contract)
    assert val_score(half_warm.eval(), config, contract, splits.val) != pytest.approx(production_score)

    # A run from scratch validates nothing before its first step.
    cold = train(retrain, contract, other_scenes, None)
    assert cold.summary.initial_val_score is None


def test_weights_of_another_network_are_refused_naming_the_file(
    config: PipelineConfig, contract: ModelContract, splits: DataSplits, production: Path, tmp_path: Path
) -> None:
    narrow = dataclasses.replace(config.model, options={"decoder_channels": [8, 8, 8, 8, 8]})
    other = tmp_path / "narrow-decoder.pt"
    torch.save(SEGMENTATION.build_model(narrow, contract).state_dict(), other)
    refused = re.escape(f"{other}: not the weights of this network (") + ".*of another shape"
    with pytest.raises(CheckpointError, match=refused):
        train(config, contract, splits.train, None, initial_weights=other)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torch")
    with pytest.raises(CheckpointError, match=re.escape(f"{junk}: not a readable weights file")):
        train(config, contract, splits.train, None, initial_weights=junk)

    partial = dict(read_weights(production)["model"])
    dropped = sorted(partial)[-1]
    del partial[dropped]
    with pytest.raises(CheckpointError, match=f"the initial weights: .*1 missing: {re.escape(dropped)}"):
        train(config, contract, splits.train, None, initial_weights=partial)
