"""Procedural face-mask scenes with exact boxes: faces wearing a mask, none, or one worn wrongly.

No face-mask photos can be downloaded where this project trains, so this generator is the training
data of ``mask_detector``. A scene is a backdrop (room-like blocks, texture, posters), people (a body,
then a face with hair, ears, eyes, brows, nose and mouth), masks drawn over the lower face in the three
wear states, and distractors that look like parts of the task without being faces (heads seen from
behind, skin-coloured balls, loose masks, scarves under the chin). A camera step then adds lighting,
colour cast, blur, noise and JPEG. Boxes are the drawn face ellipses, so they are exact.

Faces belong to *identities* (skin tone, face shape, eyes, hair, glasses ...). The splits draw from
disjoint identity pools (:data:`IDENTITY_POOLS`), so held-out faces are never seen in training.
Everything is a pure function of an integer seed (``np.random.default_rng``, never a global RNG).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from clients.atomic import write_bytes, write_text

CLASSES = ("with_mask", "without_mask", "mask_worn_incorrectly")
WITH_MASK, WITHOUT_MASK, MASK_WORN_INCORRECTLY = range(3)
Split = Literal["train", "val", "test"]
# Identity indices per split; disjoint, so val/test faces are people the model never saw.
IDENTITY_POOLS: dict[str, range] = {"train": range(0, 600), "val": range(600, 700), "test": range(700, 800)}
# Scene seeds per split are offset so that the same index never gives the same scene in two splits.
_SPLIT_OFFSETS = {"train": 0, "val": 1_000_003, "test": 2_000_006}
_CLASS_SHARES = (0.4, 0.35, 0.25)
# Skin tones from light to dark (RGB); an identity interpolates between neighbours.
_SKIN = np.array(
    [[255, 224, 196], [241, 194, 160], [224, 172, 125], [198, 134, 96], [141, 85, 54], [92, 56, 38]]
)
_HAIR = np.array(
    [[20, 15, 12], [60, 40, 25], [110, 75, 40], [180, 140, 90], [220, 200, 150], [140, 140, 140]]
)
_GAUSS_LUT = np.array([statistics.NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)
_MASK_COLOURS = np.array([[150, 200, 230], [235, 238, 240], [35, 35, 40], [120, 160, 210], [250, 250, 250]])


@dataclass(frozen=True, eq=False)
class FaceScene:
    """One sample: an RGB image, face boxes x1, y1, x2, y2 in pixels and their class ids."""

    image: np.ndarray  # RGB uint8 [H, W, 3]
    boxes: np.ndarray  # float32 [N, 4]
    class_ids: np.ndarray  # int64 [N]

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(
                f"a scene image is RGB uint8 [H, W, 3], got {self.image.dtype} {self.image.shape}"
            )
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4 or len(self.class_ids) != len(self.boxes):
            raise ValueError(
                f"boxes [N, 4] and class_ids [N] must match, got {self.boxes.shape}, {self.class_ids.shape}"
            )


@dataclass(frozen=True)
class Identity:
    """What stays the same about one person across scenes."""

    skin: tuple[int, int, int]
    aspect: float  # face width / height
    eye_spacing: float
    eye_size: float
    iris: tuple[int, int, int]
    brow: float  # thickness, 0 = none visible
    nose: float  # length
    mouth: float  # width
    lips: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: int  # 0 bald, 1 short, 2 long, 3 fringe, 4 cap
    hat: tuple[int, int, int]
    glasses: bool
    beard: bool


def identity(index: int) -> Identity:
    """The person with this index (see :data:`IDENTITY_POOLS` for the split of indices)."""
    rng = np.random.default_rng([0xFACE, index])
    tone = rng.uniform(0, len(_SKIN) - 1)
    low = int(tone)
    skin = _SKIN[low] + (_SKIN[min(low + 1, len(_SKIN) - 1)] - _SKIN[low]) * (tone - low)
    skin = np.clip(skin + rng.normal(0, 8, 3), 0, 255)
    hair = np.clip(_HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 12, 3), 0, 255)
    iris = (
        rng.choice([[60, 40, 20], [40, 90, 140], [70, 110, 60], [30, 25, 20]]) + rng.normal(0, 10, 3)
    ).clip(0, 255)
    lips = np.clip(skin * rng.uniform(0.55, 0.8) + np.array([40, 0, 0]) * rng.uniform(0, 1), 0, 255)
    return Identity(
        skin=_rgb(skin),
        aspect=float(rng.uniform(0.68, 0.86)),
        eye_spacing=float(rng.uniform(0.32, 0.44)),
        eye_size=float(rng.uniform(0.8, 1.25)),
        iris=_rgb(iris),
        brow=float(rng.choice([0.0, 0.03, 0.05, 0.07], p=[0.1, 0.3, 0.4, 0.2])),
        nose=float(rng.uniform(0.8, 1.2)),
        mouth=float(rng.uniform(0.35, 0.55)),
        lips=_rgb(lips),
        hair=_rgb(hair),
        hair_style=int(rng.choice(5, p=[0.1, 0.35, 0.25, 0.2, 0.1])),
        hat=_rgb(rng.integers(0, 256, 3)),
        glasses=bool(rng.random() < 0.2),
        beard=bool(rng.random() < 0.12),
    )


def scene_seed(split: Split, index: int, seed: int = 0) -> int:
    """The seed of scene ``index`` of a split (distinct across splits and base seeds)."""
    if split not in _SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(_SPLIT_OFFSETS)}")
    return seed * 10_000_019 + _SPLIT_OFFSETS[split] + index


def render_faces(
    seed: int,
    height: int = 320,
    width: int = 416,
    split: Split = "train",
    max_faces: int = 10,
    min_face: float = 14.0,
) -> FaceScene:
    """One photograph of people with and without masks; faces from ``split``'s identity pool.

    Face heights are log-uniform between ``min_face`` pixels and about half the image height, so
    a model sees crowds of small faces and close-ups.
    """
    if split not in IDENTITY_POOLS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(IDENTITY_POOLS)}")
    if height < 32 or width < 32:
        raise ValueError(f"scenes need at least 32x32 pixels, got {height}x{width}")
    rng = np.random.default_rng([0x5CE7E, seed])
    image = _backdrop(rng, height, width)
    pool = IDENTITY_POOLS[split]
    count = int(rng.integers(1, max_faces + 1)) if rng.random() < 0.85 else int(rng.integers(0, 3))
    # Crowds are far away: many faces come with small ones.
    far = count > 4
    top = min(height * 0.55, 40 + height * 0.5) * (0.45 if far else 1.0)
    placed: list[np.ndarray] = []
    people: list[Identity] = []
    classes: list[int] = []
    _distractors(rng, image, int(rng.integers(0, 5)))
    for _ in range(count):
        face_h = float(np.exp(rng.uniform(np.log(min_face), np.log(max(min_face * 1.2, top)))))
        person = identity(int(rng.integers(pool.start, pool.stop)))
        box = _place(rng, placed, face_h * person.aspect, face_h, height, width)
        if box is not None:
            placed.append(box)
            people.append(person)
            classes.append(int(rng.choice(3, p=_CLASS_SHARES)))
    # Bodies first, then heads: a body never hides a face (a labelled face is always visible).
    for box, state in zip(placed, classes, strict=True):
        _draw_body(rng, image, box, state)
    for person, box, state in zip(people, placed, classes, strict=True):
        _draw_head(rng, image, person, box, state)
    image = _photograph(rng, image)
    boxes = np.array(placed, np.float32).reshape(-1, 4)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return FaceScene(image, boxes, np.array(classes, np.int64))


def write_yolo_dataset(
    out_dir: Path, count: int, split: Split = "train", seed: int = 0, height: int = 320, width: int = 416
) -> Path:
    """``count`` scenes in the YOLO txt layout (``images/``, ``labels/``, ``data.yaml``); returns out_dir."""
    out_dir = Path(out_dir)
    for index in range(count):
        scene = render_faces(scene_seed(split, index, seed), height, width, split)
        stem = f"{split}_{index:05d}"
        ok, jpeg = cv2.imencode(
            ".jpg", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]
        )
        if not ok:
            raise RuntimeError(f"could not encode {stem}.jpg")
        write_bytes(out_dir / "images" / f"{stem}.jpg", jpeg.tobytes())
        rows = []
        for (x1, y1, x2, y2), class_id in zip(scene.boxes, scene.class_ids, strict=True):
            cx, cy, bw, bh = (
                (x1 + x2) / 2 / width,
                (y1 + y2) / 2 / height,
                (x2 - x1) / width,
                (y2 - y1) / height,
            )
            rows.append(f"{class_id} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
        write_text(out_dir / "labels" / f"{stem}.txt", "".join(row + "\n" for row in rows))
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES))
    write_text(out_dir / "data.yaml", f"path: .\n{split}: images\nnc: {len(CLASSES)}\nnames:\n{names}")
    return out_dir


# --- layout -----------------------------------------------------------------------------------------


def _place(
    rng: np.random.Generator, placed: list[np.ndarray], w: float, h: float, height: int, width: int
) -> np.ndarray | None:
    """A face box that overlaps no earlier face much (IoU <= 0.15); mostly inside the image."""
    for _ in range(20):
        x1 = rng.uniform(-0.15 * w, width - 0.85 * w)
        y1 = rng.uniform(-0.1 * h, height - 0.9 * h)
        box = np.array([x1, y1, x1 + w, y1 + h])
        if all(_iou(box, other) <= 0.15 for other in placed):
            return box
    return None


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# --- painting ---------------------------------------------------------------------------------------

_SUPER = 4  # sub-pixel bits for cv2 drawing: smooth small faces
_ONE = 1 << _SUPER


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _ellipse(
    image: np.ndarray,
    cx: float,
    cy: float,
    ax: float,
    ay: float,
    colour,
    angle: float = 0.0,
    start: float = 0,
    end: float = 360,
    thickness: int = -1,
) -> None:
    axes = (max(1, int(round(ax * _ONE))), max(1, int(round(ay * _ONE))))
    cv2.ellipse(image, _pt(cx, cy), axes, angle, start, end, colour, thickness, cv2.LINE_AA, _SUPER)


def _rgb(values) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, int(v))) for v in values)
    return r, g, b


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return _rgb(np.array(colour) * factor)


def _backdrop(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A room-ish background: gradient wall, blocks (furniture, windows, posters), soft texture."""
    # A vertical gradient plus low-frequency texture, both made small and resized up (fast).
    grid = (max(2, height // 24), max(2, width // 24))
    ramp = np.linspace(0, 1, grid[0], dtype=np.float32)[:, None, None]
    small = rng.integers(30, 240, 3) * (1 - ramp) + rng.integers(30, 240, 3) * ramp
    small = small + rng.normal(0, rng.uniform(4, 22), (*grid, 3))
    image = cv2.resize(
        np.clip(small, 0, 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_CUBIC
    )
    for _ in range(int(rng.integers(2, 9))):
        x1, y1 = int(rng.integers(-width // 4, width)), int(rng.integers(-height // 4, height))
        x2, y2 = (
            x1 + int(rng.integers(width // 10, width // 2)),
            y1 + int(rng.integers(height // 10, height // 2)),
        )
        colour = _rgb(rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x1, y1), (x2, y2), colour, -1)
        else:  # a poster or window: a frame and some stripes
            cv2.rectangle(image, (x1, y1), (x2, y2), colour, max(1, (x2 - x1) // 20))
            for k in range(int(rng.integers(1, 5))):
                y = y1 + (k + 1) * (y2 - y1) // 6
                cv2.line(image, (x1, y), (x2, y), _rgb(rng.integers(0, 256, 3)), int(rng.integers(1, 4)))
    return image


def _distractors(rng: np.random.Generator, image: np.ndarray, count: int) -> None:
    """Things a face detector must not fire on: balls, heads from behind, loose masks, clocks, text."""
    height, width = image.shape[:2]
    for _ in range(count):
        size = float(np.exp(rng.uniform(np.log(10), np.log(height * 0.4))))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        kind = int(rng.integers(5))
        if kind == 0:  # skin-coloured ball / plate
            colour = _rgb(_SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 10, 3))
            _ellipse(image, cx, cy, size * 0.4, size * rng.uniform(0.35, 0.5), colour)
        elif kind == 1:  # a head seen from behind: hair and ears, no face
            hair = _rgb(_HAIR[rng.integers(len(_HAIR))])
            _ellipse(image, cx, cy, size * 0.36, size * 0.48, hair)
        elif kind == 2:  # a mask lying around
            colour = _rgb(_MASK_COLOURS[rng.integers(len(_MASK_COLOURS))])
            w, h = size * 0.6, size * 0.3
            cv2.rectangle(
                image,
                _pt(cx - w / 2, cy - h / 2),
                _pt(cx + w / 2, cy + h / 2),
                colour,
                -1,
                cv2.LINE_AA,
                _SUPER,
            )
            for k in (1, 2):
                y = cy - h / 2 + k * h / 3
                cv2.line(
                    image, _pt(cx - w / 2, y), _pt(cx + w / 2, y), _shade(colour, 0.8), 1, cv2.LINE_AA, _SUPER
                )
        elif kind == 3:  # a clock / round sign with two dots: a face-like pattern
            _ellipse(image, cx, cy, size * 0.4, size * 0.4, _rgb(rng.integers(150, 256, 3)))
            _ellipse(image, cx, cy, size * 0.4, size * 0.4, (20, 20, 20), thickness=max(1, int(size / 20)))
            for dx in (-0.12, 0.12):
                _ellipse(image, cx + dx * size, cy - 0.1 * size, size * 0.04, size * 0.04, (20, 20, 20))
        else:  # printed text
            scale = max(0.3, size / 60)
            cv2.putText(
                image,
                "SALE 50%" if rng.random() < 0.5 else "EXIT",
                (int(cx), int(cy)),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                _rgb(rng.integers(0, 256, 3)),
                max(1, int(scale * 2)),
            )


def _draw_body(rng: np.random.Generator, image: np.ndarray, box: np.ndarray, state: int) -> None:
    """Shoulders below the face ``box`` (x1, y1, x2, y2); a scarf on some people without a mask."""
    x1, y1, x2, y2 = box
    cx, cy, a, b = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    _ellipse(image, cx, cy + b * 2.3, a * 2.3, b * 1.5, _rgb(rng.integers(0, 256, 3)))
    if state == WITHOUT_MASK and rng.random() < 0.2:  # a scarf or a mask pulled down onto the neck
        scarf = _rgb(_MASK_COLOURS[rng.integers(len(_MASK_COLOURS))])
        _ellipse(image, cx, cy + b * 1.2, a * 0.9, b * 0.22, scarf)


def _draw_head(
    rng: np.random.Generator, image: np.ndarray, person: Identity, box: np.ndarray, state: int
) -> None:
    """Neck, hair, ears and the face inside ``box`` in one of the three mask states."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    a, b = (x2 - x1) / 2, (y2 - y1) / 2  # face half-width, half-height
    yaw = float(rng.uniform(-0.25, 0.25))  # features shift sideways when the head turns
    roll = float(rng.uniform(-12, 12))
    skin = _shade(person.skin, float(rng.uniform(0.8, 1.1)))
    cv2.rectangle(
        image,
        _pt(cx - a * 0.45, cy + b * 0.5),
        _pt(cx + a * 0.45, cy + b * 1.1),
        _shade(skin, 0.85),
        -1,
        cv2.LINE_AA,
        _SUPER,
    )
    # Hair behind the head.
    if person.hair_style == 2:
        _ellipse(image, cx, cy + b * 0.2, a * 1.25, b * 1.2, person.hair, roll)
    elif person.hair_style in (1, 3):
        _ellipse(image, cx, cy - b * 0.15, a * 1.1, b * 1.0, person.hair, roll)
    # Ears.
    for side in (-1, 1):
        _ellipse(image, cx + side * a * 0.97, cy - b * 0.05, a * 0.14, b * 0.2, _shade(skin, 0.92), roll)
    # The face itself; features are placed in a frame rotated by ``roll`` around the face centre.
    _ellipse(image, cx, cy, a, b, skin, roll)
    cos, sin = math.cos(math.radians(roll)), math.sin(math.radians(roll))

    def at(u: float, v: float) -> tuple[float, float]:
        """Face coordinates (u across in units of a, v down in units of b) -> image pixels."""
        px, py = (u + yaw * 0.35) * a, v * b
        return cx + px * cos - py * sin, cy + px * sin + py * cos

    if person.hair_style == 3:  # a fringe over the forehead
        fx, fy = at(0, -0.78)
        _ellipse(image, fx, fy, a * 0.95, b * 0.32, person.hair, roll, 180, 360)
    elif person.hair_style == 4:  # a cap
        fx, fy = at(0, -0.72)
        _ellipse(
            image,
            fx,
            fy,
            a * 1.05,
            b * 0.42,
            person.hair if rng.random() < 0.3 else person.hat,
            roll,
            180,
            360,
        )
    elif person.hair_style == 1:
        fx, fy = at(0, -0.85)
        _ellipse(image, fx, fy, a * 0.85, b * 0.2, person.hair, roll, 180, 360)

    # Eyes, irises and brows.
    spacing, eye = person.eye_spacing * 1.05, person.eye_size
    for side in (-1, 1):
        ex, ey = at(side * spacing, -0.12)
        _ellipse(image, ex, ey, a * 0.17 * eye, b * 0.075 * eye, (240, 240, 235), roll)
        _ellipse(image, ex + yaw * a * 0.05, ey, b * 0.06 * eye, b * 0.06 * eye, person.iris)
        _ellipse(image, ex + yaw * a * 0.05, ey, b * 0.028 * eye, b * 0.028 * eye, (10, 10, 10))
        if person.brow > 0:
            bx, by = at(side * spacing, -0.28)
            _ellipse(image, bx, by, a * 0.2, b * person.brow, _shade(person.hair, 0.8), roll)
        if person.glasses:
            _ellipse(image, ex, ey, a * 0.26, b * 0.15, (25, 25, 25), roll, thickness=max(1, int(b / 25)))

    # Nose and mouth (drawn always; a mask then covers what it covers).
    nose_len = 0.3 * person.nose
    nx, ny = at(0, -0.02 + nose_len)
    _ellipse(image, nx, ny, a * 0.13, b * 0.06, _shade(skin, 0.78), roll)
    for side in (-1, 1):
        hx, hy = at(side * 0.07, 0.02 + nose_len)
        _ellipse(image, hx, hy, a * 0.035, b * 0.02, _shade(skin, 0.45), roll)
    mx, my = at(0, 0.52)
    open_mouth = rng.random() < 0.3
    _ellipse(image, mx, my, a * person.mouth, b * (0.09 if open_mouth else 0.05), person.lips, roll)
    if open_mouth:
        _ellipse(image, mx, my, a * person.mouth * 0.7, b * 0.04, (60, 20, 20), roll)
    if person.beard:
        bx, by = at(0, 0.72)
        _ellipse(image, bx, by, a * 0.7, b * 0.3, _shade(person.hair, 0.9), roll, 0, 180)

    if state != WITHOUT_MASK:
        # with_mask: from the nose bridge to under the chin. Worn wrongly: under the nose (nose out), or
        # on the chin (nose and mouth out).
        if state == WITH_MASK:
            top = float(rng.uniform(-0.04, 0.06))
        else:
            top = float(rng.uniform(0.3, 0.38)) if rng.random() < 0.6 else float(rng.uniform(0.64, 0.72))
        _draw_mask(rng, image, at, a, b, roll, top, skin)


def _draw_mask(
    rng: np.random.Generator,
    image: np.ndarray,
    at,
    a: float,
    b: float,
    roll: float,
    top: float,
    skin: tuple[int, int, int],
) -> None:
    """A mask covering the face from ``top`` (in units of b below the centre) to beyond the chin."""
    if rng.random() < 0.8:
        colour = _rgb(_MASK_COLOURS[rng.integers(len(_MASK_COLOURS))] + rng.normal(0, 8, 3))
    else:  # cloth masks come in any colour
        colour = _rgb(rng.integers(0, 256, 3))
    # Outline: the lower face ellipse below ``top``, a little wider than the face, sampled as a polygon.
    points = []
    half = math.sqrt(max(0.0, 1 - top * top))
    for t in np.linspace(0, 1, 16):
        u = -1.04 * half + 2.08 * half * t
        points.append(at(u, top - 0.05 * math.sin(math.pi * t)))
    for t in np.linspace(0, math.pi, 16):
        u = 1.04 * math.cos(t) * half
        v = top + (1.04 - top) * math.sin(t)
        points.append(at(u, v))
    polygon = np.array([_pt(x, y) for x, y in points], np.int32)
    cv2.fillPoly(image, [polygon], colour, cv2.LINE_AA, _SUPER)
    line = max(1, int(b / 30))
    fold = _shade(colour, 0.78)
    for k in (1, 2, 3):  # pleats
        v = top + (1.0 - top) * k / 4.2
        width = math.sqrt(max(0.0, 1 - v * v)) * 0.9
        (px1, py1), (px2, py2) = at(-width, v), at(width, v)
        cv2.line(image, _pt(px1, py1), _pt(px2, py2), fold, line, cv2.LINE_AA, _SUPER)
    for side in (-1, 1):  # ear loops
        (lx, ly), (ex, ey) = at(side * 1.0 * half, top + 0.05), at(side * 0.97, -0.05)
        cv2.line(image, _pt(lx, ly), _pt(ex, ey), _shade(colour, 0.9), line, cv2.LINE_AA, _SUPER)


def _photograph(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """What a camera does: exposure, colour cast, vignetting, blur, noise, compression."""
    # Exposure and colour cast as one lookup table per channel.
    gains = rng.uniform(0.55, 1.35) * rng.uniform(0.85, 1.15, 3)
    table = np.arange(256, dtype=np.float32)[:, None] * gains + rng.uniform(-25, 25)
    out = cv2.LUT(image, np.clip(table, 0, 255).astype(np.uint8).reshape(256, 1, 3))
    if rng.random() < 0.4:  # uneven light: a soft gradient across the frame
        height, width = image.shape[:2]
        ramp = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(1.0, 1.3), width, dtype=np.float32)
        ramp = ramp if rng.random() < 0.5 else ramp[::-1]
        out = np.minimum(out * ramp[None, :, None], 255).astype(np.uint8)
    blur = rng.random()
    if blur < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.6))
    elif blur < 0.4:  # motion blur
        length = int(rng.integers(3, 8))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rotation, (length, length))
        out = cv2.filter2D(out, -1, kernel / max(kernel.sum(), 1e-6))
    if rng.random() < 0.5:
        # Gaussian noise by looking random bytes up in a table of normal quantiles: ~5x rng.normal's speed.
        noise = _GAUSS_LUT[rng.integers(0, 256, out.shape, dtype=np.uint8)] * rng.uniform(2, 9)
        out = cv2.add(out, noise, dtype=cv2.CV_8U)
    if rng.random() < 0.3:
        ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 85))])
        if ok:
            out = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return out
