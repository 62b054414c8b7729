"""The detection task adapter: a CenterNet-style detector, decoding in the graph, COCO mAP.

The parts live in :mod:`training.detection` (model, targets, data, metrics, evaluation, parity); this
module maps them onto :class:`training.tasks.TaskAdapter`, so ``prodseg pipeline --config
training/configs/mask_detector.yaml`` runs them through the one pipeline. Config meaning:

- ``model``: ``arch: centernet``, ``encoder: plain`` (the plain-convolution backbone of
  :mod:`training.detection.model`), ``options``: ``widths``, ``depths``, ``stem``, ``neck``;
- ``data``: ``kind: procedural`` with ``generator: faces`` (:mod:`datagen.faces`; train, val and test
  draw disjoint identities), or ``kind: folder`` with ``root``: a YOLO txt dataset (``data.yaml``,
  ``images/``, ``labels/``) or a Pascal VOC one (``Annotations/`` + ``JPEGImages/``), split by
  ``val_fraction``/``test_fraction`` (or its own ``images/<split>`` folders); skipped rows and files
  are reported in ``data.json`` by name and reason;
- ``augment``: ``crop`` (training windows; multiples of 32), ``hflip``, a random zoom of 0.6-1.4
  (:data:`training.detection.data.ZOOM`), and the shared photometric jitter;
- ``loss``: ``heatmap`` and ``box`` weights; ``gate``: ``min_map50``, ``min_map50_95``,
  ``min_class_ap50`` per class name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clients.contract import ModelContract, Task
from training.detection import data as detection_data
from training.detection.evaluate import DetectionEvaluation, Floors, evaluate, gate_checks
from training.detection.parity import agreement
from training.tasks import Check, DataSplits, Outputs, Predictor, TaskAdapter, photometric, register

if TYPE_CHECKING:
    import torch

    from training.config import AugmentSpec, ModelSpec, PipelineConfig

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DetectionLoss:
    """``loss:`` weights: focal loss on the centre heatmap, GIoU on the boxes."""

    heatmap: float = 1.0
    box: float = 5.0


class InMemoryDetections:
    """A split held at the model's input size: images [N, H, W, 3] uint8 and boxes per image."""

    def __init__(self, samples: list[detection_data.Sample], num_classes: int) -> None:
        self.samples, self.num_classes = samples, num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> detection_data.Sample:
        return self.samples[index]


