"""Training data: one sample type, two sources (procedural scenes, image/mask folders), and splits.

Every dataset yields :class:`Sample` (an RGB image, its class-id mask and a stable name) and knows
its ``num_classes``, so the trainer never cares where pixels came from. The folder format
(``images/<stem>.png|jpg|jpeg`` + ``masks/<stem>.png`` of class ids) is the meeting point: procedural
scenes can be written to it (:func:`write_folder_dataset`) and SAM-bootstrapped SKU-110K boxes are
(``training.sam_bootstrap``). The ``data:`` section of the training config is :class:`DataSpec`, and
:func:`build_splits` turns it into train/val/test datasets.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from clients.atomic import write_text
from clients.labels import LabelMap
from clients.masks import decode_mask_png, encode_mask_png
from datagen.shelves import scene_seed

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what the folder format reads (case-insensitive)
SPLITS = ("train", "val", "test")
# Base seeds of the splits are seed + k * this: train and val then match the spine's default model
# (see training.default_model), so it can move onto these datasets and keep its results.
_SPLIT_SEED_STRIDE = 1_000_003


class DatasetError(ValueError):
    """Bad dataset input (missing, unpaired or invalid files); the message names the file."""


@dataclass(frozen=True, eq=False)
class Sample:
    """One training example: an RGB uint8 ``[H, W, 3]`` image and its uint8 ``[H, W]`` class-id mask."""

    image: np.ndarray
    mask: np.ndarray
    name: str  # stable id: the scene index ("000123") or the image's file stem

    def __post_init__(self) -> None:
        image, mask = self.image, self.mask
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"{self.name}: image must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}"
            )
        if mask.dtype != np.uint8 or mask.shape != image.shape[:2]:
            raise ValueError(
                f"{self.name}: mask must be uint8 {list(image.shape[:2])}, got {mask.dtype} {mask.shape}"
            )


class SegmentationDataset(Protocol):
    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


# (seed, height, width, labels) -> (RGB image, class-id mask): a procedural segmentation generator.
Renderer = Callable[[int, int, int, LabelMap], tuple[np.ndarray, np.ndarray]]


def _shelves(seed: int, height: int, width: int, labels: LabelMap) -> tuple[np.ndarray, np.ndarray]:
    from datagen.shelves import render_scene

    scene = render_scene(seed, height, width, labels)
    return scene.image, scene.mask


def _cracks(seed: int, height: int, width: int, labels: LabelMap) -> tuple[np.ndarray, np.ndarray]:
    from datagen.cracks import CLASSES, render_crack

    if tuple(labels.names) != CLASSES:
        raise DatasetError(f"the cracks generator draws {list(CLASSES)}, but labels.txt has {labels.names}")
    sample = render_crack(seed, height, width)
    return sample.image, sample.mask


# data.generator -> renderer; each draws the classes of its model's labels.txt.
GENERATORS: dict[str, Renderer] = {"shelves": _shelves, "cracks": _cracks}
# Generators the other tasks' adapters (training/tasks/) render themselves and check against their task.
TASK_GENERATORS = frozenset({"faces", "products", "engagement"})


class ProceduralDataset:
    """``size`` scenes of a :mod:`datagen` generator, rendered on access (deterministic, not cached).

    Scene ``i`` of a split has seed ``scene_seed(base, i)``, where the split's base seed is
    ``seed`` (train), ``seed + 1_000_003`` (val) or ``seed + 2_000_006`` (test). ``scene_seed`` mixes
    its inputs, so the three splits share no scene. A trainer that revisits scenes should pre-render
    them once (a 384x640 scene renders in tens of milliseconds and weighs ~1 MB).
    """

    def __init__(
        self,
        split: str,
        size: int,
        seed: int,
        height: int,
        width: int,
        labels: LabelMap,
        generator: str = "shelves",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if generator not in GENERATORS:
            raise ValueError(f"unknown generator {generator!r}; known: {sorted(GENERATORS)}")
        self.split, self.size, self.height, self.width, self.labels = split, size, height, width, labels
        self.render = GENERATORS[generator]
        self.num_classes = len(labels)
        self.base_seed = seed + SPLITS.index(split) * _SPLIT_SEED_STRIDE

    def __len__(self) -> int:
        return self.size

    def scene_seeds(self) -> list[int]:
        return [scene_seed(self.base_seed, i) for i in range(self.size)]

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} {self.split} scenes")
        image, mask = self.render(scene_seed(self.base_seed, index), self.height, self.width, self.labels)
        return Sample(image, mask, f"{index:06d}")


class BinaryFolderDataset:
    """A binary dataset in the public layout (masks 0/255 or 0/1), read by :mod:`datagen.cracks`.

    Every pair is validated once, when the folder is listed; pairs that fail are skipped and listed
    in ``skipped`` with their reasons. :meth:`subset` makes a split without validating again.
    """

    def __init__(self, root: Path) -> None:
        from datagen.cracks import read_crack_folder

        try:
            self.folder = read_crack_folder(Path(root))
        except ValueError as error:
            raise DatasetError(str(error)) from None
        self.names = self.folder.names
        self.num_classes = 2

    def subset(self, names: Sequence[str]) -> BinaryFolderDataset:
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise DatasetError(f"{self.folder.root}: no valid image/mask pair named {_some(unknown)}")
        split = copy.copy(self)
        split.names = list(names)
        return split

    @property
    def skipped(self) -> list[dict[str, str]]:
        return self.folder.report()["skipped"]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        try:
            sample = self.folder.read(self.names[index])
        except ValueError as error:
            raise DatasetError(str(error)) from None
        return Sample(sample.image, sample.mask, sample.name)


class FolderDataset:
    """``root/images/<stem>.(png|jpg|jpeg)`` with ``root/masks/<stem>.png`` class ids, by sorted stem.

    Construction checks that images and masks pair up one to one (so a split never silently loses
    files); pixels are checked when read, since decoding every file up front would cost minutes on a
    real dataset. ``names`` picks a subset (a split). Images keep their own size: resizing or
    cropping to the model's input is the trainer's job.
    """

    def __init__(self, root: Path, labels: LabelMap, names: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        self.num_classes = len(labels)
        self._files = _paired_files(self.root)
        if names is None:
            self.names = sorted(self._files)
        else:
            unknown = [name for name in names if name not in self._files]
            if unknown:
                raise DatasetError(f"{self.root}: no image/mask pair named {_some(unknown)}")
            self.names = list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self.names):
            raise IndexError(f"index {index} out of range for {len(self.names)} images in {self.root}")
        name = self.names[index]
        image_path, mask_path = self._files[name]
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"{image_path}: not a decodable image")
        try:
            mask = decode_mask_png(mask_path.read_bytes())
        except ValueError as error:
            raise DatasetError(f"{mask_path}: {error}") from None
        if mask.dtype != np.uint8:
            raise DatasetError(f"{mask_path}: masks are 8-bit class ids, got {mask.dtype}")
        if mask.shape != bgr.shape[:2]:
            raise DatasetError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but {image_path.name} is "
                f"{bgr.shape[1]}x{bgr.shape[0]}"
            )
        if int(mask.max()) >= self.num_classes:
            bad = sorted(int(v) for v in np.unique(mask) if v >= self.num_classes)
            raise DatasetError(
                f"{mask_path}: class ids {bad} are not in the label map (0..{self.num_classes - 1})"
            )
        return Sample(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), mask, name)


def _paired_files(root: Path) -> dict[str, tuple[Path, Path]]:
    """stem -> (image, mask) for every file of ``root/images`` and ``root/masks``; unpaired -> error."""
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DatasetError(f"{folder} is not a directory (a folder dataset has images/ and masks/)")
    images: dict[str, Path] = {}
    for path in _visible_files(images_dir):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in images:
            raise DatasetError(f"{images_dir}: {images[path.stem].name} and {path.name} share a name")
        images[path.stem] = path
    masks = {path.stem: path for path in _visible_files(masks_dir) if path.suffix.lower() == ".png"}
    if not images:
        raise DatasetError(f"{images_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    no_mask = [images[stem].name for stem in images.keys() - masks.keys()]
    if no_mask:
        raise DatasetError(f"{masks_dir} has no mask for {len(no_mask)} image(s): {_some(sorted(no_mask))}")
    no_image = [masks[stem].name for stem in masks.keys() - images.keys()]
    if no_image:
        raise DatasetError(
            f"{images_dir} has no image for {len(no_image)} mask(s): {_some(sorted(no_image))}"
        )
    return {stem: (images[stem], masks[stem]) for stem in images}


def _visible_files(folder: Path) -> list[Path]:
    """Sorted, without dotfiles: staging files (``.x.png.123.partial``) and OS litter (``._x.jpg``)."""
    return sorted(path for path in folder.iterdir() if not path.name.startswith("."))


def _some(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names) - limit} more)"


@dataclass(frozen=True)
class DataSpec:
    """The ``data:`` section of the training config.

    ``kind: procedural`` renders ``train``/``val``/``test`` scenes from ``seed`` with ``generator``
    (a name of :data:`GENERATORS`: ``shelves``, ``cracks``). ``kind: folder`` reads ``root`` and
    splits its images by ``seed``: ``val_fraction`` and ``test_fraction`` of them (at least one each
    when the fraction is above 0) go to val and test. ``mask_format`` says what its masks hold:
    ``class_ids`` (PNG class ids, every pair must be valid) or ``binary`` (the public layout of
    binary datasets: PNG/JPG masks of 0/255 or 0/1; invalid pairs are skipped and reported).
    A relative ``root`` is relative to the working directory.
    """

    kind: str = "procedural"
    root: Path | None = None
    generator: str | None = None
    mask_format: str = "class_ids"
    train: int = 600
    val: int = 32
    test: int = 64
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("procedural", "folder"):
            raise ValueError(f"data.kind must be 'procedural' or 'folder', got {self.kind!r}")
        if self.kind == "folder" and self.root is None:
            raise ValueError("data.root is required when data.kind is 'folder'")
        if self.kind == "procedural" and self.root is not None:
            raise ValueError("data.root is only used when data.kind is 'folder'")
        if self.kind == "procedural" and self.generator not in {*GENERATORS, *TASK_GENERATORS}:
            known = sorted({*GENERATORS, *TASK_GENERATORS})
            raise ValueError(f"data.generator must be one of {known}, got {self.generator!r}")
        if self.kind == "folder" and self.generator is not None:
            raise ValueError("data.generator is only used when data.kind is 'procedural'")
        if self.mask_format not in ("class_ids", "binary"):
            raise ValueError(f"data.mask_format must be 'class_ids' or 'binary', got {self.mask_format!r}")
        if self.root is not None and not isinstance(self.root, Path):
            raise ValueError(f"data.root must be a path, got {self.root!r}")
        for name, minimum in (("train", 1), ("val", 0), ("test", 0), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"data.{name} must be an integer >= {minimum}, got {value!r}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
                raise ValueError(f"data.{name} must be a number in [0, 1), got {value!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must leave images for training")

    @classmethod
    def from_dict(cls, data: dict) -> DataSpec:
        if not isinstance(data, dict):
            raise ValueError(f"the data section must be a mapping, got {type(data).__name__}")
        known = [field.name for field in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown data key(s) {unknown}; known: {known}")
        values = dict(data)
        if isinstance(values.get("root"), str):
            values["root"] = Path(values["root"])
        return cls(**values)


@dataclass(frozen=True)
class Splits:
    train: SegmentationDataset
    val: SegmentationDataset
    test: SegmentationDataset
    skipped: list[dict[str, str]] = field(default_factory=list)  # files left out, with reasons


def build_splits(spec: DataSpec, height: int, width: int, labels: LabelMap) -> Splits:
    """The three datasets of ``spec``.

    ``height`` and ``width`` size procedural scenes; folder images keep their own size (not resized).
    """
    if spec.kind == "procedural":
        sizes = {"train": spec.train, "val": spec.val, "test": spec.test}
        return Splits(
            **{
                split: ProceduralDataset(
                    split, sizes[split], spec.seed, height, width, labels, spec.generator or ""
                )
                for split in SPLITS
            }
        )
    assert spec.root is not None  # DataSpec checks it
    if spec.mask_format == "binary":
        if len(labels) != 2:
            raise DatasetError(f"data.mask_format binary needs 2 classes, but labels.txt has {labels.names}")
        everything = BinaryFolderDataset(spec.root)
        split_names = split_folder_names(everything.names, spec.seed, spec.val_fraction, spec.test_fraction)
        splits = {split: everything.subset(split_names[split]) for split in SPLITS}
        return Splits(**splits, skipped=everything.skipped)
    names = FolderDataset(spec.root, labels).names
    split_names = split_folder_names(names, spec.seed, spec.val_fraction, spec.test_fraction)
    return Splits(**{split: FolderDataset(spec.root, labels, split_names[split]) for split in SPLITS})


def split_folder_names(
    names: Sequence[str], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, list[str]]:
    """Deterministic split: names ranked by a hash of (seed, name), val first, then test, rest train.

    Ranking by hash instead of shuffling a list keeps the split independent of listing order, and
    when images are added only the ones near a boundary change split. Each split is sorted.
    """
    ranked = sorted(names, key=lambda name: hashlib.sha256(f"{seed}/{name}".encode()).digest())
    n_val, n_test = (_share(len(ranked), fraction) for fraction in (val_fraction, test_fraction))
    if n_val + n_test >= len(ranked):
        raise DatasetError(
            f"{len(ranked)} images are too few for val_fraction {val_fraction} and test_fraction "
            f"{test_fraction}: nothing would be left to train on"
        )
    return {
        "val": sorted(ranked[:n_val]),
        "test": sorted(ranked[n_val : n_val + n_test]),
        "train": sorted(ranked[n_val + n_test :]),
    }


def _share(total: int, fraction: float) -> int:
    return max(1, round(total * fraction)) if fraction > 0 else 0


def write_folder_dataset(dataset: SegmentationDataset, out_dir: Path) -> None:
    """Write ``dataset`` in the folder format: ``images/<name>.png`` (lossless) and ``masks/<name>.png``.

    All or nothing: files go into a temporary directory beside ``out_dir``, renamed into place at the
    end. An existing non-empty ``out_dir`` is refused rather than mixed into.
    """
    with atomic_directory(out_dir) as staging:
        (staging / "images").mkdir()
        (staging / "masks").mkdir()
        seen: set[str] = set()
        for index in range(len(dataset)):
            sample = dataset[index]
            if sample.name in seen or Path(sample.name).name != sample.name or not sample.name:
                raise DatasetError(f"sample {index}: name {sample.name!r} is empty, a path or a duplicate")
            seen.add(sample.name)
            ok, png = cv2.imencode(".png", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
            if not ok:
                raise DatasetError(f"sample {sample.name}: PNG encoding failed")
            (staging / "images" / f"{sample.name}.png").write_bytes(png.tobytes())
            (staging / "masks" / f"{sample.name}.png").write_bytes(encode_mask_png(sample.mask))


@contextmanager
def atomic_directory(out_dir: Path) -> Iterator[Path]:
    """Yield an empty staging directory that becomes ``out_dir`` if the block succeeds.

    On error the staging directory is removed, so readers never see a half-written dataset. An
    existing empty ``out_dir`` is replaced; a non-empty one is refused.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DatasetError(f"{out_dir} already exists and is not empty; refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    staging.mkdir()
    try:
        yield staging
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON, written with :mod:`clients.atomic` (complete or absent)."""
    write_text(path, json.dumps(data, indent=2) + "\n")
