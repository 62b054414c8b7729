"""Procedural surface cracks with exact masks, and a loader for crack datasets in the public layout.

No crack photographs ship in any package we can install (see NOTES), so training draws them:

* a surface texture, one of concrete (grey, pores, multi-scale mottling), asphalt (dark, bright
  aggregate grains) or brick (a running bond with mortar joints: straight dark lines that are *not*
  cracks);
* zero to three cracks, each a branching random walk whose direction drifts slowly and whose width
  tapers from 2-7 px (at 320 px) towards its tips; the image is darkened along the crack with a
  soft edge, the mask is the hard stroke;
* distractors in every image (stains, pores, brick joints) and negatives without any crack
  (``negative_fraction``), so a model cannot call every dark line a crack;
* lighting: a gain gradient, a vignette, a colour cast, sensor noise and sometimes a slight blur.

Everything is a pure function of an integer seed. Masks hold class ids: 0 background, 1 crack.

:func:`read_crack_folder` reads what users bring: ``images/<stem>.(png|jpg|jpeg)`` with
``masks/<stem>.(png|jpg|jpeg)`` (0/255 or 0/1), validates every pair and reports each skipped file
by name and reason instead of failing on the first bad one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from clients.atomic import write_bytes
from clients.masks import encode_mask_png

CLASSES = ("background", "crack")
SURFACES = ("concrete", "asphalt", "brick")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_REFERENCE_SIZE = 320  # widths and scales below are pixels at this size and scale with the real one


@dataclass(frozen=True, eq=False)
class CrackSample:
    """An RGB uint8 ``[H, W, 3]`` image and its uint8 ``[H, W]`` mask (0 background, 1 crack)."""

    image: np.ndarray
    mask: np.ndarray
    name: str = ""
    surface: str = ""

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f"image must be RGB uint8 [H, W, 3], got {self.image.dtype} {self.image.shape}")
        if self.mask.dtype != np.uint8 or self.mask.shape != self.image.shape[:2]:
            raise ValueError(f"mask must be uint8 {list(self.image.shape[:2])}, got {self.mask.shape}")


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a set; well mixed, so sets of different base seeds are disjoint."""
    return int(np.random.SeedSequence([seed, index, 0xC4AC]).generate_state(1, np.uint64)[0])


def render_crack(
    seed: int, height: int = 320, width: int = 320, negative_fraction: float = 0.2, surface: str | None = None
) -> CrackSample:
    """One surface with cracks (or, with probability ``negative_fraction``, without any)."""
    if height < 32 or width < 32:
        raise ValueError(f"crack images need at least 32x32 pixels, got {width}x{height}")
    if not 0 <= negative_fraction <= 1:
        raise ValueError(f"negative_fraction is a probability in [0, 1], got {negative_fraction}")
    if surface is not None and surface not in SURFACES:
        raise ValueError(f"unknown surface {surface!r}; expected one of {SURFACES}")
    rng = np.random.default_rng(seed)
    scale = math.sqrt(height * width) / _REFERENCE_SIZE
    surface = surface or str(rng.choice(SURFACES))
    image = _SURFACE_PAINTERS[surface](rng, height, width, scale)
    _stains(rng, image, scale)

    mask = np.zeros((height, width), np.uint8)
    depth = np.zeros((height, width), np.float32)
    count = 0 if rng.random() < negative_fraction else int(rng.integers(1, 4))
    for _ in range(count):
        _crack(rng, mask, depth, scale)
    if count:
        # A crack is a shadowed groove: darkest on its axis, fading over about a pixel.
        shade = cv2.GaussianBlur(depth, (0, 0), 0.8 * max(scale, 0.5))
        image *= 1.0 - np.clip(shade, 0, 0.9)[..., None]
    image = _photograph(rng, image, scale)
    return CrackSample(image, mask, surface=surface)


# ------------------------------------------------------------------------------------------ cracks