def sample_batch(
    data: InMemoryDetections,
    augment: AugmentSpec,
    batch_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Flip, zoom and crop windows with their boxes, photometric jitter, and the heatmap/box targets."""
    from training.detection.targets import build_targets

    crop_h, crop_w = augment.crop
    images = np.empty((batch_size, crop_h, crop_w, 3), np.uint8)
    heat, boxes, weights = [], [], []
    for b, index in enumerate(rng.integers(0, len(data), batch_size)):
        sample = detection_data.augment(data[int(index)], rng, augment.hflip)
        sample = detection_data.random_crop(sample, rng, crop_h, crop_w)
        images[b] = sample.image
        targets = build_targets(sample.boxes, sample.class_ids, data.num_classes, crop_h, crop_w)
        heat.append(targets[0])
        boxes.append(targets[1])
        weights.append(targets[2])
    photometric(images, augment, rng)
    return images, {"heat": np.stack(heat), "box_target": np.stack(boxes), "box_weight": np.stack(weights)}


class DetectionAdapter(TaskAdapter):
    task = Task.DETECTION
    headline = "map50"
    loss_spec = DetectionLoss
    gate_spec = Floors  # min_map50, min_map50_95, min_class_ap50

    def check_config(self, config: PipelineConfig) -> None:
        from training.detection.model import DetectorSpec

        model = config.model
        if model.arch != "centernet" or model.encoder != "plain":
            raise config.error(
                "model",
                f"detection models are arch: centernet, encoder: plain; got {model.arch}/{model.encoder}",
            )
        if model.encoder_weights is not None:
            raise config.error("model.encoder_weights", "the detector trains from random init")
        try:
            DetectorSpec(**_spec_options(model.options))
        except (TypeError, ValueError) as error:
            raise config.error("model.options", str(error)) from None
        data = config.data
        kind = getattr(data, "kind", None)
        if kind == "procedural" and getattr(data, "generator", None) != "faces":
            raise config.error("data.generator", f"detection draws 'faces', got {data.generator!r}")
        if kind not in ("procedural", "folder"):
            raise config.error("data.kind", f"detection reads procedural or folder data, got {kind!r}")
        if any(v % 32 for v in config.augment.crop):
            raise config.error(
                "augment.crop", f"must be multiples of 32 (the stride-32 features), got {config.augment.crop}"
            )
        if config.augment.vflip or config.augment.transpose:
            raise config.error("augment", "faces have an up: vflip and transpose must be 0")

    def check_contract(self, config: PipelineConfig, contract: ModelContract) -> None:
        if contract.height % 32 or contract.width % 32:
            raise config.error(
                "input_size", f"{contract.height}x{contract.width}: the detector needs multiples of 32"
            )
        crop_h, crop_w = config.augment.crop
        if crop_h > contract.height or crop_w > contract.width:
            raise config.error(
                "augment.crop", f"{[crop_h, crop_w]} exceeds the input {[contract.height, contract.width]}"
            )
        names = contract.labels.names
        unknown = sorted(set(config.gate.floors.min_class_ap50) - set(names))
        if unknown:
            raise config.error("gate.min_class_ap50", f"{unknown} are not classes of labels.txt {names}")
        if config.data.kind == "procedural":
            from datagen.faces import CLASSES

            if tuple(names) != CLASSES:
                raise config.error("data.generator", f"faces draws {list(CLASSES)}, labels.txt has {names}")

    def build_splits(
        self, config: PipelineConfig, contract: ModelContract, work_dir: Path, progress: Any = None
    ) -> DataSplits:
        spec = config.data
        if spec.kind == "procedural":
            sizes = {"train": spec.train, "val": spec.val, "test": spec.test}
            splits = {
                split: detection_data.ProceduralFaces(
                    split, sizes[split], contract.height, contract.width, spec.seed
                )
                for split in SPLITS
            }
            report = {"generator": "datagen.faces", "sizes": sizes, "identities": "disjoint per split"}
            return DataSplits(splits["train"], splits["val"], splits["test"], report)
        return folder_splits(
            Path(spec.root), contract.labels.names, spec.seed, spec.val_fraction, spec.test_fraction
        )

    def build_model(self, spec: ModelSpec, contract: ModelContract) -> torch.nn.Module:
        from training.detection.model import Detector, DetectorSpec

        return Detector(contract.num_classes, DetectorSpec(**_spec_options(spec.options)))

    def load_training_data(
        self,
        dataset: Sequence[detection_data.Sample],
        contract: ModelContract,
        progress: Any = None,
        description: str = "load",
    ) -> Sized:
        """Render or read every sample once, at the contract's input size as a client would send it."""
        task = progress.add_task(description, total=len(dataset)) if progress is not None else None
        samples = []
        for i in range(len(dataset)):
            samples.append(detection_data.resize_sample(dataset[i], contract.height, contract.width))
            if task is not None:
                progress.advance(task)
        return InMemoryDetections(samples, contract.num_classes)

    def sample_batch(
        self, data: InMemoryDetections, augment: AugmentSpec, batch_size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return sample_batch(data, augment, batch_size, rng)

    def loss(self, config: PipelineConfig, device: torch.device) -> Callable[[Any, Any], torch.Tensor]:
        import torch

        from training.detection.targets import detection_loss

        weights: DetectionLoss = config.loss

        def compute(
            outputs: tuple[torch.Tensor, torch.Tensor], targets: dict[str, np.ndarray]
        ) -> torch.Tensor:
            heat, ltrb = outputs
            moved = {k: torch.from_numpy(v).to(device) for k, v in targets.items()}
            total, _ = detection_loss(
                heat,
                ltrb,
                moved["heat"],
                moved["box_target"],
                moved["box_weight"],
                weights.heatmap,
                weights.box,
            )
            return total

        return compute

    def serving_head(self, contract: ModelContract) -> torch.nn.Module:
        from training.detection.model import CenterNetDecode

        return CenterNetDecode(contract.height, contract.width, contract.max_detections)

    def agreement(self, reference: Outputs, candidate: Outputs) -> tuple[int, int]:
        return agreement(reference, candidate)

    def evaluate(
        self,
        predict: Predictor,
        dataset: Sequence[detection_data.Sample],
        contract: ModelContract,
        engine: str,
        out_dir: Path | None = None,
        worst_k: int = 6,
        batch_size: int = 4,
    ) -> DetectionEvaluation:
        return evaluate(predict, dataset, contract, engine, out_dir, worst_k, batch_size)

    def gate_checks(self, evaluation: DetectionEvaluation, floors: Floors) -> list[Check]:
        return [Check(ok, text) for ok, text in gate_checks(evaluation, floors)]

    def card(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        from training.detection.model import MIN_SCORE, STRIDE

        return {
            "decoding": {
                "in_graph": True,
                "method": "CenterNet peaks: sigmoid, best class per cell, 3x3 max-pool, top-K (no NMS op)",
                "stride": STRIDE,
                "min_score": MIN_SCORE,
            },
            "weights": "random init, trained here; no third-party weights or AGPL code",
        }


def folder_splits(
    root: Path, classes: Sequence[str], seed: int, val_fraction: float, test_fraction: float
) -> DataSplits:
    """A YOLO (``data.yaml``) or VOC (``Annotations/``) dataset as train/val/test; its own
    ``images/<split>`` folders win over the fractions."""
    if (root / "data.yaml").is_file():
        own = [s for s in SPLITS if (root / "images" / s).is_dir()]
        if own:
            reports = {s: detection_data.load_yolo(root, classes, s) for s in own}
            images = {s: reports[s].images if s in reports else [] for s in SPLITS}
            report = {"format": "yolo", **{s: r.to_dict() for s, r in reports.items()}}
            return DataSplits(*(detection_data.FolderImages(images[s]) for s in SPLITS), report)
        loaded = detection_data.load_yolo(root, classes)
        report = {"format": "yolo", **loaded.to_dict()}
    elif (root / "Annotations").is_dir() or (root / "annotations").is_dir():
        loaded = detection_data.load_voc(root, classes)
        report = {"format": "voc", **loaded.to_dict()}
    else:
        raise FileNotFoundError(f"{root}: neither a YOLO dataset (data.yaml) nor a VOC one (Annotations/)")
    if not loaded.images:
        raise ValueError(f"{root}: no usable images ({len(loaded.skipped)} skipped)")
    order = np.random.default_rng(seed).permutation(len(loaded.images))
    n_val = int(round(len(order) * val_fraction)) if val_fraction else 0
    n_test = int(round(len(order) * test_fraction)) if test_fraction else 0
    n_val, n_test = max(n_val, 1 if val_fraction else 0), max(n_test, 1 if test_fraction else 0)
    picked = [loaded.images[i] for i in order]
    val, test, train = picked[:n_val], picked[n_val : n_val + n_test], picked[n_val + n_test :]
    if not train:
        raise ValueError(f"{root}: {len(picked)} images leave none for training after val/test")
    report["sizes"] = {"train": len(train), "val": len(val), "test": len(test)}
    return DataSplits(*(detection_data.FolderImages(s) for s in (train, val, test)), report)


def _spec_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


register(DetectionAdapter())
