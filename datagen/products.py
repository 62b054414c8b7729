"""Procedural product photos of five returned-item categories, with exact labels.

No product-photo dataset can be downloaded where this project trains, so this generator is the
returns classifier's training data. Each image shows one item of a category, in this order (the
label map's order): ``casual_shoes``, ``handbags``, ``shirts``, ``tops``, ``watches``.

The categories differ only by *shape*, the way real ones do; everything else is drawn from the same
distributions for every class, so colour, pattern, background or lighting never give a class away:

- casual shoe: side view of a low or high sneaker: a long, flat sole, a toe box sloping down to the
  front, a collar at the heel, laces across the instep, sometimes a toe cap or side stripe;
- handbag: a trapezoid body wider at the bottom with rounded corners, one or two handles (or a long
  shoulder strap), often a flap with a clasp;
- shirt: collared and buttoned: a straight torso, a pointed collar, a button placket down the
  front, long sleeves (straight, bent or folded), sometimes a chest pocket;
- top: collarless and buttonless: a torso flaring to the hem, a scoop or V neckline, thin straps or
  short cap sleeves, sometimes a ruffled hem or a bow;
- watch: a round or square case with bezel, dial, hour marks and hands, a crown, and a strap running
  out of the case both ways (holes and buckle on one side).

Rendering varies what a camera would: base colours over the whole hue circle (a second colour for
trims), patterns (solid, stripes, checks, dots, mottled noise), pose (rotation, mirror, shear,
scale, position, partly out of frame), backgrounds (solid, gradient, texture, floor-and-wall
studio, distractor clutter), drop shadows, lighting (exposure, contrast, colour cast, vignette,
directional shading), defocus or motion blur, sensor noise and JPEG artefacts. Every image is a pure
function of an integer seed (``np.random.default_rng``, never a global RNG).

:func:`draw_product` is the building block the engagement generator (:mod:`datagen.engagement`)
reuses with controlled framing, lighting, clutter and colourfulness.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

PRODUCT_CLASSES = ("casual_shoes", "handbags", "shirts", "tops", "watches")

Polygon = np.ndarray  # float [N, 2] points in the product's own frame, roughly within [-1, 1]^2


@dataclass(frozen=True, eq=False)
class ProductImage:
    """One sample: an RGB image and its class index in :data:`PRODUCT_CLASSES`."""

    image: np.ndarray  # RGB uint8 [H, W, 3]
    label: int

    @property
    def class_name(self) -> str:
        return PRODUCT_CLASSES[self.label]


@dataclass(frozen=True)
class Placement:
    """Where an item goes: centre and half-size in pixels, rotation in degrees, mirror, shear."""

    cx: float
    cy: float
    half_size: float
    angle: float = 0.0
    mirror: bool = False
    shear: float = 0.0

    def transform(self, points: Polygon) -> np.ndarray:
        """Product frame -> image pixels (float [N, 2])."""
        x, y = points[:, 0] * (-1.0 if self.mirror else 1.0), points[:, 1]
        x = x + self.shear * y
        theta = math.radians(self.angle)
        cos, sin = math.cos(theta), math.sin(theta)
        rx, ry = cos * x - sin * y, sin * x + cos * y
        return np.stack([self.cx + self.half_size * rx, self.cy + self.half_size * ry], axis=1)


def render_product(
    seed: int, category: int | str | None = None, height: int = 128, width: int = 128
) -> ProductImage:
    """One photo of one item; ``category`` (index or name) is drawn from the seed when None."""
    rng = np.random.default_rng(seed)
    label = _category_index(category) if category is not None else int(rng.integers(len(PRODUCT_CLASSES)))
    canvas = background(rng, height, width, clutter=int(rng.choice([0, 0, 0, 1, 2, 4])))
    short = min(height, width)
    half = short * rng.uniform(0.28, 0.5)
    placement = Placement(
        cx=width / 2 + rng.uniform(-0.18, 0.18) * width,
        cy=height / 2 + rng.uniform(-0.18, 0.18) * height,
        half_size=half,
        angle=float(rng.normal(0, 12) if rng.random() < 0.8 else rng.uniform(-180, 180)),
        mirror=bool(rng.random() < 0.5),
        shear=float(rng.uniform(-0.15, 0.15)),
    )
    saturation = float(rng.uniform(0.0, 1.0))
    draw_product(rng, canvas, label, placement, saturation)
    image = photograph(rng, canvas, exposure=float(np.exp(rng.normal(0.0, 0.3))))
    return ProductImage(image, label)


def iter_products(
    count: int, seed: int, height: int = 128, width: int = 128, balanced: bool = True
) -> Iterator[ProductImage]:
    """``count`` images; ``balanced`` cycles the classes so every class has count/5 (+-1) images."""
    for index in range(count):
        category = index % len(PRODUCT_CLASSES) if balanced else None
        yield render_product(sample_seed(seed, index), category, height, width)


def render_products(
    count: int, seed: int, height: int = 128, width: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` balanced images stacked: uint8 [N, H, W, 3] and int64 labels [N]."""
    samples = list(iter_products(count, seed, height, width))
    return np.stack([s.image for s in samples]), np.array([s.label for s in samples], dtype=np.int64)