def _crack(rng: np.random.Generator, mask: np.ndarray, depth: np.ndarray, scale: float) -> None:
    """A main random walk from a random point (or an edge) with branches; strokes into both arrays."""
    height, width = mask.shape
    start = np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height])
    length = rng.uniform(0.5, 1.4) * max(height, width)
    width_px = rng.uniform(2.0, 7.0) * scale
    darkness = rng.uniform(0.45, 0.85)
    walks = [(start, rng.uniform(0, 2 * math.pi), length, width_px, 0)]
    while walks:
        point, angle, length, width_px, level = walks.pop()
        for branch in _walk(rng, mask, depth, point, angle, length, width_px, darkness, scale, level):
            walks.append(branch)


def _walk(
    rng: np.random.Generator,
    mask: np.ndarray,
    depth: np.ndarray,
    point: np.ndarray,
    angle: float,
    length: float,
    start_width: float,
    darkness: float,
    scale: float,
    level: int,
) -> list[tuple[np.ndarray, float, float, float, int]]:
    """Draw one walk; return the branches it spawned (point, angle, length, width, level)."""
    height, width = mask.shape
    step = 3.0 * scale
    steps = max(2, int(length / step))
    drift = rng.normal(0, 0.015)  # cracks curve gently one way
    branches = []
    for i in range(steps):
        t = i / steps
        angle += drift + rng.normal(0, 0.15)
        nxt = point + step * np.array([math.cos(angle), math.sin(angle)])
        # Tapering towards the tip, with a little wobble; never thinner than one pixel.
        w = max(1.0, start_width * (1.0 - 0.7 * t) * rng.uniform(0.85, 1.15))
        thickness = max(1, int(round(w)))
        p0, p1 = tuple(int(round(v)) for v in point), tuple(int(round(v)) for v in nxt)
        cv2.line(mask, p0, p1, 1, thickness, cv2.LINE_8)
        cv2.line(depth, p0, p1, darkness * min(1.0, 0.6 + 0.15 * w), thickness, cv2.LINE_8)
        point = nxt
        if not (-20 <= point[0] <= width + 20 and -20 <= point[1] <= height + 20):
            break
        if level < 2 and rng.random() < 0.025:
            side = rng.choice((-1.0, 1.0))
            branches.append(
                (
                    point.copy(),
                    angle + side * rng.uniform(0.4, 1.2),
                    length * rng.uniform(0.2, 0.5),
                    max(1.0, w * rng.uniform(0.5, 0.8)),
                    level + 1,
                )
            )
    return branches


# ---------------------------------------------------------------------------------------- surfaces


