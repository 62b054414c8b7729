"""Segmentation: smp networks, CE + Dice, crops and flips that move masks with pixels, argmax in the
graph, and scoring by IoU and Dice per class.

Data comes from a procedural generator (``data.generator``: shelves, cracks), a folder of class-id
masks, a binary folder in the public layout (masks 0/255 or 0/1, bad pairs skipped and reported), or
SKU-110K boxes bootstrapped into masks with Segment Anything. Evaluation runs a model the way serving
does (each image resized to the contract's input, the predicted mask resized back to the image's
own size) and scores it with :class:`clients.evaluation.ConfusionMatrix`, the one home of IoU.
"""

from __future__ import annotations

import heapq
import inspect
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from clients.atomic import atomic_path, write_bytes
from clients.contract import ModelContract, Task
from clients.evaluation import ConfusionMatrix
from training.compat import patch_torchvision_ops
from training.datasets import DatasetError, Sample, write_json_atomically
from training.export import model_input_batches
from training.tasks import Check, DataSplits, Outputs, Predictor, TaskAdapter, photometric, register

patch_torchvision_ops()  # before smp, which imports timm and torchvision

import segmentation_models_pytorch as smp  # noqa: E402

if TYPE_CHECKING:
    from training.config import AugmentSpec, ModelSpec, PipelineConfig

# smp constructor arguments the pipeline sets itself; a config's model.options may not.
_RESERVED_MODEL_ARGS = {
    "encoder_name",
    "encoder_weights",
    "in_channels",
    "classes",
    "activation",
    "aux_params",
}


@dataclass(frozen=True)
class SegmentationLoss:
    """``loss:`` weights of the two terms: CE for every pixel, Dice for the thin, rare classes."""

    cross_entropy: float = 1.0
    dice: float = 1.0


@dataclass(frozen=True)
class SegmentationGate:
    """``gate:`` floors of a segmentation model: mIoU, and IoU or Dice per class name."""

    min_miou: float = 0.0
    min_class_iou: dict[str, float] = field(default_factory=dict)
    min_class_dice: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ data


