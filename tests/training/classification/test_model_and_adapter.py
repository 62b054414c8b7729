"""The classification adapter as the pipeline calls it: splits, batches, network, loss, serving graph
(uint8 in, softmax probabilities out, batch dynamic) on every engine, evaluation and gate."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from clients.contract import ModelContract
from datagen.engagement import render_engagement, write_image_folder
from datagen.products import sample_seed
from training.classification.data import Augment, Targets, load_arrays, load_image_folder, sample_batch
from training.classification.evaluate import Floors
from training.config import ConfigError, load_config
from training.export import ServingModel, engine_predictor, export_onnx, serving_model, torch_predictor
from training.tasks import Check, adapter_for
from training.train import train

ROOT = Path(__file__).resolve().parents[3]
REPOSITORY = ROOT / "model_repository"
CONFIGS = ROOT / "training" / "configs"
TINY_NET = SimpleNamespace(encoder="test_efficientnet", options={}, encoder_weights=None)
AUX_NET = SimpleNamespace(
    encoder="test_efficientnet", options={"coord_channels": True, "aux_outputs": 5}, encoder_weights=None
)


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
    images, targets = adapter.sample_batch(train, augment, 4, np.random.default_rng(0))
    assert images.shape == (4, *contract.input_size, 3) and images.dtype == np.uint8
    network = adapter.build_model(TINY_NET, contract)
    loss = adapter.loss(_loss_config(aux_weight=0.0), torch.device("cpu"))
    assert loss(network(torch.randn(4, 3, *contract.input_size)), targets).ndim == 0


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


def _loss_config(aux_weight: float) -> SimpleNamespace:
    return SimpleNamespace(loss=SimpleNamespace(label_smoothing=0.0, aux_weight=aux_weight))


def test_auxiliary_targets_reach_the_loss_but_not_the_serving_graph(adapter, contract, tmp_path) -> None:
    data = SimpleNamespace(kind="procedural", generator="engagement", seed=0, train=8, val=2, test=2)
    splits = adapter.build_splits(SimpleNamespace(data=data), contract, tmp_path)
    train = adapter.load_training_data(splits.train, contract)
    assert train.aux is not None and train.aux.shape == (8, 5)  # the five property scores
    first = splits.train[0]
    assert first.aux == tuple(render_engagement(sample_seed(0, 0), 64, 64).properties.scores().values())
    augment = SimpleNamespace(
        hflip=0.5, vflip=0.0, transpose=0.0, crop=(64, 64), brightness=0.0, contrast=0.0, jpeg_probability=0.0
    )
    images, targets = adapter.sample_batch(train, augment, 4, np.random.default_rng(0))
    assert targets.aux is not None and targets.aux.shape == (4, 5) and targets.aux.dtype == np.float32

    torch.manual_seed(0)
    network = adapter.build_model(AUX_NET, contract).train()
    logits, aux = ServingModel(network)(torch.from_numpy(images))  # training mode: the aux head too
    assert logits.shape == (4, 2) and aux.shape == (4, 5)
    cpu = torch.device("cpu")
    plain = adapter.loss(_loss_config(0.0), cpu)((logits, aux), targets)
    weighted = adapter.loss(_loss_config(5.0), cpu)((logits, aux), targets)
    expected = plain + 5.0 * torch.nn.functional.mse_loss(aux, torch.from_numpy(targets.aux))
    assert torch.allclose(weighted, expected)
    weighted.backward()
    assert network.aux.weight.grad is not None and network.aux.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="auxiliary"):  # the weight without targets is an error
        adapter.loss(_loss_config(5.0), cpu)(logits, Targets(targets.labels))

    network.eval()  # what is exported: logits only, and the serving graph is the class softmax
    path = tmp_path / "model.onnx"
    export_onnx(network, path, contract, adapter)
    assert [output.name for output in onnx.load(str(path)).graph.output] == ["probabilities"]
    batch = np.random.default_rng(1).integers(0, 256, (3, *contract.input_size, 3), dtype=np.uint8)
    reference = torch_predictor(serving_model(network, adapter, contract), contract.output_names)(batch)
    got = engine_predictor(path, "onnxruntime")(batch)["probabilities"]
    assert np.abs(got - reference["probabilities"]).max() < 1e-5


def test_a_few_training_steps_with_auxiliary_targets(tmp_path) -> None:
    config = load_config(
        CONFIGS / "engagement_classifier.yaml",
        {
            "train.steps": 3,
            "train.eval_every": 3,
            "train.batch_size": 4,
            "data.train": 8,
            "data.val": 8,
            "data.test": 2,
            "model.options": {"aux_outputs": 5, "coord_channels": True},
        },
    )
    assert config.loss.aux_weight > 0
    contract = config.contract()
    splits = config.adapter.build_splits(config, contract, tmp_path)
    result = train(config, contract, splits.train, splits.val)
    assert result.summary.steps == 3 and np.isfinite(result.summary.final_loss)
    logits = result.model(torch.zeros(2, 3, *contract.input_size))  # eval mode: logits only
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 2)


def test_auxiliary_loss_needs_data_with_auxiliary_targets_and_a_head() -> None:
    with pytest.raises(ConfigError, match="loss.aux_weight: this data has no auxiliary targets"):
        load_config(
            CONFIGS / "returns_classifier.yaml", {"loss.aux_weight": 1.0, "model.options": {"aux_outputs": 5}}
        )
    with pytest.raises(ConfigError, match="model.options.aux_outputs: must be 5"):
        load_config(CONFIGS / "engagement_classifier.yaml", {"model.options": {}})
    with pytest.raises(ConfigError, match="needs loss.aux_weight > 0"):
        load_config(CONFIGS / "engagement_classifier.yaml", {"loss.aux_weight": 0.0})


def test_files_carry_no_auxiliary_targets(tmp_path) -> None:
    paths = write_image_folder(tmp_path / "folder", count=6, seed=0, size=32)
    files, _ = load_image_folder(tmp_path / "folder", ("low_engagement", "high_engagement"))
    data = load_arrays(files, 32, 32)
    assert len(data) == len(paths) and data.aux is None
    _, targets = sample_batch(data, Augment(), 4, np.random.default_rng(0))
    assert targets.aux is None and targets.labels.shape == (4,)