def _noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random grid of ``cells`` across, upsampled bicubically."""
    grid_h = max(2, round(cells * height / max(height, width)))
    grid_w = max(2, round(cells * width / max(height, width)))
    grid = rng.uniform(-1, 1, (grid_h, grid_w)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _mottle(rng: np.random.Generator, height: int, width: int, amplitude: float) -> np.ndarray:
    octaves = [(4, 0.5), (16, 0.3), (64, 0.2)]
    total = sum(weight * _noise(rng, height, width, cells) for cells, weight in octaves)
    return amplitude * total


def _concrete(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    base = rng.uniform(110, 190)
    grey = base + _mottle(rng, height, width, rng.uniform(10, 25))
    grey += rng.normal(0, rng.uniform(3, 9), (height, width)).astype(np.float32)  # fine grain
    for _ in range(int(rng.integers(20, 120) * scale**2)):  # pores: small dark round holes
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(grey, centre, max(1, int(rng.uniform(0.5, 2.5) * scale)), base * rng.uniform(0.5, 0.8), -1)
    tint = np.array([1.0, rng.uniform(0.97, 1.02), rng.uniform(0.92, 1.04)], np.float32)
    return grey[..., None] * tint


def _asphalt(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    base = rng.uniform(50, 105)
    grey = base + _mottle(rng, height, width, rng.uniform(6, 15))
    grey += rng.normal(0, rng.uniform(8, 18), (height, width)).astype(np.float32)
    grains = rng.random((height, width)) < rng.uniform(0.01, 0.04)  # bright aggregate
    grey[grains] += rng.uniform(40, 90)
    grey = cv2.GaussianBlur(grey, (0, 0), 0.6)
    tint = np.array([1.0, 1.0, rng.uniform(1.0, 1.06)], np.float32)
    return grey[..., None] * tint


def _brick(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    row_h = int(rng.uniform(24, 44) * scale)
    brick_w = int(row_h * rng.uniform(2.0, 3.0))
    joint = max(2, int(rng.uniform(2, 5) * scale))
    mortar = np.array([rng.uniform(60, 200)] * 3, np.float32) * np.array([1.0, 0.98, 0.93], np.float32)
    red = np.array([rng.uniform(120, 190), rng.uniform(50, 90), rng.uniform(35, 70)], np.float32)
    image = np.empty((height, width, 3), np.float32)
    image[...] = mortar
    for row, top in enumerate(range(-int(rng.integers(0, row_h)), height, row_h)):
        offset = (row % 2) * brick_w // 2 - int(rng.integers(0, brick_w))
        for left in range(offset, width, brick_w):
            colour = red * rng.uniform(0.75, 1.15)
            cv2.rectangle(
                image, (left + joint, top + joint), (left + brick_w - 1, top + row_h - 1), colour.tolist(), -1
            )
    image += _mottle(rng, height, width, rng.uniform(6, 14))[..., None]
    image += rng.normal(0, 5, (height, width, 1)).astype(np.float32)
    return image


_SURFACE_PAINTERS = {"concrete": _concrete, "asphalt": _asphalt, "brick": _brick}


def _stains(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    """Soft dark or light blotches (water, oil, dirt): large-area distractors, never labelled."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        blot = np.zeros((height, width), np.float32)
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.uniform(10, 70) * scale), int(rng.uniform(10, 70) * scale))
        cv2.ellipse(blot, centre, axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
        blot = cv2.GaussianBlur(blot, (0, 0), 6 * scale)
        image *= 1.0 + rng.uniform(-0.35, 0.2) * blot[..., None]


def _photograph(rng: np.random.Generator, image: np.ndarray, scale: float) -> np.ndarray:
    """Lighting (gradient, vignette, colour cast), sensor noise and sometimes blur -> uint8 RGB."""
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (xs * math.cos(direction) + ys * math.sin(direction)) / max(height, width)
    gain = rng.uniform(0.7, 1.25) * (1 + rng.uniform(-0.3, 0.3) * ramp)
    radius = ((xs / width - 0.5) ** 2 + (ys / height - 0.5) ** 2) * 2
    gain *= 1 - rng.uniform(0, 0.35) * radius
    cast = rng.uniform(0.92, 1.08, 3).astype(np.float32)
    image = image * gain[..., None] * cast
    image += rng.normal(0, rng.uniform(1, 6), image.shape).astype(np.float32)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.0) * scale)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_crack_folder(out_dir: Path, count: int, seed: int, height: int = 320, width: int = 320) -> None:
    """``count`` samples in the public layout: ``images/NNNNNN.png`` and ``masks/NNNNNN.png`` (0/255)."""
    out_dir = Path(out_dir)
    for index in range(count):
        sample = render_crack(sample_seed(seed, index), height, width)
        ok, png = cv2.imencode(".png", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError("PNG encoding failed")
        write_bytes(out_dir / "images" / f"{index:06d}.png", png.tobytes())
        write_bytes(out_dir / "masks" / f"{index:06d}.png", encode_mask_png(sample.mask * 255))


# ------------------------------------------------------------------------------------ folder loader


@dataclass(frozen=True)
class Skipped:
    file: str  # relative to the dataset root, e.g. "masks/0007.png"
    reason: str


@dataclass(frozen=True)
class CrackFolder:
    """The valid pairs of a crack folder (by sorted stem) and every file that was skipped, with why."""

    root: Path
    pairs: dict[str, tuple[Path, Path]]
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return sorted(self.pairs)

    def read(self, name: str) -> CrackSample:
        """One validated pair (validated again: files may change after listing)."""
        image_path, mask_path = self.pairs[name]
        sample, reason = _read_pair(image_path, mask_path)
        if sample is None:
            raise ValueError(f"{self.root}: {name}: {reason}")
        return CrackSample(sample.image, sample.mask, name=name)

    def report(self) -> dict:
        return {
            "root": str(self.root),
            "pairs": len(self.pairs),
            "skipped": [{"file": s.file, "reason": s.reason} for s in self.skipped],
        }


def read_crack_folder(root: Path, names: Sequence[str] | None = None) -> CrackFolder:
    """Pair ``root/images`` with ``root/masks`` by stem and validate every pair.

    A pair is skipped (and reported) when: the image or the mask is missing, two files share a stem,
    a file does not decode, sizes differ, or the mask is not binary (values other than {0, 1} or
    {0, 255}; JPEG masks are thresholded at 128, since compression smears their edges). Raises
    ``ValueError`` only when a folder is missing or no pair is usable.
    """
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a directory (a crack dataset has images/ and masks/)")
    skipped: list[Skipped] = []
    images = _by_stem(images_dir, skipped)
    masks = _by_stem(masks_dir, skipped)
    pairs: dict[str, tuple[Path, Path]] = {}
    for stem in sorted(images.keys() | masks.keys()):
        if names is not None and stem not in names:
            continue
        if stem not in masks:
            skipped.append(Skipped(f"images/{images[stem].name}", "no mask with this stem in masks/"))
            continue
        if stem not in images:
            skipped.append(Skipped(f"masks/{masks[stem].name}", "no image with this stem in images/"))
            continue
        _, reason = _read_pair(images[stem], masks[stem])
        if reason:
            skipped.append(Skipped(f"images/{images[stem].name}", reason))
            continue
        pairs[stem] = (images[stem], masks[stem])
    if not pairs:
        listed = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:5])
        raise ValueError(f"{root}: no usable image/mask pair" + (f" ({listed})" if listed else ""))
    return CrackFolder(root, pairs, skipped)