class InMemoryDataset:
    """A split held as two uint8 arrays at the model's input size (~1 MB per 384x640 image)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, names: list[str], num_classes: int) -> None:
        self.images, self.masks, self.names, self.num_classes = images, masks, names, num_classes

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        return Sample(self.images[index], self.masks[index], self.names[index])


def resize_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Class ids resized to ``shape[:2]`` (nearest: never a class between two others)."""
    height, width = shape[:2]
    if mask.shape[:2] == (height, width):
        return mask
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def sample_batch(
    data: InMemoryDataset, augment: AugmentSpec, batch_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random crops, flips (and transposes) applied to image and mask alike, then photometric jitter.

    Random numbers are drawn only for enabled augmentations, so a config without vflip/transpose
    consumes the generator exactly as before they existed.
    """
    crop_h, crop_w = augment.crop
    _, height, width = data.masks.shape
    picks = rng.integers(0, len(data), batch_size)
    tops = rng.integers(0, height - crop_h + 1, batch_size)
    lefts = rng.integers(0, width - crop_w + 1, batch_size)
    hflips = rng.random(batch_size) < augment.hflip
    vflips = rng.random(batch_size) < augment.vflip if augment.vflip else np.zeros(batch_size, bool)
    turns = rng.random(batch_size) < augment.transpose if augment.transpose else np.zeros(batch_size, bool)
    images = np.empty((batch_size, crop_h, crop_w, 3), np.uint8)
    masks = np.empty((batch_size, crop_h, crop_w), np.uint8)
    for b in range(batch_size):
        i, top, left = picks[b], tops[b], lefts[b]
        rows = slice(None, None, -1 if vflips[b] else 1)
        cols = slice(None, None, -1 if hflips[b] else 1)
        image = data.images[i, top : top + crop_h, left : left + crop_w][rows, cols]
        mask = data.masks[i, top : top + crop_h, left : left + crop_w][rows, cols]
        if turns[b]:  # square crops only (checked with the config)
            image, mask = image.transpose(1, 0, 2), mask.T
        images[b], masks[b] = image, mask
    photometric(images, augment, rng)
    return images, masks


# ----------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class ImageScore:
    name: str
    miou: float


@dataclass(frozen=True)
class SegmentationEvaluation:
    miou: float  # mean over classes present in truth or prediction, background included
    miou_foreground: float | None
    per_class_iou: dict[str, float | None]  # None: class absent from truth and prediction
    mean_dice: float
    per_class_dice: dict[str, float | None]  # Dice = F1 = 2 TP / (2 TP + FP + FN), per pixel
    pixel_accuracy: float
    images: int
    engine: str
    confusion: list[list[int]]  # pixels, [true class][predicted class]
    worst: list[ImageScore] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat numbers, e.g. ``miou``, ``iou/crack``, ``dice/crack`` (``test/...`` with a prefix)."""
        values = {"miou": self.miou, "pixel_accuracy": self.pixel_accuracy, "mean_dice": self.mean_dice}
        for name, iou in self.per_class_iou.items():
            if iou is not None:
                values[f"iou/{name}"] = iou
        for name, dice in self.per_class_dice.items():
            if dice is not None:
                values[f"dice/{name}"] = dice
        return {f"{prefix}/{k}" if prefix else k: v for k, v in values.items()}


def evaluate(
    predict: Predictor,
    dataset: Sequence[Sample],
    contract: ModelContract,
    engine: str,
    out_dir: Path | None = None,
    worst_k: int = 6,
    batch_size: int = 4,
) -> SegmentationEvaluation:
    """Score ``predict`` on ``dataset``; with ``out_dir``, also write evaluation.json, confusion.png
    and ``worst/NN_<name>.png`` (image | ground truth | prediction)."""
    if len(dataset) == 0:
        raise DatasetError("evaluation needs at least one image: the split is empty")
    matrix = ConfusionMatrix(contract.num_classes)
    # The k worst images so far, kept in a min-heap on -mIoU (its top is the best of them).
    worst: list[tuple[float, int, str, np.ndarray]] = []
    index = 0
    for batch, samples in model_input_batches(dataset, contract, batch_size):
        for sample, mask in zip(samples, predict(batch)["masks"], strict=True):
            predicted = resize_mask(mask, sample.mask.shape)
            matrix.update(predicted, sample.mask)
            single = ConfusionMatrix(contract.num_classes)
            single.update(predicted, sample.mask)
            entry = (-single.miou(), index, sample.name, predicted)
            if len(worst) < worst_k:
                heapq.heappush(worst, entry)
            elif worst_k and entry[0] > worst[0][0]:
                heapq.heapreplace(worst, entry)
            index += 1
    ranked = sorted(worst, key=lambda e: (-e[0], e[1]))  # lowest mIoU first
    result = _result(matrix, contract, engine, len(dataset), [(name, -s) for s, _, name, _ in ranked])
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_json_atomically(out_dir / "evaluation.json", result.to_dict())
        plot_confusion(result, out_dir / "confusion.png")
        painter = _painter(contract)
        for rank, (_, i, name, predicted) in enumerate(ranked, start=1):
            picture = _triptych(dataset[i], predicted, painter)
            _write_png(out_dir / "worst" / f"{rank:02d}_{name}.png", picture)
    return result


def _result(
    matrix: ConfusionMatrix, contract: ModelContract, engine: str, images: int, worst: list[tuple[str, float]]
) -> SegmentationEvaluation:
    names = contract.labels.names
    iou = matrix.iou()
    counts = matrix.matrix
    hits = np.diag(counts).astype(np.float64)
    sizes = counts.sum(0) + counts.sum(1)  # predicted + true pixels of each class
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(sizes > 0, 2 * hits / sizes, np.nan)
    return SegmentationEvaluation(
        miou=_round(np.nanmean(iou)),
        miou_foreground=_round(np.nanmean(iou[1:]))
        if len(names) > 1 and not np.isnan(iou[1:]).all()
        else None,
        per_class_iou=dict(zip(names, map(_maybe, iou), strict=True)),
        mean_dice=_round(np.nanmean(dice)),
        per_class_dice=dict(zip(names, map(_maybe, dice), strict=True)),
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


def plot_confusion(result: SegmentationEvaluation, path: Path) -> None:
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
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png")
    plt.close(figure)


def _painter(contract: ModelContract) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    from clients.overlay import OverlayPainter

    return OverlayPainter(contract.labels)


def _triptych(sample: Sample, predicted: np.ndarray, painter: Callable) -> np.ndarray:
    """image | ground-truth overlay | prediction overlay, side by side (RGB)."""
    gap = np.full((sample.image.shape[0], 4, 3), 255, np.uint8)
    panels = [sample.image, gap, painter(sample.image, sample.mask), gap, painter(sample.image, predicted)]
    return np.concatenate(panels, axis=1)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    write_bytes(path, png.tobytes())


# --------------------------------------------------------------------------------------- the head


class Argmax(torch.nn.Module):
    """Logits ``[N, C, H, W]`` -> uint8 class ids ``[N, H, W]`` (the ``masks`` output)."""

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor]:
        return (logits.argmax(dim=1).to(torch.uint8),)


def create_model(arch: str, encoder: str, num_classes: int, **options: Any) -> torch.nn.Module:
    """An smp model with random weights (``encoder_weights=None``: no downloads here)."""
    return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=num_classes, **options)


