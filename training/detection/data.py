"""Detection data: samples, the procedural face-mask source, and loaders for YOLO txt and Pascal VOC.

Loaders check every row and file and return what they skipped, each with its file name and a reason
(``LoadReport.skipped``), so a bad dataset is never trained on silently. For training, images are
resized (stretched) to the model's input size as ``ModelContract.to_model_input`` does when serving,
and boxes with them (``resize_sample``); evaluation keeps each image's own size.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from datagen.faces import render_faces, scene_seed

ZOOM = (0.6, 1.4)  # scale augmentation: faces a bit nearer or farther than drawn
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Class names public face-mask datasets use for ours (the Kaggle VOC set spells one "mask_weared_incorrect").
DEFAULT_ALIASES = {
    "mask_weared_incorrect": "mask_worn_incorrectly",
    "mask_worn_incorrect": "mask_worn_incorrectly",
}


@dataclass(frozen=True, eq=False)
class Sample:
    """An RGB image at model size with boxes x1, y1, x2, y2 in its pixels and class ids."""

    image: np.ndarray
    boxes: np.ndarray  # float32 [N, 4]
    class_ids: np.ndarray  # int64 [N]
    name: str = ""


@dataclass(frozen=True)
class LabelledImage:
    """A checked image file and its checked boxes in the file's own pixels (loaded lazily)."""

    path: Path
    boxes: np.ndarray
    class_ids: np.ndarray

    def load(self) -> Sample:
        """The image at its own size (``resize_sample`` brings it to the model's)."""
        image = read_rgb(self.path)
        if image is None:
            raise ValueError(f"{self.path.name}: not a readable image")
        return Sample(image, self.boxes, self.class_ids, self.path.name)


@dataclass
class LoadReport:
    """What a loader found: usable images and everything it skipped, by file and reason."""

    images: list[LabelledImage] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file or file:line, reason)
    backgrounds: int = 0  # images without objects (YOLO: no label file or an empty one)

    def skip(self, where: str, reason: str) -> None:
        self.skipped.append((where, reason))

    def to_dict(self) -> dict:
        return {
            "images": len(self.images),
            "boxes": int(sum(len(i.boxes) for i in self.images)),
            "backgrounds": self.backgrounds,
            "skipped": [{"where": w, "reason": r} for w, r in self.skipped],
        }


def read_rgb(path: Path) -> np.ndarray | None:
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resize_sample(sample: Sample, height: int, width: int) -> Sample:
    h, w = sample.image.shape[:2]
    if (h, w) == (height, width):
        return sample
    image = cv2.resize(sample.image, (width, height), interpolation=cv2.INTER_AREA)
    scale = np.array([width / w, height / h, width / w, height / h], np.float32)
    return Sample(image, sample.boxes * scale, sample.class_ids, sample.name)


# --- YOLO txt ---------------------------------------------------------------------------------------


def load_yolo(root: Path, classes: Sequence[str], split: str | None = None) -> LoadReport:
    """A YOLO dataset: ``data.yaml`` (``names``), ``images/`` and ``labels/`` of the same stems.

    ``split`` picks ``images/<split>`` and ``labels/<split>`` when the dataset has them. Each label row
    is ``class cx cy w h`` normalised to 0..1; ``names`` must map onto ``classes`` (the model's labels).
    """
    root = Path(root)
    report = LoadReport()
    mapping = _yolo_class_mapping(root, classes)
    images_dir, labels_dir = root / "images", root / "labels"
    if split and (images_dir / split).is_dir():
        images_dir, labels_dir = images_dir / split, labels_dir / split
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{root}: no images/ folder")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    for label in sorted(labels_dir.glob("*.txt")) if labels_dir.is_dir() else []:
        if label.stem not in images:
            report.skip(label.name, "label file without an image of the same stem")
    for stem, path in images.items():
        size = _image_size(path)
        if size is None:
            report.skip(path.name, "not a readable image")
            continue
        label = labels_dir / f"{stem}.txt"
        boxes, ids = [], []
        if label.is_file():
            for number, line in enumerate(label.read_text(errors="replace").splitlines(), start=1):
                if not line.strip():
                    continue
                row = _yolo_row(line, mapping, size)
                if isinstance(row, str):
                    report.skip(f"{label.name}:{number}", row)
                    continue
                boxes.append(row[1])
                ids.append(row[0])
        if not boxes:
            report.backgrounds += 1
        report.images.append(LabelledImage(path, _boxes(boxes), np.array(ids, np.int64)))
    return report


