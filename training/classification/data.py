"""Classification data: procedural sources, the public layouts users bring, and training batches.

A dataset is a sequence of :class:`Sample` (an RGB uint8 image of any size and a class index).
Loaders check every file or row and report each one they skip with its reason, so a user fixes
their data from the report instead of guessing:

- **ImageFolder**: ``<root>/<split>/<class>/*.jpg`` (any of jpg, jpeg, png, bmp, webp), one
  folder per class named as in ``labels.txt``. Folders that name no class, files that are not
  images, and images that do not decode are reported by path.
- **CSV** of ``image,label`` (the fashion-product catalogue format; other column names can be
  given): ``image`` is a path relative to the images folder (an id without extension gets
  ``.jpg``), ``label`` a class name in any case with spaces or underscores (``Casual Shoes`` is
  ``casual_shoes``). Rows with missing fields, unknown labels, missing or unreadable images and
  repeated images are reported by line number.
"""

from __future__ import annotations

import csv
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """Data that cannot be used at all (no images, no header); the message says what and where."""


@dataclass(frozen=True, eq=False)
class Sample:
    image: np.ndarray  # RGB uint8 [H, W, 3]
    label: int
    source: str = ""  # a path, or "<generator>#<index>"
    # Auxiliary regression targets, known only for procedural data (the engagement generator's
    # property scores, in the order of generator_aux_names); empty for files.
    aux: tuple[float, ...] = ()