# ---------------------------------------------------------------------------------------- adapter


class SegmentationAdapter(TaskAdapter):
    task = Task.SEGMENTATION
    headline = "miou"
    loss_spec = SegmentationLoss
    gate_spec = SegmentationGate

    def check_config(self, config: PipelineConfig) -> None:
        """Architecture, encoder and options by name, against smp's and timm's registries."""
        import timm

        spec = config.model
        architectures = {cls.__name__.lower(): cls for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()}
        cls = architectures.get(spec.arch.lower())
        if cls is None:
            known = sorted(c.__name__ for c in architectures.values())
            raise config.error("model.arch", f"unknown architecture {spec.arch!r}; smp has {known}")
        encoder = spec.encoder
        if encoder.startswith("tu-"):
            if not timm.is_model(encoder[3:]):
                close = timm.list_models(f"*{encoder[3:].split('_')[0]}*")[:8]
                raise config.error("model.encoder", f"unknown timm model {encoder[3:]!r}; similar: {close}")
        elif encoder not in smp.encoders.get_encoder_names():
            raise config.error(
                "model.encoder",
                f"unknown encoder {encoder!r}: not an smp encoder, and timm models are named 'tu-<name>'",
            )
        allowed = set(inspect.signature(cls.__init__).parameters) - _RESERVED_MODEL_ARGS - {"self", "kwargs"}
        unknown = sorted(set(spec.options) - allowed)
        if unknown:
            raise config.error(
                "model.options", f"{unknown} are not options of smp.{cls.__name__}: {sorted(allowed)}"
            )
        if spec.options.get("decoder_attention_type") == "scse":
            # scSE squeezes channels by 16: a narrower decoder block has zero channels and crashes.
            narrow = [c for c in spec.options.get("decoder_channels", []) if c < 16]
            if narrow:
                raise config.error(
                    "model.options.decoder_channels", f"scse needs >= 16 channels, got {narrow}"
                )
        if spec.encoder_weights is not None and not spec.encoder_weights.is_file():
            raise config.error("model.encoder_weights", f"{spec.encoder_weights} is not a file")
        if config.augment.transpose and config.augment.crop[0] != config.augment.crop[1]:
            raise config.error("augment.transpose", f"needs a square crop, got {list(config.augment.crop)}")

    def check_contract(self, config: PipelineConfig, contract: ModelContract) -> None:
        names = contract.labels.names
        floors: SegmentationGate = config.gate.floors
        for key in ("min_class_iou", "min_class_dice"):
            unknown = sorted(set(getattr(floors, key)) - set(names))
            if unknown:
                raise config.error(f"gate.{key}", f"unknown class(es) {unknown}; labels.txt has {names}")
        crop_h, crop_w = config.augment.crop
        if crop_h > contract.height or crop_w > contract.width:
            raise config.error(
                "augment.crop", f"{[crop_h, crop_w]} exceeds the input {[contract.height, contract.width]}"
            )

    def build_splits(
        self, config: PipelineConfig, contract: ModelContract, work_dir: Path, progress: Any = None
    ) -> DataSplits:
        from training.config import Sku110kSource
        from training.datasets import DataSpec, build_splits

        source, report = config.data, {}
        if isinstance(source, Sku110kSource):
            from training.sam_bootstrap import bootstrap_masks
            from training.sku110k import read_annotations

            images = source.path("images")
            annotations = read_annotations(source.path("annotations"), images)
            out = source.out or Path(work_dir) / "bootstrap"
            bootstrapped = bootstrap_masks(
                annotations,
                images,
                out,
                contract.labels,
                labeler=source.labeler,
                checkpoint=source.sam_checkpoint,
                model_type=source.sam_type,
                box_batch=source.box_batch,
                min_predicted_iou=source.min_predicted_iou,
                progress=progress,
            )
            report["bootstrap"] = {"annotations": annotations.report(), **bootstrapped.to_dict()}
            source = DataSpec(
                kind="folder",
                root=out,
                seed=source.seed,
                val_fraction=source.val_fraction,
                test_fraction=source.test_fraction,
            )
        splits = build_splits(source, contract.height, contract.width, contract.labels)
        if splits.skipped:
            report["skipped"] = splits.skipped
        return DataSplits(splits.train, splits.val, splits.test, report)

    def build_model(self, spec: ModelSpec, contract: ModelContract) -> torch.nn.Module:
        from training.train import load_encoder_weights

        model = create_model(spec.arch, spec.encoder, contract.num_classes, **spec.options)
        if spec.encoder_weights is not None:
            load_encoder_weights(model, spec.encoder_weights)
        return model

    def load_training_data(
        self,
        dataset: Sequence[Sample],
        contract: ModelContract,
        progress: Any = None,
        description: str = "load",
    ) -> InMemoryDataset:
        """Read (or render) every sample once, resized to the contract's input as a client would."""
        size = (contract.height, contract.width)
        images = np.empty((len(dataset), *size, 3), np.uint8)
        masks = np.empty((len(dataset), *size), np.uint8)
        names = []
        task = progress.add_task(description, total=len(dataset)) if progress is not None else None
        for i in range(len(dataset)):
            sample = dataset[i]
            images[i] = contract.to_model_input(sample.image)
            masks[i] = resize_mask(sample.mask, size)
            names.append(sample.name)
            if task is not None:
                progress.advance(task)
        return InMemoryDataset(images, masks, names, contract.num_classes)

    def sample_batch(
        self, data: InMemoryDataset, augment: AugmentSpec, batch_size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        return sample_batch(data, augment, batch_size, rng)

    def loss(self, config: PipelineConfig, device: torch.device) -> Callable[[Any, Any], torch.Tensor]:
        weights: SegmentationLoss = config.loss
        cross_entropy = torch.nn.CrossEntropyLoss()
        # Dice balances the thin, rare classes (shelf edges, price tags, cracks) against the large ones.
        dice = smp.losses.DiceLoss(mode="multiclass", from_logits=True)

        def loss(logits: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
            target = torch.from_numpy(masks).to(device).long()
            return weights.cross_entropy * cross_entropy(logits, target) + weights.dice * dice(logits, target)

        return loss

    def serving_head(self, contract: ModelContract) -> torch.nn.Module:
        return Argmax()

    def agreement(self, reference: Outputs, candidate: Outputs) -> tuple[int, int]:
        expected = reference["masks"]
        return int((candidate["masks"] == expected).sum()), int(expected.size)

    def evaluate(
        self,
        predict: Predictor,
        dataset: Sequence[Sample],
        contract: ModelContract,
        engine: str,
        out_dir: Path | None = None,
        worst_k: int = 6,
        batch_size: int = 4,
    ) -> SegmentationEvaluation:
        return evaluate(predict, dataset, contract, engine, out_dir, worst_k, batch_size)

    def gate_checks(self, evaluation: SegmentationEvaluation, floors: SegmentationGate) -> list[Check]:
        checks = [
            Check(
                evaluation.miou >= floors.min_miou,
                f"mIoU {evaluation.miou:.4f} >= min_miou {floors.min_miou:.4f}",
            )
        ]
        for kind, floor_by_class, values in (
            ("IoU", floors.min_class_iou, evaluation.per_class_iou),
            ("Dice", floors.min_class_dice, evaluation.per_class_dice),
        ):
            for name, floor in floor_by_class.items():
                value = values.get(name)
                ok = value is not None and value >= floor
                checks.append(Check(ok, f"{kind} {name} {value} >= min_class_{kind.lower()} {floor:.4f}"))
        return checks


register(SegmentationAdapter())