def _by_stem(folder: Path, skipped: list[Skipped]) -> dict[str, Path]:
    """stem -> file of a folder; files with the same stem are ambiguous, so all of them are skipped."""
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(
                Skipped(f"{folder.name}/{path.name}", f"not an image file ({', '.join(IMAGE_SUFFIXES)})")
            )
        else:
            by_stem.setdefault(path.stem, []).append(path)
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            for path in paths:
                skipped.append(
                    Skipped(
                        f"{folder.name}/{path.name}", f"{names} in {folder.name}/ share the stem {stem!r}"
                    )
                )
    return {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}


def _read_pair(image_path: Path, mask_path: Path) -> tuple[CrackSample | None, str]:
    """(sample, "") or (None, why the pair is unusable)."""
    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if bgr is None:
        return None, f"{image_path.name} does not decode as an image"
    raw = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        return None, f"mask {mask_path.name} does not decode as an image"
    if raw.ndim == 3:
        if not (np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 1], raw[..., 2])):
            if mask_path.suffix.lower() == ".png":
                return None, f"mask {mask_path.name} has colour: expected one channel of 0/255 or 0/1"
        raw = raw[..., 0]
    if raw.dtype != np.uint8:
        return None, f"mask {mask_path.name} is {raw.dtype}: expected 8-bit 0/255 or 0/1"
    if raw.shape != bgr.shape[:2]:
        return None, (
            f"mask {mask_path.name} is {raw.shape[1]}x{raw.shape[0]} but the image is "
            f"{bgr.shape[1]}x{bgr.shape[0]}"
        )
    if mask_path.suffix.lower() in (".jpg", ".jpeg"):
        mask = (raw >= 128).astype(np.uint8)
    else:
        values = set(np.unique(raw).tolist())
        if values <= {0, 1}:
            mask = raw.astype(np.uint8)
        elif values <= {0, 255}:
            mask = (raw // 255).astype(np.uint8)
        else:
            shown = sorted(values - {0, 1, 255})[:5]
            return None, f"mask {mask_path.name} is not binary: values {shown} besides 0/1 or 0/255"
    return CrackSample(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), mask), ""