def write_image_folder(out_dir: Path, count: int, seed: int, size: int = 128) -> list[Path]:
    """``count`` images as ``out_dir/<class>/NNNNNN.jpg`` (the ImageFolder layout); returns the paths."""
    written = []
    for index, sample in enumerate(iter_products(count, seed, size, size)):
        path = Path(out_dir) / sample.class_name / f"{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        written.append(path)
    return written


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed per-image seed, so neighbouring datasets (seed, seed+1) do not share images."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _category_index(category: int | str) -> int:
    if isinstance(category, str):
        if category not in PRODUCT_CLASSES:
            raise ValueError(f"unknown product category {category!r}; known: {', '.join(PRODUCT_CLASSES)}")
        return PRODUCT_CLASSES.index(category)
    if not 0 <= category < len(PRODUCT_CLASSES):
        raise ValueError(f"product category index {category} is outside 0..{len(PRODUCT_CLASSES) - 1}")
    return int(category)


# --------------------------------------------------------------------------------- colour, texture


def random_colour(rng: np.random.Generator, saturation: float) -> np.ndarray:
    """An RGB float colour (0..255) of any hue; ``saturation`` 0 gives greys, 1 vivid colours."""
    hue = rng.random()
    sat = float(np.clip(saturation * rng.uniform(0.6, 1.0), 0, 1))
    value = rng.uniform(0.25, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, sat, value), dtype=np.float32) * 255


