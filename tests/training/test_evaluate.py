"""Segmentation evaluation (metrics, plots, worst images) and the quality gate every task shares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the training extra; serving-only installs skip this module

from clients.contract import ModelContract  # noqa: E402
from tests.training.helpers import MODEL, make_repository  # noqa: E402
from training.config import GateSpec  # noqa: E402
from training.datasets import DatasetError, Sample  # noqa: E402
from training.evaluate import Baseline, gate  # noqa: E402
from training.export import ParityResult  # noqa: E402
from training.tasks import adapter_for  # noqa: E402
from training.tasks.segmentation import SegmentationEvaluation, SegmentationGate, evaluate  # noqa: E402

SEGMENTATION = adapter_for("segmentation")

# A "model" that reads the class off the red channel: images are painted so it can be exact or wrong.
SCALE = 60


class PaintedDataset:
    """Masks with known class layouts; the image's red channel encodes each pixel's class."""

    num_classes = 4

    def __init__(self, masks: list[np.ndarray]) -> None:
        self.masks = masks

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int) -> Sample:
        mask = self.masks[index]
        image = np.zeros((*mask.shape, 3), np.uint8)
        image[..., 0] = mask * SCALE
        return Sample(image, mask, f"img{index}")


def read_red(images: np.ndarray) -> dict[str, np.ndarray]:
    """A predictor: the class of each pixel read off the red channel (nearest: survives resizing)."""
    return {"masks": ((images[..., 0].astype(np.int32) + SCALE // 2) // SCALE).astype(np.uint8)}


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory) -> ModelContract:
    return ModelContract.load(MODEL, make_repository(tmp_path_factory.mktemp("repo"), size=(32, 64)))


def stripes(height: int = 32, width: int = 64) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[:, 16:32], mask[:, 32:48], mask[:, 48:] = 1, 2, 3
    return mask


def test_a_perfect_model_scores_one(contract: ModelContract, tmp_path: Path) -> None:
    dataset = PaintedDataset([stripes(), stripes()[:, ::-1].copy()])
    result = evaluate(read_red, dataset, contract, "test", tmp_path, worst_k=1)
    assert result.miou == result.mean_dice == result.pixel_accuracy == 1.0
    assert result.per_class_iou == dict.fromkeys(contract.labels.names, 1.0)
    assert result.images == 2 and len(result.worst) == 1
    assert json.loads((tmp_path / "evaluation.json").read_text()) == result.to_dict()


def test_metrics_dice_worst_images_and_plots(contract: ModelContract, tmp_path: Path) -> None:
    good, bad = stripes(), stripes()
    bad[:, 48:] = 0  # price_tag stripe drawn as background: the model below sees the truth of `good` only

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        predicted = read_red(images)["masks"]
        predicted[1:, :, 48:] = 3  # every image after the first: claims price_tag where it was background
        return {"masks": predicted}

    dataset = PaintedDataset([good, bad, bad])
    result = evaluate(predict, dataset, contract, "onnxruntime", tmp_path, worst_k=2)
    # Pixels: background 16 cols x3 + the 16 bad cols x2 predicted as price_tag.
    # price_tag: TP 16 cols (image 0), FP 32 cols -> IoU 1/3, Dice = 2*16/(2*16+32) = 0.5
    # background: TP 48 cols, FN 32 cols -> IoU 0.6, Dice = 2*48/(2*48+32) = 0.75
    assert result.per_class_iou["price_tag"] == pytest.approx(1 / 3, abs=1e-4)
    assert result.per_class_iou["background"] == pytest.approx(0.6, abs=1e-4)
    assert result.per_class_dice == {"background": 0.75, "product": 1.0, "shelf_edge": 1.0, "price_tag": 0.5}
    assert result.mean_dice == pytest.approx(np.mean([0.75, 1, 1, 0.5]), abs=1e-4)
    assert result.confusion[0][3] == 2 * 32 * 16 and sum(map(sum, result.confusion)) == 3 * 32 * 64
    assert [w.name for w in result.worst] == ["img1", "img2"]  # worst first; ties by dataset order
    assert result.worst[0].miou < 1.0
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    worst = sorted(p.name for p in (tmp_path / "worst").iterdir())
    assert worst == ["01_img1.png", "02_img2.png"]
    assert json.loads((tmp_path / "evaluation.json").read_text()) == result.to_dict()
    assert result.metrics("test")["test/iou/price_tag"] == result.per_class_iou["price_tag"]
    assert result.metrics()["dice/price_tag"] == 0.5 and result.metrics()["miou"] == result.miou


def test_images_of_another_size_are_scored_at_their_own_size(contract: ModelContract) -> None:
    dataset = PaintedDataset([stripes(64, 128)])  # twice the model input: resized in, mask resized back
    seen: list[tuple[int, ...]] = []

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(images.shape)
        return read_red(images)

    result = evaluate(predict, dataset, contract, "test")
    assert seen == [(1, 32, 64, 3)]
    assert result.pixel_accuracy == 1.0 and sum(map(sum, result.confusion)) == 64 * 128


def test_an_empty_split_cannot_be_evaluated(contract: ModelContract) -> None:
    with pytest.raises(DatasetError, match="at least one image: the split is empty"):
        evaluate(read_red, PaintedDataset([]), contract, "test")


def result_with(
    miou: float, price_tag: float | None = 0.5, dice: float | None = 0.6
) -> SegmentationEvaluation:
    return SegmentationEvaluation(
        miou=miou,
        miou_foreground=miou,
        per_class_iou={"background": 0.9, "price_tag": price_tag},
        mean_dice=miou,
        per_class_dice={"background": 0.95, "price_tag": dice},
        pixel_accuracy=0.9,
        images=8,
        engine="onnxruntime",
        confusion=[],
    )


PARITY = ParityResult(
    onnxruntime=1.0, served=0.999, served_engine="openvino", served_precision="bf16", units=10, images=1
)


def spec(max_regression: float = 0.01, **floors) -> GateSpec:
    return GateSpec(max_regression=max_regression, floors=SegmentationGate(**floors))


def test_gate_passes_a_good_first_model() -> None:
    floors = spec(min_miou=0.75, min_class_iou={"price_tag": 0.4}, min_class_dice={"price_tag": 0.5})
    decision = gate(SEGMENTATION, result_with(0.8), PARITY, floors, None)
    assert decision.passed and decision.reasons == []
    assert any("first version" in line for line in decision.checks)


@pytest.mark.parametrize(
    ("candidate", "parity", "spec", "baseline_miou", "reason"),
    [
        (result_with(0.7), PARITY, spec(min_miou=0.75), None, "mIoU 0.7000 >= min_miou 0.7500"),
        (result_with(0.8, 0.3), PARITY, spec(min_class_iou={"price_tag": 0.4}), None, "IoU price_tag 0.3"),
        (result_with(0.8, None), PARITY, spec(min_class_iou={"price_tag": 0.4}), None, "IoU price_tag None"),
        (
            result_with(0.8, dice=0.65),
            PARITY,
            spec(min_class_dice={"price_tag": 0.7}),
            None,
            "Dice price_tag 0.65 >= min_class_dice 0.7000",
        ),
        (result_with(0.8), None, spec(), None, "parity was not measured"),
        (
            result_with(0.8),
            ParityResult(0.99, 0.999, "openvino", "bf16", 10, 1),
            spec(),
            None,
            "ONNX Runtime agreement 0.990000 >= 0.999",
        ),
        (
            result_with(0.8),
            ParityResult(1.0, 0.95, "openvino", "bf16", 10, 1),
            spec(),
            None,
            "served engine (openvino, bf16) agreement 0.950000 >= 0.99",
        ),
        (result_with(0.8), PARITY, spec(max_regression=0.01), 0.85, "v3 (production) miou 0.8500"),
    ],
)
def test_gate_refuses_with_reasons(candidate, parity, spec, baseline_miou, reason) -> None:
    baseline = None if baseline_miou is None else Baseline(3, "production", result_with(baseline_miou))
    decision = gate(SEGMENTATION, candidate, parity, spec, baseline)
    assert not decision.passed
    assert len(decision.reasons) == 1 and reason in decision.reasons[0], decision.reasons


def test_gate_tolerates_a_small_regression() -> None:
    decision = gate(
        SEGMENTATION,
        result_with(0.845),
        PARITY,
        spec(max_regression=0.01),
        Baseline(2, None, result_with(0.85)),
    )
    assert decision.passed and any("v2 (latest)" in line for line in decision.checks)