@dataclass
class LoadReport:
    """What a loader kept and what it skipped, each skip with where and why."""

    source: str
    loaded: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, where: str, reason: str) -> None:
        self.skipped.append({"where": where, "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": self.loaded, "skipped": self.skipped}

    def lines(self) -> list[str]:
        return [f"{entry['where']}: {entry['reason']}" for entry in self.skipped]


def normalise_label(text: str) -> str:
    """``"Casual Shoes"`` -> ``"casual_shoes"``: catalogue names to label-map names."""
    return "_".join(text.strip().lower().replace("-", " ").replace("_", " ").split())


def read_image(path: Path) -> np.ndarray | None:
    """An RGB uint8 image, or None when the file does not decode."""
    data = np.fromfile(str(path), np.uint8) if Path(path).is_file() else np.empty(0, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------ procedural


class ProceduralProducts(Sequence[Sample]):
    """``count`` balanced product photos from ``datagen.products``, rendered on access."""

    def __init__(self, count: int, seed: int, size: int = 128) -> None:
        self.count, self.seed, self.size = count, seed, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        from datagen.products import PRODUCT_CLASSES, render_product, sample_seed

        if not 0 <= index < self.count:
            raise IndexError(index)
        item = render_product(
            sample_seed(self.seed, index), index % len(PRODUCT_CLASSES), self.size, self.size
        )
        return Sample(item.image, item.label, f"products#{index}")


class ProceduralEngagement(Sequence[Sample]):
    """``count`` product photos labelled by the engagement rule of ``datagen.engagement``."""

    def __init__(self, count: int, seed: int, size: int = 128) -> None:
        self.count, self.seed, self.size = count, seed, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        from datagen.engagement import render_engagement
        from datagen.products import sample_seed

        if not 0 <= index < self.count:
            raise IndexError(index)
        item = render_engagement(sample_seed(self.seed, index), self.size, self.size)
        scores = item.properties.scores()
        aux = tuple(scores[name] for name in generator_aux_names("engagement"))
        return Sample(item.image, item.label, f"engagement#{index}", aux)


def generator_classes(name: str) -> tuple[str, ...]:
    """The class names a procedural generator labels with, in its label order."""
    if name == "products":
        from datagen.products import PRODUCT_CLASSES

        return PRODUCT_CLASSES
    if name == "engagement":
        from datagen.engagement import ENGAGEMENT_CLASSES

        return ENGAGEMENT_CLASSES
    raise DatasetError(f"unknown classification generator {name!r}; known: products, engagement")


def generator_aux_names(name: str) -> tuple[str, ...]:
    """The auxiliary regression targets a procedural generator's samples carry (``Sample.aux``)."""
    generator_classes(name)  # validates the name
    if name == "engagement":
        from datagen.engagement import WEIGHTS

        return tuple(WEIGHTS)  # the labelling rule's property scores, 0..1 each
    return ()


def procedural(name: str, count: int, seed: int, size: int) -> Sequence[Sample]:
    generator_classes(name)  # validates the name
    source = ProceduralProducts if name == "products" else ProceduralEngagement
    return source(count, seed, size)


# ---------------------------------------------------------------------------------- ImageFolder


@dataclass(frozen=True, eq=False)
class LoadedFiles(Sequence[Sample]):
    """Checked image files with their labels, decoded again on access (the checks decoded them once)."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        image = read_image(self.paths[index])
        if image is None:
            raise DatasetError(f"{self.paths[index]}: no longer decodes as an image")
        return Sample(image, self.labels[index], str(self.paths[index]))


def load_image_folder(root: Path, class_names: Sequence[str]) -> tuple[LoadedFiles, LoadReport]:
    """``root/<class>/*`` images: every file checked, every skip reported with its reason."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    report = LoadReport(str(root))
    wanted = {normalise_label(name): index for index, name in enumerate(class_names)}
    paths: list[Path] = []
    labels: list[int] = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            report.skip(str(entry), "not in a class folder")
            continue
        label = wanted.get(normalise_label(entry.name))
        if label is None:
            report.skip(str(entry), f"folder names no class (classes: {', '.join(class_names)})")
            continue
        for path in sorted(p for p in entry.rglob("*") if p.is_file()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                report.skip(str(path), f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
            elif read_image(path) is None:
                report.skip(str(path), "does not decode as an image")
            else:
                paths.append(path)
                labels.append(label)
    report.loaded = len(paths)
    if not paths:
        raise DatasetError(f"{root}: no usable images in class folders ({'; '.join(report.lines()[:5])})")
    return LoadedFiles(tuple(paths), tuple(labels)), report


def image_folder_splits(
    root: Path,
    class_names: Sequence[str],
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> tuple[dict[str, Sequence[Sample]], list[LoadReport]]:
    """The splits of ``root``: ``<split>/<class>/`` when ``root/train`` exists (missing val or test
    are cut from train), else ``root/<class>/`` cut into train, val and test by ``seed``."""
    root = Path(root)
    if (root / "train").is_dir():
        splits, reports = {}, []
        for split in SPLITS:
            if (root / split).is_dir():
                splits[split], report = load_image_folder(root / split, class_names)
                reports.append(report)
        missing = {name: fraction for name, fraction in (("val", val_fraction), ("test", test_fraction))}
        missing = {name: fraction for name, fraction in missing.items() if name not in splits}
        if missing:
            cut = split_by_fraction(splits["train"], seed, missing.get("val", 0.0), missing.get("test", 0.0))
            splits["train"] = cut["train"]
            splits.update({name: cut[name] for name in missing})
        return splits, reports
    files, report = load_image_folder(root, class_names)
    return split_by_fraction(files, seed, val_fraction, test_fraction), [report]


# ------------------------------------------------------------------------------------------ CSV


def load_csv(
    csv_path: Path,
    class_names: Sequence[str],
    images_dir: Path | None = None,
    image_column: str = "image",
    label_column: str = "label",
) -> tuple[LoadedFiles, LoadReport]:
    """Rows ``image,label`` of ``csv_path``; images relative to ``images_dir`` (default: the CSV's folder).

    Every bad row is reported as ``<csv>:<line>`` with its reason; labels outside ``class_names``
    (a catalogue has many article types) are reported too, so the report shows what was left out.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: no such CSV file")
    images_dir = Path(images_dir) if images_dir is not None else csv_path.parent
    wanted = {normalise_label(name): index for index, name in enumerate(class_names)}
    report = LoadReport(str(csv_path))
    paths: list[Path] = []
    labels: list[int] = []
    seen: dict[Path, int] = {}
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for column in (image_column, label_column):
            if column not in header:
                raise DatasetError(f"{csv_path}:1: header {header} has no {column!r} column")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            image_text = (row.get(image_column) or "").strip()
            label_text = (row.get(label_column) or "").strip()
            if None in row or any(value is None for value in row.values()):
                report.skip(where, f"expected {len(header)} fields, found {len(list(row.values()))}")
                continue
            if not image_text or not label_text:
                report.skip(where, f"empty {image_column if not image_text else label_column!r}")
                continue
            label = wanted.get(normalise_label(label_text))
            if label is None:
                report.skip(where, f"label {label_text!r} is not a class ({', '.join(class_names)})")
                continue
            path = images_dir / image_text
            if not Path(image_text).suffix:
                path = path.with_name(path.name + ".jpg")  # catalogue ids name <id>.jpg
            if path in seen:
                report.skip(where, f"image {image_text!r} already listed on line {seen[path]}")
                continue
            seen[path] = reader.line_num
            if not path.is_file():
                report.skip(where, f"image {image_text!r} not found in {images_dir}")
            elif read_image(path) is None:
                report.skip(where, f"image {image_text!r} does not decode")
            else:
                paths.append(path)
                labels.append(label)
    report.loaded = len(paths)
    if not paths:
        raise DatasetError(
            f"{csv_path}: no usable rows ({'; '.join(report.lines()[:5]) or 'the file is empty'})"
        )
    return LoadedFiles(tuple(paths), tuple(labels)), report


# ------------------------------------------------------------------------------------- splitting


@dataclass(frozen=True, eq=False)
class Subset(Sequence[Sample]):
    items: Sequence[Sample]
    indices: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        return self.items[self.indices[index]]


def split_by_fraction(
    items: Sequence[Sample], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, Sequence[Sample]]:
    """A seeded shuffle cut into train, val and test (at least one each when its fraction is > 0)."""
    order = np.random.default_rng(seed).permutation(len(items)).tolist()
    sizes = [max(1, round(len(items) * f)) if f > 0 else 0 for f in (val_fraction, test_fraction)]
    if sum(sizes) >= len(items):
        raise DatasetError(f"{len(items)} images are too few to cut val {sizes[0]} and test {sizes[1]} from")
    val, test = order[: sizes[0]], order[sizes[0] : sizes[0] + sizes[1]]
    train = order[sizes[0] + sizes[1] :]
    return {
        name: Subset(items, tuple(part)) for name, part in (("train", train), ("val", val), ("test", test))
    }


def make_splits(
    spec: Any, class_names: Sequence[str], size: int
) -> tuple[dict[str, Sequence[Sample]], dict[str, Any]]:
    """Train, val and test from a config's ``data:`` section, and a JSON-able report of how.

    ``kind: procedural`` renders ``generator`` images, ``train``/``val``/``test`` of them, each split
    from its own seed (no image is in two splits). ``kind: folder`` reads ``root``: a CSV file of
    ``image,label`` or an ImageFolder; missing splits are cut by ``val_fraction``/``test_fraction``.
    """
    if spec.kind == "procedural":
        generated = generator_classes(spec.generator)
        if list(generated) != list(class_names):
            raise DatasetError(
                f"the {spec.generator} generator labels {list(generated)}, not {list(class_names)}"
            )
        seeds = {"train": spec.seed, "val": spec.seed + 1_000_003, "test": spec.seed + 2_000_006}
        splits = {name: procedural(spec.generator, getattr(spec, name), seeds[name], size) for name in SPLITS}
        # The generator's docstring says what the classes look like and, for engagement, the
        # labelling rule: it travels with the data report into the model card.
        module = importlib.import_module(f"datagen.{spec.generator}")
        report: dict[str, Any] = {
            "source": f"datagen.{spec.generator}",
            "seeds": seeds,
            "generator_doc": (module.__doc__ or "").strip(),
        }
    else:
        root = Path(spec.root)
        if root.suffix.lower() == ".csv":
            files, loaded = load_csv(root, class_names)
            splits, reports = (
                split_by_fraction(files, spec.seed, spec.val_fraction, spec.test_fraction),
                [loaded],
            )
        else:
            splits, reports = image_folder_splits(
                root, class_names, spec.seed, spec.val_fraction, spec.test_fraction
            )
        report = {"source": str(root), "loaders": [r.to_dict() for r in reports]}
    return splits, report | {f"{name}_images": len(split) for name, split in splits.items()}


# ------------------------------------------------------------------------- arrays and batches


@dataclass(frozen=True, eq=False)
class Arrays:
    """A split held in memory at the model's input size: uint8 [N, H, W, 3], int64 labels [N] and,
    when every sample has them, float32 auxiliary targets [N, K] (else None)."""

    images: np.ndarray
    labels: np.ndarray
    aux: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, eq=False)
class Targets:
    """A batch's targets: int64 labels [B] and the auxiliary targets [B, K] when the data has them."""

    labels: np.ndarray
    aux: np.ndarray | None = None


def to_model_input(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize as clients do (``ModelContract.to_model_input``): INTER_AREA to the input size."""
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def load_arrays(dataset: Sequence[Sample], height: int, width: int, progress: Any = None) -> Arrays:
    images = np.empty((len(dataset), height, width, 3), np.uint8)
    labels = np.empty(len(dataset), np.int64)
    aux: list[tuple[float, ...]] = []
    for index in range(len(dataset)):
        sample = dataset[index]
        images[index] = to_model_input(sample.image, height, width)
        labels[index] = sample.label
        aux.append(sample.aux)
        if progress is not None:
            progress(index + 1, len(dataset))
    # Auxiliary targets only when every sample carries the same number of them (procedural data).
    widths = {len(targets) for targets in aux}
    aux_array = np.array(aux, np.float32) if len(widths) == 1 and widths != {0} else None
    return Arrays(images, labels, aux_array)


@dataclass(frozen=True)
class Augment:
    """Label-preserving augmentation, the pipeline's ``augment:`` fields; each is off at 0.

    ``crop`` is the smallest (height, width) of a random crop resized back to the input (at or
    above the input size: no crops). Engagement's label depends on framing, lighting and colour,
    so its config turns crops and photometric jitter off and keeps only flips.
    """

    hflip: float = 0.5
    vflip: float = 0.0
    transpose: float = 0.0  # swap rows and columns; square inputs only
    crop: tuple[int, int] = (10_000, 10_000)
    brightness: float = 0.0
    contrast: float = 0.0
    jpeg_probability: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 90)


def sample_batch(
    data: Arrays, augment: Augment, batch_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, Targets]:
    """A random batch with augmentation; random numbers only for the augmentations that are on.

    The augmentations must keep the auxiliary targets true (engagement's only flips horizontally).
    """
    from training.tasks import photometric  # the pipeline's one photometric jitter

    indices = rng.integers(0, len(data), batch_size)
    images = data.images[indices].copy()
    targets = Targets(data.labels[indices].copy(), None if data.aux is None else data.aux[indices].copy())
    height, width = images.shape[1:3]
    min_h, min_w = min(augment.crop[0], height), min(augment.crop[1], width)
    if (min_h, min_w) != (height, width):
        for i, image in enumerate(images):
            crop_h, crop_w = int(rng.integers(min_h, height + 1)), int(rng.integers(min_w, width + 1))
            y, x = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
            images[i] = cv2.resize(
                image[y : y + crop_h, x : x + crop_w], (width, height), interpolation=cv2.INTER_AREA
            )
    if augment.hflip:
        flip = rng.random(batch_size) < augment.hflip
        images[flip] = images[flip, :, ::-1]
    if augment.vflip:
        flip = rng.random(batch_size) < augment.vflip
        images[flip] = images[flip, ::-1]
    if augment.transpose:
        if height != width:
            raise ValueError(f"augment.transpose needs a square input, got {height}x{width}")
        swap = rng.random(batch_size) < augment.transpose
        images[swap] = images[swap].transpose(0, 2, 1, 3)
    photometric(images, augment, rng)  # brightness, contrast, JPEG: pixels only
    return images, targets
