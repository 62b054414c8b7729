"""Held-out evaluation and the quality gate.

:func:`evaluate` runs a model the way serving does (each image resized to the contract's input, the
predicted mask resized back to the image's own size) and scores it with
:class:`clients.evaluation.ConfusionMatrix`, the one home of IoU: mIoU, per-class IoU, pixel
accuracy, F1 (from the same matrix), a confusion-matrix PNG and the worst-k images as overlays.
:func:`gate` decides whether a candidate may be published: absolute floors from the config, ONNX
parity, and no regression against the version currently in production, re-evaluated on the same
test split (numbers on a card were measured on other data and do not compare).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from clients.contract import ModelContract
from clients.evaluation import ConfusionMatrix
from clients.overlay import OverlayPainter
from training.config import GateSpec
from training.datasets import (
    DatasetError,
    Sample,
    SegmentationDataset,
    replace_atomically,
    write_json_atomically,
)
from training.export import ParityResult, Predictor, model_input_batches


@dataclass(frozen=True)
class ImageScore:
    name: str
    miou: float


@dataclass(frozen=True)
class EvaluationResult:
    miou: float  # mean over classes present in truth or prediction, background included
    miou_foreground: float | None
    per_class_iou: dict[str, float | None]  # None: class absent from truth and prediction
    mean_f1: float
    per_class_f1: dict[str, float | None]
    pixel_accuracy: float
    images: int
    engine: str
    confusion: list[list[int]]  # pixels, [true class][predicted class]
    worst: list[ImageScore] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat numbers for a tracker, e.g. ``test/miou``, ``test/iou/price_tag``."""
        values = {f"{prefix}/miou": self.miou, f"{prefix}/pixel_accuracy": self.pixel_accuracy}
        values[f"{prefix}/mean_f1"] = self.mean_f1
        for name, iou in self.per_class_iou.items():
            if iou is not None:
                values[f"{prefix}/iou/{name}"] = iou
        return values


def predictions(
    predict: Predictor, dataset: SegmentationDataset, contract: ModelContract, batch_size: int = 4
) -> Iterator[tuple[Sample, np.ndarray]]:
    """Each sample with its predicted mask at the sample's own size, as a client would get it."""
    for batch, samples in model_input_batches(dataset, contract, batch_size):
        for sample, mask in zip(samples, predict(batch), strict=True):
            yield sample, contract.mask_to_frame(mask, sample.mask.shape)


def confusion_matrix(
    predict: Predictor, dataset: SegmentationDataset, contract: ModelContract, batch_size: int = 4
) -> ConfusionMatrix:
    matrix = ConfusionMatrix(contract.num_classes)
    for sample, predicted in predictions(predict, dataset, contract, batch_size):
        matrix.update(predicted, sample.mask)
    return matrix


def evaluate(
    predict: Predictor,
    dataset: SegmentationDataset,
    contract: ModelContract,
    engine: str,
    out_dir: Path | None = None,
    worst_k: int = 6,
    batch_size: int = 4,
) -> EvaluationResult:
    """Score ``predict`` on ``dataset``; with ``out_dir``, also write evaluation.json, confusion.png
    and ``worst/NN_<name>.png`` (image | ground truth | prediction)."""
    if len(dataset) == 0:
        raise DatasetError("evaluation needs at least one image: the test split is empty")
    matrix = ConfusionMatrix(contract.num_classes)
    # The k worst images so far, kept in a min-heap on -mIoU (its top is the best of them).
    worst: list[tuple[float, int, str, np.ndarray]] = []
    for index, (sample, predicted) in enumerate(predictions(predict, dataset, contract, batch_size)):
        matrix.update(predicted, sample.mask)
        single = ConfusionMatrix(contract.num_classes)
        single.update(predicted, sample.mask)
        entry = (-single.miou(), index, sample.name, predicted)
        if len(worst) < worst_k:
            heapq.heappush(worst, entry)
        elif worst_k and entry[0] > worst[0][0]:
            heapq.heapreplace(worst, entry)
    ranked = sorted(worst, key=lambda e: (-e[0], e[1]))  # lowest mIoU first

    result = _result(matrix, contract, engine, len(dataset), [(name, -s) for s, _, name, _ in ranked])
    if out_dir is not None:
        out_dir = Path(out_dir)
        (out_dir / "worst").mkdir(parents=True, exist_ok=True)
        write_json_atomically(out_dir / "evaluation.json", result.to_dict())
        plot_confusion(result, out_dir / "confusion.png")
        painter = OverlayPainter(contract.labels)
        for rank, (_, i, name, predicted) in enumerate(ranked, start=1):
            _write_png(
                out_dir / "worst" / f"{rank:02d}_{name}.png", _triptych(dataset[i], predicted, painter)
            )
    return result