def _yolo_class_mapping(root: Path, classes: Sequence[str]) -> dict[int, int]:
    data_yaml = root / "data.yaml"
    if not data_yaml.is_file():
        raise FileNotFoundError(f"{root}: no data.yaml naming the classes")
    try:
        data = yaml.safe_load(data_yaml.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{data_yaml}: not YAML: {error}") from error
    names = data.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise ValueError(f"{data_yaml}: names: expected a list or a mapping of class names")
    mapping, unknown = {}, []
    for index, name in names.items():
        name = DEFAULT_ALIASES.get(str(name), str(name))
        if name in classes:
            mapping[int(index)] = list(classes).index(name)
        else:
            unknown.append(str(name))
    if unknown:
        raise ValueError(
            f"{data_yaml}: names: {', '.join(unknown)} not among the model's classes {list(classes)}"
        )
    return mapping


def _yolo_row(line: str, mapping: dict[int, int], size: tuple[int, int]) -> tuple[int, list[float]] | str:
    """(class, [x1, y1, x2, y2] px) or the reason the row is bad."""
    parts = line.split()
    if len(parts) != 5:
        return f"expected 5 values (class cx cy w h), got {len(parts)}"
    try:
        raw_class = int(parts[0])
        cx, cy, bw, bh = (float(v) for v in parts[1:])
    except ValueError:
        return f"not numbers: {line.strip()!r}"
    if raw_class not in mapping:
        return f"class {raw_class} is not in data.yaml names"
    values = (cx, cy, bw, bh)
    if not all(math.isfinite(v) for v in values) or not all(0.0 <= v <= 1.0 for v in values):
        return f"coordinates must be normalised to 0..1, got {line.strip()!r}"
    if bw <= 0 or bh <= 0:
        return "box has zero width or height"
    height, width = size
    x1, x2 = max(0.0, (cx - bw / 2) * width), min(float(width), (cx + bw / 2) * width)
    y1, y2 = max(0.0, (cy - bh / 2) * height), min(float(height), (cy + bh / 2) * height)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return "box is less than a pixel inside the image"
    return mapping[raw_class], [x1, y1, x2, y2]


# --- Pascal VOC XML ---------------------------------------------------------------------------------


def load_voc(root: Path, classes: Sequence[str], aliases: dict[str, str] | None = None) -> LoadReport:
    """A Pascal VOC dataset: ``Annotations/*.xml`` naming images in ``JPEGImages/`` (or ``images/``).

    Every ``object`` needs a ``name`` among ``classes`` (after ``aliases``) and a ``bndbox`` inside
    the image with xmin < xmax, ymin < ymax; ``difficult`` objects are kept.
    """
    root = Path(root)
    names = {**DEFAULT_ALIASES, **(aliases or {})}
    report = LoadReport()
    annotations = root / "Annotations" if (root / "Annotations").is_dir() else root / "annotations"
    if not annotations.is_dir():
        raise FileNotFoundError(f"{root}: no Annotations/ folder")
    image_dirs = [root / d for d in ("JPEGImages", "images", "Images") if (root / d).is_dir()]
    for xml_path in sorted(annotations.glob("*.xml")):
        try:
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError as error:
            report.skip(xml_path.name, f"not valid XML: {error}")
            continue
        filename = (tree.findtext("filename") or "").strip()
        candidates = [d / filename for d in image_dirs] if filename else []
        candidates += [d / f"{xml_path.stem}{s}" for d in image_dirs for s in IMAGE_SUFFIXES]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            report.skip(xml_path.name, f"image {filename or xml_path.stem!r} not found")
            continue
        size = _image_size(path)
        if size is None:
            report.skip(xml_path.name, f"{path.name} is not a readable image")
            continue
        boxes, ids = [], []
        for number, obj in enumerate(tree.findall("object"), start=1):
            row = _voc_object(obj, names, classes, size)
            if isinstance(row, str):
                report.skip(f"{xml_path.name}:object {number}", row)
                continue
            ids.append(row[0])
            boxes.append(row[1])
        if not boxes:
            report.backgrounds += 1
        report.images.append(LabelledImage(path, _boxes(boxes), np.array(ids, np.int64)))
    return report


def _voc_object(
    obj: ET.Element, aliases: dict[str, str], classes: Sequence[str], size: tuple[int, int]
) -> tuple[int, list[float]] | str:
    name = (obj.findtext("name") or "").strip()
    name = aliases.get(name, name)
    if name not in classes:
        return f"class {name or '(missing)'!r} is not among {list(classes)}"
    box = obj.find("bndbox")
    if box is None:
        return "no bndbox"
    try:
        x1, y1, x2, y2 = (float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError:
        return "bndbox values are not numbers"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return "bndbox needs xmin, ymin, xmax, ymax"
    height, width = size
    if x2 <= x1 or y2 <= y1:
        return f"empty box: xmin {x1:g} >= xmax {x2:g} or ymin {y1:g} >= ymax {y2:g}"
    if x1 < -1 or y1 < -1 or x2 > width + 1 or y2 > height + 1:
        return f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) outside the {width}x{height} image"
    return list(classes).index(name), [
        max(0.0, x1),
        max(0.0, y1),
        min(float(width), x2),
        min(float(height), y2),
    ]


def _image_size(path: Path) -> tuple[int, int] | None:
    image = read_rgb(path)
    return None if image is None else image.shape[:2]


def _boxes(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 4)


# --- sources and augmentation -----------------------------------------------------------------------


class ProceduralFaces:
    """The face-mask generator as a source: scene ``i`` of ``split`` (identities disjoint per split)."""

    def __init__(self, split: str, count: int, height: int, width: int, seed: int = 0) -> None:
        self.split, self.count, self.height, self.width, self.seed = split, count, height, width, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Sample:
        scene = render_faces(scene_seed(self.split, index, self.seed), self.height, self.width, self.split)
        return Sample(scene.image, scene.boxes, scene.class_ids, f"{self.split}_{index:05d}")


class FolderImages:
    """Checked images of a YOLO or VOC dataset, read when indexed, at their own size."""

    def __init__(self, images: list[LabelledImage]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        return self.images[index].load()


def augment(
    sample: Sample, rng: np.random.Generator, hflip: float = 0.5, zoom: tuple[float, float] = ZOOM
) -> Sample:
    """Horizontal flip (probability ``hflip``) and a random zoom in or out with translation; the boxes
    follow. Boxes left less than 40% visible are dropped (their object is mostly outside)."""
    image, boxes, ids = sample.image, sample.boxes.copy(), sample.class_ids
    height, width = image.shape[:2]
    if hflip and rng.random() < hflip:
        image = image[:, ::-1]
        boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    scale = float(rng.uniform(*zoom))
    if abs(scale - 1) > 0.02:
        tx = rng.uniform(min(0, width - width * scale), max(0, width - width * scale))
        ty = rng.uniform(min(0, height - height * scale), max(0, height - height * scale))
        matrix = np.array([[scale, 0, tx], [0, scale, ty]], np.float32)
        fill = tuple(int(v) for v in image.reshape(-1, 3).mean(0))
        image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (width, height), borderValue=fill)
        boxes, ids = _keep_visible(boxes * scale + np.array([tx, ty, tx, ty], np.float32), ids, height, width)
    return Sample(np.ascontiguousarray(image), boxes.astype(np.float32), ids, sample.name)


def random_crop(sample: Sample, rng: np.random.Generator, height: int, width: int) -> Sample:
    """A ``height`` x ``width`` window of the sample: objects keep their served pixel size (training on
    crops is cheaper than on whole frames). Boxes cut by the window keep their visible part when at
    least 40% of them is inside."""
    h, w = sample.image.shape[:2]
    if (height, width) == (h, w):
        return sample
    if height > h or width > w:
        raise ValueError(f"crop {height}x{width} is larger than the {h}x{w} image")
    y0, x0 = int(rng.integers(0, h - height + 1)), int(rng.integers(0, w - width + 1))
    image = sample.image[y0 : y0 + height, x0 : x0 + width]
    moved = sample.boxes - np.array([x0, y0, x0, y0], np.float32)
    return Sample(
        np.ascontiguousarray(image), *_keep_visible(moved, sample.class_ids, height, width), sample.name
    )


def _keep_visible(
    boxes: np.ndarray, ids: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (visible >= 0.4 * np.maximum(area, 1e-6)) & (clipped[:, 2] - clipped[:, 0] >= 2)
    keep &= clipped[:, 3] - clipped[:, 1] >= 2
    return clipped[keep].astype(np.float32), ids[keep]
