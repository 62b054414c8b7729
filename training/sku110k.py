"""SKU-110K-format box annotations: read and validate them, or generate some from synthetic shelves.

The format is a CSV with one box per row, ``image_name,x1,y1,x2,y2,class,image_width,image_height``
(no header in the official files; one is tolerated here), coordinates in pixels of the image as
OpenCV decodes it. Real annotation files hold mistakes, so :func:`read_annotations` checks every
row and keeps going: a bad row is skipped and reported with its line number and why, and only an
unreadable or entirely invalid file is an error.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from clients.contract import ModelContract
from datagen.shelves import SHELF_MODEL, render_scene, scene_seed
from training.datasets import IMAGE_SUFFIXES, DatasetError, atomic_directory

COLUMNS = ("image_name", "x1", "y1", "x2", "y2", "class", "image_width", "image_height")
SYNTH_CLASS = "object"  # SKU-110K's one class name
_MIN_SYNTH_BOX_AREA = 16  # px; smaller slivers of a product at the frame's edge are not worth a box


@dataclass(frozen=True)
class Box:
    """Pixel edges: the box covers columns ``x1 <= x < x2`` and rows ``y1 <= y < y2``."""

    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True)
class SkippedRow:
    line: int  # 1-based line of the CSV file
    reason: str  # for a person: what is wrong, with the values
    kind: str  # for counting: a short category such as "missing image" or "outside image"


@dataclass
class Annotations:
    boxes: dict[str, list[Box]]  # image name -> its valid boxes, in file order
    skipped: list[SkippedRow]
    missing_images: list[str]  # image names the CSV refers to that are not in the images folder

    def report(self) -> dict[str, Any]:
        """Counts, skipped rows by kind, and every skipped row with its line and reason (JSON-able)."""
        boxes = sum(len(boxes) for boxes in self.boxes.values())
        return {
            "rows": boxes + len(self.skipped),
            "valid_rows": boxes,
            "skipped_rows": len(self.skipped),
            "images": len(self.boxes),
            "skipped_by_kind": dict(Counter(row.kind for row in self.skipped).most_common()),
            "missing_images": self.missing_images,
            "skipped": [{"line": row.line, "kind": row.kind, "reason": row.reason} for row in self.skipped],
        }


class _RowError(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def read_annotations(csv_path: Path, images_dir: Path) -> Annotations:
    """Parse and validate an SKU-110K CSV against the images it refers to.

    Each row needs 8 fields, a plain file name with an image suffix the folder format reads, numeric
    coordinates and sizes (rounded to whole pixels), ``x1 < x2`` and ``y1 < y2``, and a box inside
    the image, judged against both the CSV's ``image_width/height`` and the image file's own size,
    which must agree (a box touching the border is inside). Raises :class:`DatasetError` naming the
    file when it cannot be read, holds no rows, or holds no valid row.
    """
    csv_path, images_dir = Path(csv_path), Path(images_dir)
    images = _ImageSizes(images_dir)
    boxes: dict[str, list[Box]] = {}
    skipped: list[SkippedRow] = []
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            for row in reader:
                if not row or (reader.line_num == 1 and [f.strip().lower() for f in row] == list(COLUMNS)):
                    continue  # blank line, or the optional header
                try:
                    name, box = _parse_row(row, images)
                except _RowError as error:
                    skipped.append(SkippedRow(reader.line_num, error.reason, error.kind))
                    continue
                boxes.setdefault(name, []).append(box)
    except FileNotFoundError:
        raise DatasetError(f"{csv_path}: no such annotations CSV") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        detail = error.strerror if isinstance(error, OSError) else error
        raise DatasetError(f"{csv_path}: cannot read the annotations CSV ({detail})") from None
    if not boxes:
        if not skipped:
            raise DatasetError(f"{csv_path}: no annotation rows")
        kinds = ", ".join(f"{kind} x{n}" for kind, n in Counter(row.kind for row in skipped).most_common())
        raise DatasetError(
            f"{csv_path}: none of its {len(skipped)} rows is valid ({kinds}); first: line "
            f"{skipped[0].line}: {skipped[0].reason}"
        )
    return Annotations(boxes, skipped, sorted(images.missing))


def _parse_row(row: list[str], images: _ImageSizes) -> tuple[str, Box]:
    if len(row) != len(COLUMNS):
        raise _RowError(
            "field count", f"expected {len(COLUMNS)} fields ({','.join(COLUMNS)}), got {len(row)}"
        )
    name = row[0].strip()
    images.check_name(name)
    values = {}
    for column, text in zip(COLUMNS[1:5] + COLUMNS[6:], row[1:5] + row[6:], strict=True):
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise _RowError("not a number", f"{column} is {text!r}, not a number")
        values[column] = round(number)
    box = Box(values["x1"], values["y1"], values["x2"], values["y2"])
    width, height = values["image_width"], values["image_height"]
    if width <= 0 or height <= 0:
        raise _RowError("bad image size", f"image size {width}x{height} is not positive")
    if box.x1 >= box.x2 or box.y1 >= box.y2:
        raise _RowError("empty box", f"box {_text(box)} needs x1 < x2 and y1 < y2")
    if box.x1 < 0 or box.y1 < 0 or box.x2 > width or box.y2 > height:
        raise _RowError("outside image", f"box {_text(box)} reaches outside the {width}x{height} image")
    real = images.size(name)
    if real != (width, height):
        raise _RowError(
            "size mismatch", f"the CSV says {name} is {width}x{height} but the file is {real[0]}x{real[1]}"
        )
    return name, box


def _text(box: Box) -> str:
    return f"({box.x1},{box.y1})-({box.x2},{box.y2})"


class _ImageSizes:
    """Checks image names and finds each image's size once, from its header.

    Reading the header (Pillow) instead of decoding keeps a full SKU-110K pass to seconds. The size
    is the one OpenCV decodes to: EXIF orientations that turn the picture swap width and height.
    """

    _TURNED = {5, 6, 7, 8}  # EXIF orientations with a 90-degree turn

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir
        self.missing: set[str] = set()
        self._sizes: dict[str, tuple[int, int] | _RowError] = {}  # a size, or why there is none
        self._stems: dict[str, str] = {}

    def check_name(self, name: str) -> None:
        if not name or Path(name).name != name:
            raise _RowError(
                "bad image name", f"image_name {name!r} must be a file name inside the images folder"
            )
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise _RowError(
                "bad image name", f"{name}: the folder format takes {', '.join(IMAGE_SUFFIXES)} images"
            )
        other = self._stems.setdefault(Path(name).stem, name)
        if other != name:
            raise _RowError("bad image name", f"{name} and {other} would share masks/{Path(name).stem}.png")

    def size(self, name: str) -> tuple[int, int]:
        if name not in self._sizes:
            try:
                self._sizes[name] = self._read_size(name)
            except _RowError as error:
                self._sizes[name] = error
        size = self._sizes[name]
        if isinstance(size, _RowError):
            raise _RowError(size.kind, size.reason)
        return size

    def _read_size(self, name: str) -> tuple[int, int]:
        from PIL import Image, UnidentifiedImageError

        path = self.images_dir / name
        if not path.is_file():
            self.missing.add(name)
            raise _RowError("missing image", f"{name} is not in {self.images_dir}")
        try:
            with Image.open(path) as image:
                width, height = image.size
                if image.getexif().get(0x0112, 1) in self._TURNED:
                    width, height = height, width
        except (OSError, UnidentifiedImageError, SyntaxError) as error:
            raise _RowError("unreadable image", f"{name}: cannot read the image ({error})") from None
        return width, height


def write_sku110k_from_synth(
    out_dir: Path,
    count: int,
    seed: int,
    height: int,
    width: int,
    progress: Any = None,
) -> Path:
    """Generated shelves as an SKU-110K folder, for trying the box pipeline without the real data.

    Writes ``out_dir/images/NNNNNN.jpg`` and ``out_dir/annotations.csv`` (no header, class
    ``object``) atomically and returns the CSV's path. A box is a connected region of the
    product class: facings that touch share one box, unlike SKU-110K's one box per facing.
    ``progress`` is an optional ``rich.progress.Progress``.
    """
    labels = ModelContract.load(SHELF_MODEL).labels  # the classes the shelf generator draws
    product = labels.index("product")
    task = progress.add_task("render shelves", total=count) if progress is not None else None
    with atomic_directory(out_dir) as staging:
        (staging / "images").mkdir()
        with (staging / "annotations.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            for index in range(count):
                scene = render_scene(scene_seed(seed, index), height, width, labels)
                name = f"{index:06d}.jpg"
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
                if not ok:
                    raise ValueError("JPEG encoding failed")
                (staging / "images" / name).write_bytes(jpeg.tobytes())
                for box in instance_boxes(scene.mask == product):
                    writer.writerow([name, box.x1, box.y1, box.x2, box.y2, SYNTH_CLASS, width, height])
                if task is not None:
                    progress.advance(task)
    return Path(out_dir) / "annotations.csv"


def instance_boxes(region: np.ndarray, min_area: int = _MIN_SYNTH_BOX_AREA) -> list[Box]:
    """Bounding boxes of the 4-connected parts of a boolean mask, in raster order of their corners."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=4)
    return [
        Box(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, area in stats[1:count] if area >= min_area
    ]
