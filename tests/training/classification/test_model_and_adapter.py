"""The serving graph (uint8 in, softmax probabilities out, batch dynamic) on every engine, and the
classification task adapter as the pipeline calls it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clients.contract import ModelContract
from training.classification.evaluate import Floors
from training.classification.export import check_parity, export_onnx, onnx_engine, torch_predictor
from training.classification.model import ServingClassifier, build_backbone
from training.tasks import Check, adapter_for

REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[ServingClassifier, Path]:
    torch.manual_seed(0)
    model = ServingClassifier(build_backbone("mobilenetv3_small_050", num_classes=3)).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, path, height=64, width=64)
    return model, path


def test_the_graph_takes_uint8_images_and_returns_probabilities(exported) -> None:
    model, _ = exported
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    probabilities = torch_predictor(model)(images)["probabilities"]
    assert probabilities.shape == (2, 3) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)


def test_the_onnx_graph_has_the_contract_names_and_a_dynamic_batch(exported) -> None:
    import onnxruntime as ort

    _, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (image_input,), (output,) = session.get_inputs(), session.get_outputs()
    assert (image_input.name, image_input.type, image_input.shape[1:]) == (
        "images",
        "tensor(uint8)",
        [64, 64, 3],
    )
    assert output.name == "probabilities" and output.shape[1] == 3
    for batch in (1, 5):
        images = np.zeros((batch, 64, 64, 3), np.uint8)
        assert session.run(None, {"images": images})[0].shape == (batch, 3)


def test_parity_of_onnx_runtime_and_the_served_openvino_engine(exported) -> None:
    model, path = exported
    images = np.random.default_rng(1).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    parity = check_parity(model, path, images, batch_size=4)
    assert parity.onnxruntime_max_abs_diff < 1e-5 and parity.onnxruntime_top1_agreement == 1.0
    assert parity.openvino_max_abs_diff < 0.05  # bf16 on CPUs that have it, as served
    assert onnx_engine(path, "openvino")(images[:1])["probabilities"].shape == (1, 3)


def test_the_adapter_is_registered_for_classification() -> None:
    adapter = adapter_for("classification")
    assert adapter.task == "classification" and adapter.headline == "accuracy"
    assert adapter.gate_spec is Floors
    reference = {"probabilities": np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])}
    candidate = {"probabilities": np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])}
    assert adapter.agreement(reference, candidate) == (2, 3)
    head = adapter.serving_head(None)
    (probabilities,) = head(torch.tensor([[0.0, 0.0], [10.0, -10.0]]))
    assert torch.allclose(probabilities, torch.tensor([[0.5, 0.5], [1.0, 0.0]]), atol=1e-6)


def test_the_adapter_splits_trains_and_evaluates_a_binary_model_with_a_validation_threshold(tmp_path) -> None:
    adapter = adapter_for("classification")
    contract = ModelContract.load("engagement_classifier", REPOSITORY)
    data = SimpleNamespace(kind="procedural", generator="engagement", seed=0, train=16, val=12, test=12)
    splits = adapter.build_splits(SimpleNamespace(data=data), contract, tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 12, 12)
    assert splits.test.validation is splits.val

    train = adapter.load_training_data(splits.train, contract)
    augment = SimpleNamespace(hflip=0.5, crop=(64, 64), brightness=0.0, contrast=0.0, jpeg_probability=0.0)
    images, labels = adapter.sample_batch(train, augment, 4, np.random.default_rng(0))
    assert images.shape == (4, *contract.input_size, 3)

    spec = SimpleNamespace(encoder="mobilenetv3_small_050", options={}, encoder_weights=None)
    network = adapter.build_model(spec, contract)
    loss = adapter.loss(SimpleNamespace(loss=SimpleNamespace(label_smoothing=0.0)), torch.device("cpu"))
    logits = network(torch.randn(4, 3, *contract.input_size))
    assert loss(logits, labels).ndim == 0

    serving = ServingClassifier(network).eval()
    evaluation = adapter.evaluate(
        torch_predictor(serving), splits.test, contract, "pytorch", tmp_path / "eval"
    )
    assert evaluation.binary["threshold_chosen_on"] == "validation"
    assert {"accuracy", "macro_f1", "roc_auc", "threshold"} <= set(evaluation.metrics())
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "confusion.png",
        "evaluation.json",
        "pr.png",
        "roc.png",
    ]
    checks = adapter.gate_checks(evaluation, Floors(min_roc_auc=1.01, min_accuracy=0.0))
    assert checks == [Check(False, f"ROC AUC {evaluation.roc_auc} >= 1.01")]
    assert adapter.card(evaluation.to_dict())["decision_threshold"]["class"] == "high_engagement"