def _result(
    matrix: ConfusionMatrix,
    contract: ModelContract,
    engine: str,
    images: int,
    worst: list[tuple[str, float]],
) -> EvaluationResult:
    names = contract.labels.names
    iou = matrix.iou()
    counts = matrix.matrix
    hits = np.diag(counts).astype(np.float64)
    # F1 (Dice) per class = 2 TP / (2 TP + FP + FN) = 2 TP / (row sum + column sum).
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(counts.sum(0) + counts.sum(1) > 0, 2 * hits / (counts.sum(0) + counts.sum(1)), np.nan)
    return EvaluationResult(
        miou=_round(np.nanmean(iou)),
        miou_foreground=_round(np.nanmean(iou[1:])) if len(names) > 1 else None,
        per_class_iou=dict(zip(names, map(_maybe, iou), strict=True)),
        mean_f1=_round(np.nanmean(f1)),
        per_class_f1=dict(zip(names, map(_maybe, f1), strict=True)),
        pixel_accuracy=_round(matrix.pixel_accuracy()),
        images=images,
        engine=engine,
        confusion=counts.tolist(),
        worst=[ImageScore(name, _round(score)) for name, score in worst],
    )


def _round(value: float) -> float:
    return round(float(value), 4)


def _maybe(value: float) -> float | None:
    return None if np.isnan(value) else _round(value)


def plot_confusion(result: EvaluationResult, path: Path) -> None:
    """Row-normalised confusion matrix (each true class sums to 100%) with the pixel share annotated."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    names = list(result.per_class_iou)
    counts = np.asarray(result.confusion, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.nan_to_num(counts / counts.sum(1, keepdims=True))
    figure, axes = plt.subplots(figsize=(1.4 * len(names) + 2, 1.2 * len(names) + 1.5), dpi=100)
    axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{result.engine}: mIoU {result.miou:.3f} on {result.images} images")
    for (row, col), value in np.ndenumerate(share):
        axes.text(
            col, row, f"{value:.1%}", ha="center", va="center", color="white" if value > 0.5 else "black"
        )
    figure.tight_layout()
    replace_atomically(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)


def _triptych(sample: Sample, predicted: np.ndarray, painter: OverlayPainter) -> np.ndarray:
    """image | ground-truth overlay | prediction overlay, side by side (RGB)."""
    gap = np.full((sample.image.shape[0], 4, 3), 255, np.uint8)
    panels = [sample.image, gap, painter(sample.image, sample.mask), gap, painter(sample.image, predicted)]
    return np.concatenate(panels, axis=1)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    replace_atomically(path, lambda tmp: tmp.write_bytes(png.tobytes()))


# -------------------------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class Baseline:
    """The version a candidate must not fall behind, scored on the candidate's test split."""

    version: int
    alias: str | None  # the alias it was found under; None: the latest published version
    evaluation: EvaluationResult


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str]  # one line per failed check; empty when passed
    checks: list[str]  # one line per check made, passed or not

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(
    candidate: EvaluationResult, parity: ParityResult | None, spec: GateSpec, baseline: Baseline | None
) -> GateResult:
    """Every check of ``spec``; the model passes when none fails."""
    checks: list[tuple[bool, str]] = []

    def check(ok: bool, text: str) -> None:
        checks.append((ok, text))

    check(candidate.miou >= spec.min_miou, f"mIoU {candidate.miou:.4f} >= min_miou {spec.min_miou:.4f}")
    for name, floor in spec.min_class_iou.items():
        iou = candidate.per_class_iou.get(name)
        check(iou is not None and iou >= floor, f"IoU {name} {iou} >= min_class_iou {floor:.4f}")
    if parity is None:
        check(False, "parity was not measured (export the model first)")
    else:
        check(
            parity.onnxruntime >= spec.min_onnxruntime_agreement,
            f"ONNX Runtime agreement {parity.onnxruntime:.6f} >= {spec.min_onnxruntime_agreement}",
        )
    if baseline is None:
        check(True, "no published version to compare with (first version)")
    else:
        floor = baseline.evaluation.miou - spec.max_regression
        label = f"v{baseline.version}" + (f" ({baseline.alias})" if baseline.alias else " (latest)")
        check(
            candidate.miou >= floor,
            f"mIoU {candidate.miou:.4f} >= {label} mIoU {baseline.evaluation.miou:.4f} "
            f"- max_regression {spec.max_regression} on the same {candidate.images} test images",
        )
    return GateResult(
        passed=all(ok for ok, _ in checks),
        reasons=[f"failed: {text}" for ok, text in checks if not ok],
        checks=[f"{'ok' if ok else 'FAILED'}: {text}" for ok, text in checks],
    )