def pattern(
    rng: np.random.Generator, height: int, width: int, base: np.ndarray, saturation: float
) -> np.ndarray:
    """A float RGB layer [H, W, 3]: the base colour solid, striped, checked, dotted or mottled."""
    layer = np.empty((height, width, 3), np.float32)
    layer[:] = base
    kind = rng.choice(["solid", "solid", "stripes", "checks", "dots", "mottled"])
    if kind == "solid":
        return layer
    other = random_colour(rng, saturation) if rng.random() < 0.7 else base * rng.uniform(0.4, 0.7)
    period = rng.uniform(4, 14) * max(height, width) / 128
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    u = xs * math.cos(theta) + ys * math.sin(theta)
    v = -xs * math.sin(theta) + ys * math.cos(theta)
    if kind == "stripes":
        on = (u % period) < period * rng.uniform(0.25, 0.6)
    elif kind == "checks":
        on = ((u // period) + (v // period)) % 2 == 0
    elif kind == "dots":
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        on = du**2 + dv**2 < (period * rng.uniform(0.15, 0.35)) ** 2
    else:
        noise = cv2.resize(
            rng.random((max(2, height // 12), max(2, width // 12))).astype(np.float32), (width, height)
        )
        return layer * (0.7 + 0.6 * noise[..., None])
    layer[on] = other
    return layer


# ------------------------------------------------------------------------------------ backgrounds


def background(
    rng: np.random.Generator,
    height: int,
    width: int,
    clutter: int = 0,
    saturation: float | None = None,
    kind: str | None = None,
) -> np.ndarray:
    """A float RGB canvas [H, W, 3]: solid, gradient, textured or studio, with ``clutter`` distractors."""
    saturation = float(rng.uniform(0, 0.7)) if saturation is None else saturation
    kind = kind or str(rng.choice(["solid", "gradient", "texture", "studio"]))
    base = random_colour(rng, saturation * 0.8)
    if rng.random() < 0.4:
        base = base * 0.3 + 0.7 * rng.uniform(170, 250)  # pale, as product shots often are
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = base
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    if kind == "gradient":
        canvas *= 0.75 + 0.5 * ys if rng.random() < 0.5 else 1.25 - 0.5 * ys
    elif kind == "texture":
        canvas = pattern(rng, height, width, base, saturation) * 0.5 + canvas * 0.5
    elif kind == "studio":  # a floor meeting a wall at a horizon
        horizon = int(height * rng.uniform(0.45, 0.8))
        canvas[horizon:] *= rng.uniform(0.6, 0.85)
    for _ in range(clutter):
        _distractor(rng, canvas, saturation)
    return np.clip(canvas, 0, 255)


def _distractor(rng: np.random.Generator, canvas: np.ndarray, saturation: float) -> None:
    """A stray object: a box, a disc, a bar or a scribble of another colour."""
    height, width = canvas.shape[:2]
    colour = random_colour(rng, max(saturation, 0.3))
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    size = min(height, width) * rng.uniform(0.05, 0.22)
    mask = np.zeros((height, width), np.uint8)
    shape = rng.integers(4)
    if shape == 0:
        box = cv2.boxPoints(
            ((cx, cy), (size * rng.uniform(0.5, 2), size * rng.uniform(0.5, 2)), rng.uniform(0, 90))
        )
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 255, cv2.LINE_AA)
    elif shape == 1:
        cv2.circle(mask, (int(cx), int(cy)), int(size / 2) + 1, 255, -1, cv2.LINE_AA)
    elif shape == 2:
        end = (int(cx + rng.normal(0, size * 2)), int(cy + rng.normal(0, size * 2)))
        cv2.line(mask, (int(cx), int(cy)), end, 255, max(1, int(size / 5)), cv2.LINE_AA)
    else:
        points = np.stack(
            [cx + np.cumsum(rng.normal(0, size / 2, 6)), cy + np.cumsum(rng.normal(0, size / 2, 6))], 1
        )
        cv2.polylines(
            mask, [np.round(points).astype(np.int32)], False, 255, max(1, int(size / 8)), cv2.LINE_AA
        )
    _blend(canvas, mask, colour)


def _blend(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray | float) -> None:
    alpha = (mask.astype(np.float32) / 255)[..., None]
    canvas *= 1 - alpha
    canvas += alpha * colour


# ------------------------------------------------------------------------------------- the items


class _Painter:
    """Fills polygons of the product frame onto a canvas with a pattern and directional shading."""

    def __init__(self, rng: np.random.Generator, canvas: np.ndarray, placement: Placement) -> None:
        self.rng, self.canvas, self.placement = rng, canvas, placement
        height, width = canvas.shape[:2]
        self.silhouette = np.zeros((height, width), np.uint8)  # everything painted, for the shadow
        light = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        along = ((xs - placement.cx) * math.cos(light) + (ys - placement.cy) * math.sin(light)) / max(
            placement.half_size, 1.0
        )
        self.shading = np.clip(1.0 + rng.uniform(0.05, 0.3) * along, 0.5, 1.5)[..., None]

    def mask(self, polygons: list[Polygon], closed: bool = True, thickness: float = 0.0) -> np.ndarray:
        """A uint8 antialiased mask of filled polygons, or of polylines ``thickness`` wide (frame units)."""
        mask = np.zeros(self.canvas.shape[:2], np.uint8)
        points = [np.round(self.placement.transform(p) * 16).astype(np.int32) for p in polygons]
        if thickness:
            width = max(1, int(round(thickness * self.placement.half_size)))
            cv2.polylines(mask, points, closed, 255, width, cv2.LINE_AA, shift=4)
        else:
            cv2.fillPoly(mask, points, 255, cv2.LINE_AA, shift=4)
        return mask

    def fill(self, mask: np.ndarray, layer: np.ndarray | np.ndarray) -> None:
        if np.ndim(layer) == 1:  # a flat colour
            layer = np.broadcast_to(layer, self.canvas.shape).astype(np.float32)
        alpha = (mask.astype(np.float32) / 255)[..., None]
        self.canvas *= 1 - alpha
        self.canvas += alpha * np.clip(layer * self.shading, 0, 255)
        np.maximum(self.silhouette, mask, out=self.silhouette)

    def polygons(self, polygons: list[Polygon], layer: np.ndarray) -> None:
        self.fill(self.mask(polygons), layer)

    def lines(
        self, polylines: list[Polygon], colour: np.ndarray, thickness: float, closed: bool = False
    ) -> None:
        self.fill(self.mask(polylines, closed=closed, thickness=thickness), colour)

    def disc(self, cx: float, cy: float, radius: float, colour: np.ndarray) -> None:
        self.polygons([ellipse(cx, cy, radius, radius)], colour)


def ellipse(
    cx: float, cy: float, rx: float, ry: float, start: float = 0, end: float = 360, n: int = 40
) -> Polygon:
    angles = np.radians(np.linspace(start, end, n))
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)


def rounded_rect(x0: float, y0: float, x1: float, y1: float, radius: float) -> Polygon:
    corners = [
        (x1 - radius, y1 - radius, 0),
        (x0 + radius, y1 - radius, 90),
        (x0 + radius, y0 + radius, 180),
        (x1 - radius, y0 + radius, 270),
    ]
    return np.concatenate([ellipse(cx, cy, radius, radius, a, a + 90, 8) for cx, cy, a in corners])


def _poly(*points: tuple[float, float]) -> Polygon:
    return np.array(points, dtype=np.float32)


def _shoe(
    p: _Painter, rng: np.random.Generator, main: np.ndarray, trim: np.ndarray, fabric: np.ndarray
) -> None:
    collar = rng.uniform(-0.25, 0.0) if rng.random() < 0.7 else rng.uniform(-0.75, -0.45)  # low or high top
    toe = rng.uniform(0.85, 1.0)
    sole_top, sole_bottom = rng.uniform(0.22, 0.32), rng.uniform(0.42, 0.5)
    sole_colour = np.array([rng.uniform(200, 250)] * 3, np.float32) if rng.random() < 0.6 else trim
    instep = -0.32 + 0.1 * rng.random()
    upper = _poly(
        (-0.95, sole_top),
        (-0.98, collar + 0.1),
        (-0.85, collar),
        (-0.55, collar + 0.12),
        (-0.25, instep),
        (0.1, -0.18),
        (0.55, -0.02),
        (toe, 0.12),
        (toe + 0.03, sole_top),
    )
    p.polygons([upper], fabric)
    p.polygons([rounded_rect(-1.0, sole_top, toe + 0.05, sole_bottom, 0.07)], sole_colour)
    if rng.random() < 0.6:  # toe cap
        p.polygons([_poly((0.45, sole_top), (0.55, 0.0), (toe, 0.12), (toe + 0.03, sole_top))], trim)
    if rng.random() < 0.6:  # a side stripe
        p.lines([_poly((-0.6, 0.15), (-0.2, -0.05), (0.3, 0.1))], trim, 0.07)
    lace = np.array([rng.uniform(180, 255)] * 3, np.float32) if rng.random() < 0.6 else trim
    for t in np.linspace(0.1, 0.8, int(rng.integers(3, 6))):  # laces across the instep
        x = -0.3 + 0.6 * t
        y = -0.3 + 0.35 * t
        p.lines([_poly((x - 0.08, y - 0.04), (x + 0.08, y + 0.04))], lace, 0.04)


def _handbag(
    p: _Painter, rng: np.random.Generator, main: np.ndarray, trim: np.ndarray, fabric: np.ndarray
) -> None:
    top, bottom = rng.uniform(-0.2, 0.0), rng.uniform(0.7, 0.85)
    top_half, bottom_half = rng.uniform(0.45, 0.65), rng.uniform(0.7, 0.9)
    strap = trim if rng.random() < 0.5 else main * 0.7
    handles = rng.choice(["one", "two", "shoulder"])
    if handles == "shoulder":
        p.lines([ellipse(0, top, top_half * 0.9, rng.uniform(0.8, 1.0), 180, 360)], strap, 0.05)
    else:
        height = rng.uniform(0.4, 0.7)
        offsets = [0.0] if handles == "one" else [-0.08, 0.08]
        for dx in offsets:
            p.lines([ellipse(dx, top, top_half * 0.55, height, 180, 360)], strap, 0.1)
    body = _poly(
        (-top_half, top),
        (top_half, top),
        (bottom_half, bottom - 0.1),
        (bottom_half - 0.08, bottom),
        (-bottom_half + 0.08, bottom),
        (-bottom_half, bottom - 0.1),
    )
    p.polygons([body], fabric)
    if rng.random() < 0.7:  # flap and clasp
        flap_bottom = top + rng.uniform(0.3, 0.5)
        p.polygons(
            [
                _poly(
                    (-top_half - 0.02, top),
                    (top_half + 0.02, top),
                    (top_half * 0.9, flap_bottom),
                    (0, flap_bottom + 0.1),
                    (-top_half * 0.9, flap_bottom),
                )
            ],
            main * 0.85,
        )
        metal = np.array([rng.uniform(170, 230), rng.uniform(150, 210), rng.uniform(60, 160)], np.float32)
        p.polygons([rounded_rect(-0.08, flap_bottom, 0.08, flap_bottom + 0.12, 0.03)], metal)
    else:  # a zip along the top
        p.lines([_poly((-top_half * 0.9, top + 0.06), (top_half * 0.9, top + 0.06))], trim, 0.03)


def _shirt(
    p: _Painter, rng: np.random.Generator, main: np.ndarray, trim: np.ndarray, fabric: np.ndarray
) -> None:
    half, top, hem = rng.uniform(0.4, 0.5), -0.65, rng.uniform(0.85, 0.95)
    sleeve_drop = rng.uniform(0.5, 0.95)  # how far the long sleeves hang
    sleeve_out = rng.uniform(0.15, 0.45)
    for side in (-1, 1):
        shoulder = (side * half, top + 0.08)
        elbow = (side * (half + sleeve_out * 0.7), top + 0.08 + sleeve_drop * 0.55)
        cuff = (side * (half + sleeve_out * rng.uniform(0.2, 1.0)), top + 0.08 + sleeve_drop * 1.2)
        p.lines([_poly(shoulder, elbow, cuff)], fabric, 0.26)
        p.lines([_poly((cuff[0], cuff[1] - 0.02), (cuff[0], cuff[1] + 0.06))], main * 0.8, 0.26)  # cuff
    torso = _poly(
        (-half, top + 0.05), (-0.15, top), (0.15, top), (half, top + 0.05), (half, hem), (-half, hem)
    )
    p.polygons([torso], fabric)
    collar = trim if rng.random() < 0.4 else main * 0.8
    p.polygons([_poly((-0.2, top - 0.04), (0.0, top + 0.12), (-0.06, top + 0.26))], collar)  # pointed collar
    p.polygons([_poly((0.2, top - 0.04), (0.0, top + 0.12), (0.06, top + 0.26))], collar)
    p.lines([_poly((0.0, top + 0.14), (0.0, hem))], main * 0.7, 0.03)  # placket
    button = np.array([rng.uniform(180, 250)] * 3, np.float32) if rng.random() < 0.6 else trim
    for y in np.linspace(top + 0.25, hem - 0.12, int(rng.integers(4, 7))):
        p.disc(0.05, float(y), 0.035, button)
    if rng.random() < 0.5:  # chest pocket
        p.lines([rounded_rect(-0.33, top + 0.35, -0.13, top + 0.58, 0.02)], main * 0.7, 0.025, closed=True)


def _top(
    p: _Painter, rng: np.random.Generator, main: np.ndarray, trim: np.ndarray, fabric: np.ndarray
) -> None:
    top, hem = rng.uniform(-0.6, -0.45), rng.uniform(0.8, 0.95)
    chest, flare = rng.uniform(0.3, 0.42), rng.uniform(0.45, 0.65)
    neck_half, neck_depth = rng.uniform(0.12, 0.22), rng.uniform(0.15, 0.35)
    if rng.random() < 0.5:  # thin straps over the shoulders
        for side in (-1, 1):
            p.lines(
                [_poly((side * (neck_half + 0.05), top), (side * (neck_half + 0.08), top - 0.3))],
                fabric,
                0.05,
            )
        shoulder = top
    else:  # short cap sleeves
        shoulder = top - 0.1
        for side in (-1, 1):
            sleeve = _poly(
                (side * chest, shoulder),
                (side * (chest + 0.22), shoulder + 0.15),
                (side * (chest + 0.1), shoulder + 0.32),
                (side * chest, shoulder + 0.25),
            )
            p.polygons([sleeve], fabric)
    if rng.random() < 0.5:  # scoop neckline
        neckline = ellipse(0, shoulder, neck_half, neck_depth, 180, 0, 16)
    else:  # V neckline
        neckline = _poly((-neck_half, shoulder), (0, shoulder + neck_depth), (neck_half, shoulder))
    body = np.concatenate(
        [_poly((-chest, shoulder)), neckline, _poly((chest, shoulder), (chest - 0.04, 0.1))]
    )
    hem_points = _poly((flare, hem), (-flare, hem))
    if rng.random() < 0.4:  # a ruffled hem
        xs = np.linspace(flare, -flare, 11)
        hem_points = np.stack([xs, hem + 0.05 * np.abs(np.sin(np.linspace(0, 5 * math.pi, 11)))], 1)
    outline = np.concatenate([body, hem_points, _poly((-chest + 0.04, 0.1))]).astype(np.float32)
    p.polygons([outline], fabric)
    if rng.random() < 0.3:  # a bow at the neckline
        y = shoulder + neck_depth + 0.05
        p.polygons(
            [
                _poly((0, y), (-0.1, y - 0.06), (-0.1, y + 0.06)),
                _poly((0, y), (0.1, y - 0.06), (0.1, y + 0.06)),
            ],
            trim,
        )


def _watch(
    p: _Painter, rng: np.random.Generator, main: np.ndarray, trim: np.ndarray, fabric: np.ndarray
) -> None:
    band = rng.uniform(0.17, 0.26)
    strap = fabric if rng.random() < 0.5 else np.array([rng.uniform(20, 200)] * 3, np.float32)
    metal = np.array([rng.uniform(150, 240)] * 3, np.float32) * np.array(
        [1.0, rng.uniform(0.85, 1.0), rng.uniform(0.6, 1.0)]
    )
    p.polygons([rounded_rect(-band, -1.0, band, 1.0, 0.05)], strap)
    for y in np.linspace(0.55, 0.9, int(rng.integers(3, 6))):  # holes
        p.disc(0.0, float(y), 0.03, strap * 0.4)
    p.lines([rounded_rect(-band - 0.04, -0.75, band + 0.04, -0.6, 0.02)], metal, 0.035, closed=True)  # buckle
    radius = rng.uniform(0.33, 0.45)
    if rng.random() < 0.7:
        case, dial = ellipse(0, 0, radius, radius), ellipse(0, 0, radius * 0.82, radius * 0.82)
    else:
        case, dial = (
            rounded_rect(-radius, -radius, radius, radius, 0.08),
            rounded_rect(-radius * 0.82, -radius * 0.82, radius * 0.82, radius * 0.82, 0.05),
        )
    p.polygons([rounded_rect(radius - 0.02, -0.06, radius + 0.08, 0.06, 0.02)], metal)  # crown
    p.polygons([case], metal)
    face = np.array([rng.uniform(215, 250)] * 3, np.float32) if rng.random() < 0.5 else main
    p.polygons([dial], face)
    ink = np.full(3, 20.0 if face.mean() > 120 else 235.0, np.float32)
    ticks = []
    for hour in range(12):
        angle = hour * math.pi / 6
        inner = radius * (0.6 if hour % 3 == 0 else 0.68)
        ticks.append(
            _poly(
                (inner * math.sin(angle), -inner * math.cos(angle)),
                (radius * 0.76 * math.sin(angle), -radius * 0.76 * math.cos(angle)),
            )
        )
    p.lines(ticks, ink, 0.025)
    for length, width in ((0.45, 0.04), (0.68, 0.025)):  # hour and minute hands
        angle = rng.uniform(0, 2 * math.pi)
        p.lines(
            [_poly((0, 0), (radius * length * math.sin(angle), -radius * length * math.cos(angle)))],
            ink,
            width,
        )


_DRAWERS: tuple[Callable[..., None], ...] = (_shoe, _handbag, _shirt, _top, _watch)  # PRODUCT_CLASSES order


def draw_product(
    rng: np.random.Generator, canvas: np.ndarray, label: int, placement: Placement, saturation: float
) -> np.ndarray:
    """Paint one item of class ``label`` onto ``canvas`` (float RGB, in place) with a soft drop shadow.

    ``saturation`` (0..1) scales how colourful the item is. Returns the item's silhouette (uint8).
    """
    main = random_colour(rng, saturation)
    trim = random_colour(rng, saturation)
    painter = _Painter(rng, canvas.copy(), placement)
    fabric = pattern(rng, *canvas.shape[:2], main, saturation)
    _DRAWERS[label](painter, rng, main, trim, fabric)
    # The shadow goes under the item: darken the original canvas by a blurred, shifted silhouette.
    shadow = painter.silhouette.astype(np.float32) / 255
    shift = placement.half_size * rng.uniform(0.02, 0.12)
    matrix = np.float32([[1, 0, shift * rng.choice([-1, 1])], [0, 1, shift]])
    shadow = cv2.warpAffine(shadow, matrix, shadow.shape[::-1])
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(0.5, placement.half_size * 0.06))
    canvas *= (1 - rng.uniform(0.2, 0.5) * shadow)[..., None]
    alpha = (painter.silhouette.astype(np.float32) / 255)[..., None]
    canvas[:] = canvas * (1 - alpha) + painter.canvas * alpha
    return painter.silhouette


# ------------------------------------------------------------------------------------- the camera


def photograph(rng: np.random.Generator, canvas: np.ndarray, exposure: float = 1.0) -> np.ndarray:
    """What a camera makes of a scene: exposure, contrast, colour cast, vignette, blur, noise, JPEG.

    ``exposure`` multiplies the light (1 = well exposed; 0.3 dark, 2.5 blown out).
    """
    height, width = canvas.shape[:2]
    image = canvas * exposure
    image = (image - 128) * rng.uniform(0.8, 1.2) + 128  # contrast
    image *= rng.uniform(0.9, 1.1, size=3).astype(np.float32)  # white balance
    if rng.random() < 0.5:  # vignette
        ys, xs = np.ogrid[-1 : 1 : height * 1j, -1 : 1 : width * 1j]
        image *= (1 - rng.uniform(0.1, 0.4) * (xs**2 + ys**2) / 2)[..., None].astype(np.float32)
    image = np.clip(image, 0, 255)
    blur = rng.random()
    if blur < 0.25:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.2) * min(height, width) / 128)
    elif blur < 0.35:  # motion blur
        length = int(rng.integers(3, 7))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2] = 1 / length
        rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1)
        image = cv2.filter2D(image, -1, cv2.warpAffine(kernel, rotation, (length, length)))
    image += rng.normal(0, rng.uniform(0, 6), image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 95))])
        image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    return image
