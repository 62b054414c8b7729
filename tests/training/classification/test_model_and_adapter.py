"""The classification adapter as the pipeline calls it: splits, batches, network, loss, serving graph
(uint8 in, softmax probabilities out, batch dynamic) on every engine, evaluation and gate."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clients.contract import ModelContract
from training.classification.evaluate import Floors
from training.export import engine_predictor, export_onnx, serving_model, torch_predictor
from training.tasks import Check, adapter_for

REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"
TINY_NET = SimpleNamespace(encoder="test_efficientnet", options={}, encoder_weights=None)


@pytest.fixture(scope="module")
def adapter():
    return adapter_for("classification")


@pytest.fixture(scope="module")
def contract() -> ModelContract:
    return ModelContract.load("engagement_classifier", REPOSITORY)


@pytest.fixture(scope="module")
def exported(adapter, contract, tmp_path_factory):
    torch.manual_seed(0)
    network = adapter.build_model(TINY_NET, contract).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(network, path, contract, adapter)
    return network, path


def test_the_adapter_is_registered_for_classification(adapter) -> None:
    assert adapter.task == "classification" and adapter.headline == "accuracy"
    assert adapter.gate_spec is Floors
    reference = {"probabilities": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])}
    candidate = {"probabilities": np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])}
    assert adapter.agreement(reference, candidate) == (2, 3)


def test_the_serving_graph_takes_uint8_images_and_returns_probabilities(adapter, contract, exported) -> None:
    network, path = exported
    images = np.random.default_rng(0).integers(0, 256, (5, *contract.input_size, 3), dtype=np.uint8)
    reference = torch_predictor(serving_model(network, adapter, contract), contract.output_names)(images)
    assert reference["probabilities"].shape == (5, 2) and reference["probabilities"].dtype == np.float32
    assert np.allclose(reference["probabilities"].sum(1), 1, atol=1e-5)
    for engine, tolerance in (("onnxruntime", 1e-5), ("openvino", 0.05)):  # OpenVINO: bf16 as served
        for batch in (images[:1], images):  # the batch axis is dynamic
            got = engine_predictor(path, engine)(batch)["probabilities"]
            assert got.shape == (len(batch), 2)
            assert np.abs(got - reference["probabilities"][: len(batch)]).max() < tolerance


def test_splits_batches_and_loss(adapter, contract, tmp_path) -> None:
    data = SimpleNamespace(kind="procedural", generator="engagement", seed=0, train=16, val=12, test=12)
    splits = adapter.build_splits(SimpleNamespace(data=data), contract, tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 12, 12)
    assert splits.test.validation is splits.val  # the binary threshold is chosen on it
    assert "sigmoid" in splits.report["generator_doc"]  # the labelling rule travels to the card

    train = adapter.load_training_data(splits.train, contract)
    augment = SimpleNamespace(
        hflip=0.5, vflip=0.0, transpose=0.0, crop=(64, 64), brightness=0.0, contrast=0.0, jpeg_probability=0.0
    )
    images, labels = adapter.sample_batch(train, augment, 4, np.random.default_rng(0))
    assert images.shape == (4, *contract.input_size, 3) and images.dtype == np.uint8
    network = adapter.build_model(TINY_NET, contract)
    loss = adapter.loss(SimpleNamespace(loss=SimpleNamespace(label_smoothing=0.0)), torch.device("cpu"))
    assert loss(network(torch.randn(4, 3, *contract.input_size)), labels).ndim == 0


def test_binary_evaluation_chooses_the_threshold_on_validation_and_gates(
    adapter, contract, exported, tmp_path
):
    network, path = exported
    data = SimpleNamespace(kind="procedural", generator="engagement", seed=3, train=1, val=24, test=24)
    splits = adapter.build_splits(SimpleNamespace(data=data), contract, tmp_path)
    evaluation = adapter.evaluate(
        engine_predictor(path), splits.test, contract, "onnxruntime", tmp_path / "eval"
    )
    assert evaluation.binary["threshold_chosen_on"] == "validation"
    assert evaluation.binary["validation_images"] == 24
    assert {"accuracy", "macro_f1", "roc_auc", "threshold"} <= set(evaluation.metrics())
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "confusion.png",
        "evaluation.json",
        "pr.png",
        "roc.png",
    ]
    card = evaluation.to_dict()
    assert set(card["per_class_f1"]) == {"low_engagement", "high_engagement"}
    assert adapter.card(card)["decision_threshold"]["class"] == "high_engagement"

    checks = adapter.gate_checks(evaluation, Floors(min_roc_auc=1.01, min_class_f1={"high_engagement": 0.0}))
    assert checks == [Check(False, f"ROC AUC {evaluation.roc_auc} >= 1.01")]
    checks = adapter.gate_checks(evaluation, Floors(min_class_f1={"sandals": 0.5}))
    assert not checks[0].ok and "no such class" in checks[0].text


def test_a_returns_model_scores_every_class(adapter, tmp_path) -> None:
    contract = ModelContract.load("returns_classifier", REPOSITORY)
    network = adapter.build_model(TINY_NET, contract).eval()
    data = SimpleNamespace(kind="procedural", generator="products", seed=0, train=1, val=5, test=10)
    splits = adapter.build_splits(SimpleNamespace(data=data), contract, tmp_path)
    predict = torch_predictor(serving_model(network, adapter, contract), contract.output_names)
    evaluation = adapter.evaluate(predict, splits.test, contract, "pytorch")
    assert evaluation.binary is None and evaluation.images == 10
    assert sum(map(sum, evaluation.report["confusion_matrix"])) == 10
    assert adapter.card(evaluation.to_dict()) == {}
