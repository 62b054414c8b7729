"""Procedural grocery-shelf scenes with exact per-pixel class masks.

No shelf dataset can be downloaded where this project trains, so this generator is the training data:
a wall, shelves with front-edge strips, products of varied shapes standing on them and price tags on
the edges. Image and mask are painted with the same shapes (last painted wins), so the mask is exact
by construction; photometric jitter then touches the image only, as a camera would. Everything is a
pure function of an integer seed (``np.random.default_rng``, never a global RNG).
"""

from __future__ import annotations

import colorsys
import functools
import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from pathlib import Path

import cv2
import numpy as np

from clients.atomic import write_bytes
from clients.contract import ModelContract
from clients.labels import LabelMap
from clients.masks import MaskArchiveWriter, encode_mask_png
from clients.video import VideoSink

SHELF_MODEL = "shelf_segmenter"  # the model whose labels.txt names the classes drawn here
_REFERENCE_HEIGHT = 384  # sizes below are pixels at this image height and scale with the real one
_LETTERS = "ABCDEFGHIJKLMNOPRSTUVWXYZ"
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX)
# Standard normal quantiles of 256 equiprobable bins: looking random bytes up in it gives gaussian
# noise several times faster than rng.standard_normal, which matters at video frame rates.
_GAUSS_LUT = np.array([statistics.NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)


@dataclass(frozen=True, eq=False)
class Scene:
    """One sample: an RGB image and its class-id mask, checked to belong together."""

    image: np.ndarray  # RGB uint8 [H, W, 3]
    mask: np.ndarray  # uint8 [H, W] class ids
    num_classes: int | None = None  # None: the size of the served model's label map

    def __post_init__(self) -> None:
        image, mask = self.image, self.mask
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a scene image is RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
        if mask.dtype != np.uint8 or mask.shape != image.shape[:2]:
            raise ValueError(f"a scene mask is uint8 {list(image.shape[:2])}, got {mask.dtype} {mask.shape}")
        num_classes = self.num_classes if self.num_classes is not None else len(_default_labels())
        if mask.size and int(mask.max()) >= num_classes:
            raise ValueError(f"mask holds class id {int(mask.max())}, but there are {num_classes} classes")


def render_scene(seed: int, height: int = 384, width: int = 640, labels: LabelMap | None = None) -> Scene:
    """One camera frame of a shelf, photometric jitter included."""
    labels = labels or _default_labels()
    rng = np.random.default_rng(seed)
    image, mask = _ShelfPainter(rng, height, width, _Ids.of(labels)).paint()
    return Scene(_photograph(image, _Lighting.sample(rng), rng), mask, len(labels))


def render_shelf(seed: int, height: int, length: int, labels: LabelMap | None = None) -> Scene:
    """One long shelf unit ``length`` px wide, without photometric jitter (that belongs to frames)."""
    labels = labels or _default_labels()
    image, mask = _ShelfPainter(np.random.default_rng(seed), height, length, _Ids.of(labels)).paint()
    return Scene(image, mask, len(labels))


def render_pan_frames(
    seed: int,
    num_frames: int,
    height: int = 384,
    width: int = 640,
    pixels_per_frame: float = 6.0,
    labels: LabelMap | None = None,
) -> Iterator[Scene]:
    """A camera panning along one long shelf: integer-offset crops with a slow vertical bob.

    Image and mask are cropped with the same integer offsets, so the masks stay exact; the lighting
    drifts smoothly between keyframes while the sensor noise is fresh every frame.
    """
    if pixels_per_frame < 0:
        raise ValueError(f"the camera pans forwards: pixels_per_frame must be >= 0, got {pixels_per_frame}")
    labels = labels or _default_labels()
    rng = np.random.default_rng(seed)
    bob = rng.uniform(0.0, 4.0) * height / _REFERENCE_HEIGHT
    bob_period, bob_phase = rng.uniform(40, 120), rng.uniform(0, 2 * math.pi)
    margin = math.ceil(bob)
    travel = math.ceil(pixels_per_frame * max(num_frames - 1, 0))
    shelf = render_shelf(int(rng.integers(2**63)), height + 2 * margin, width + travel, labels)
    light_rng, noise_rng = rng.spawn(2)
    lighting = _DriftingLighting(light_rng)
    for t in range(num_frames):
        x = round(t * pixels_per_frame)
        y = margin + round(bob * math.sin(2 * math.pi * t / bob_period + bob_phase))
        image = _photograph(shelf.image[y : y + height, x : x + width], lighting.at(t), noise_rng)
        yield Scene(image, shelf.mask[y : y + height, x : x + width].copy(), len(labels))


def write_pan_video(
    video_path: Path,
    masks_path: Path,
    seed: int,
    num_frames: int,
    fps: float = 30.0,
    height: int = 384,
    width: int = 640,
    pixels_per_frame: float = 6.0,
) -> None:
    """A panning shelf video (H.264) and its ground-truth mask archive; each file appears atomically.

    ``pixels_per_frame`` is the pan's speed (the default is the demo's; larger is a faster camera)."""
    with VideoSink(video_path, fps=fps) as sink, MaskArchiveWriter(masks_path) as archive:
        for scene in render_pan_frames(seed, num_frames, height, width, pixels_per_frame):
            sink.write(scene.image)
            archive.write(scene.mask)


def write_dataset(out_dir: Path, count: int, seed: int, height: int = 384, width: int = 640) -> None:
    """``count`` scenes as ``images/NNNNNN.png`` (RGB) and ``masks/NNNNNN.png`` (class ids)."""
    images, masks = Path(out_dir) / "images", Path(out_dir) / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        scene = render_scene(scene_seed(seed, index), height, width)
        ok, png = cv2.imencode(".png", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError("PNG encoding failed")
        # Each file appears complete or not at all: a reader may start on the folder while it grows.
        write_bytes(images / f"{index:06d}.png", png.tobytes())
        write_bytes(masks / f"{index:06d}.png", encode_mask_png(scene.mask))


def scene_seed(seed: int, index: int) -> int:
    """The seed of scene ``index`` of a set; well mixed, so sets from different base seeds are disjoint."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


@functools.cache
def _default_labels() -> LabelMap:
    # The shelf scenes are drawn in the shelf model's classes.
    return ModelContract.load(SHELF_MODEL).labels


@dataclass(frozen=True)
class _Ids:
    """The class ids this generator paints, looked up by name in the label map."""

    background: int
    product: int
    shelf_edge: int
    price_tag: int

    @classmethod
    def of(cls, labels: LabelMap) -> _Ids:
        return cls(*(labels.index(name) for name in ("background", "product", "shelf_edge", "price_tag")))


# --- the shelf: a layout, then wall, uprights, products, shadows, edge strips and tags, back to front ---


@dataclass(frozen=True)
class _Layout:
    edge_tops: tuple[int, ...]  # top row of each edge strip, with one just above and one below the frame
    edge_height: int

    @classmethod
    def sample(cls, rng: np.random.Generator, height: int, scale: float) -> _Layout:
        """2-4 whole shelves in view; the ones just outside the frame still show some products."""
        shelves = int(rng.integers(2, 5))
        pitch = height / (shelves + rng.uniform(0.05, 0.7))
        edge_height = min(max(3, round(rng.uniform(7, 22) * scale)), round(pitch * 0.22))
        low = max(height - shelves * pitch, 0.25 * pitch)
        high = min(pitch - edge_height, height - (shelves - 1) * pitch - edge_height - 1)
        offset = rng.uniform(low, high) if low < high else high
        jitter = rng.uniform(-0.03, 0.03, shelves + 2) * pitch
        tops = tuple(round(offset + k * pitch + jitter[k + 1]) for k in range(-1, shelves + 1))
        return cls(tops, edge_height)


class _Canvas:
    """Image and mask painted together: every shape goes into both, so the mask stays exact."""

    def __init__(self, image: np.ndarray, mask: np.ndarray) -> None:
        self.image, self.mask = image, mask

    def paste(self, x: int, y: int, patch: np.ndarray, silhouette: np.ndarray, class_id: int) -> None:
        """Paint ``patch`` where ``silhouette`` is set, its top-left corner at (x, y), clipped."""
        h, w = silhouette.shape
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.mask.shape[1]), min(y + h, self.mask.shape[0])
        if x0 >= x1 or y0 >= y1:
            return
        inside = silhouette[y0 - y : y1 - y, x0 - x : x1 - x]
        cv2.copyTo(patch[y0 - y : y1 - y, x0 - x : x1 - x], inside, self.image[y0:y1, x0:x1])
        self.mask[y0:y1, x0:x1][inside.astype(bool)] = class_id


class _ShelfPainter:
    """Paints one shelf unit back to front: wall, uprights, products, shadows, edge strips, price tags."""

    def __init__(self, rng: np.random.Generator, height: int, length: int, ids: _Ids) -> None:
        self.rng, self.ids, self.length = rng, ids, length
        self.scale = height / _REFERENCE_HEIGHT
        self.layout = _Layout.sample(rng, height, self.scale)
        wall = _wall(rng, height, length, self.scale)
        self.canvas = _Canvas(wall, np.full((height, length), ids.background, np.uint8))
        self.fine_print = _fine_print_page(rng)

    def paint(self) -> tuple[np.ndarray, np.ndarray]:
        layout = self.layout
        units = _unit_boundaries(self.rng, self.length, self.scale)
        edge_colour = _edge_colour(self.rng)
        self._uprights(units, edge_colour)
        groups = [
            (shelf, left, width)
            for shelf in range(1, len(layout.edge_tops))
            for left, width in self._stock(shelf)
        ]
        for top in layout.edge_tops:
            self._shadow_below(top + layout.edge_height)
            self._edge_strip(top, edge_colour, units)
        self._price_tags(groups)
        return self.canvas.image, self.canvas.mask

    def _uprights(self, units: list[int], edge_colour: tuple[int, int, int]) -> None:
        """The posts between shelf units: part of the fixture, so background like the wall."""
        colour = tuple(int(c * self.rng.uniform(0.45, 0.8)) for c in edge_colour)
        half = round(self.rng.uniform(3, 7) * self.scale)
        for x in units:
            self.canvas.image[:, max(x - half, 0) : x + half] = colour

    def _stock(self, shelf: int) -> Iterator[tuple[float, float]]:
        """Fill one shelf left to right with groups of identical facings; yield each group's (left, width).

        Bottoms sink a little behind the edge strip (painted later, in front), so products stand on it.
        Shelves tend to hold one kind of product, as in a store aisle.
        """
        rng, scale, layout = self.rng, self.scale, self.layout
        ceiling = layout.edge_tops[shelf - 1] + layout.edge_height
        floor = layout.edge_tops[shelf] + round(rng.uniform(0.2, 0.6) * layout.edge_height)
        room = floor - ceiling - max(2, round(rng.uniform(2, 10) * scale))
        if room < 8 or ceiling >= self.canvas.mask.shape[0]:
            return
        weights = np.array([3.0, 2.0, 2.0, 1.5, 1.5, 1.0])
        if rng.random() < 0.6:
            weights[rng.integers(len(_SHAPES))] += 25
        weights /= weights.sum()
        x = rng.uniform(-40, 5) * scale
        while x < self.length:
            product = _SHAPES[rng.choice(len(_SHAPES), p=weights)](rng, room, scale, self.fine_print)
            h, w = product.silhouette.shape
            facings = int(rng.integers(1, 5 if w < 60 * scale else 3))
            stacked = 2 if h * 2 <= room and rng.random() < 0.3 else 1
            left = x
            for _ in range(facings):
                for level in range(1, stacked + 1):
                    self.canvas.paste(
                        round(x), floor - level * h, product.patch, product.silhouette, self.ids.product
                    )
                x += w + rng.uniform(-0.08, 0.12) * w  # below zero, the next facing hides this one's side
            yield left, x - left
            x += rng.uniform(60, 160) * scale if rng.random() < 0.06 else rng.uniform(1, 12) * scale

    def _shadow_below(self, row: int) -> None:
        """Shelves shade what lies right under them: the wall and the tops of the products below."""
        depth = max(2, round(self.rng.uniform(8, 24) * self.scale))
        image = self.canvas.image
        y0, y1 = max(row, 0), min(row + depth, image.shape[0])
        ramp = 1 - self.rng.uniform(0.25, 0.55) * np.linspace(1, 0, depth, dtype=np.float32) ** 2
        if y0 < y1:
            image[y0:y1] = (image[y0:y1] * ramp[y0 - row : y1 - row, None, None]).astype(np.uint8)

    def _edge_strip(self, top: int, colour: tuple[int, int, int], units: list[int]) -> None:
        """The shelf's front edge: a lighter lip on top, a darker one below, joints between units."""
        edge_height = self.layout.edge_height
        rows = np.ones(edge_height, np.float32)
        lip = max(1, edge_height // 7)
        rows[:lip] = self.rng.uniform(1.15, 1.35)
        rows[-lip:] = self.rng.uniform(0.55, 0.8)
        if edge_height >= 9 and self.rng.random() < 0.6:  # a recessed channel that holds the price tags
            rows[lip + 1 : -lip - 1] *= self.rng.uniform(0.85, 0.97)
        band = np.clip(rows[:, None] * np.array(colour, np.float32), 0, 255).astype(np.uint8)
        y0, y1 = max(top, 0), min(top + edge_height, self.canvas.mask.shape[0])
        if y0 >= y1:
            return
        band = band[y0 - top : y1 - top, None, :]
        self.canvas.image[y0:y1] = band
        self.canvas.mask[y0:y1] = self.ids.shelf_edge
        for x in units:
            self.canvas.image[y0:y1, max(x - 1, 0) : x + 1] = band // 2

    def _price_tags(self, groups: list[tuple[int, float, float]]) -> None:
        """Most product groups get a tag on the edge strip below them, clear of the previous tag."""
        style = _TagStyle.sample(self.rng)
        right_end: dict[int, float] = {}
        for shelf, left, width in groups:
            if self.rng.random() < 0.8:
                x = round(left + self.rng.uniform(-0.05, 0.35) * width)
                if x >= right_end.get(shelf, -math.inf) + 3 * self.scale:
                    right_end[shelf] = x + self._price_tag(x, self.layout.edge_tops[shelf], style)

    def _price_tag(self, x: int, edge_top: int, style: _TagStyle) -> int:
        """Paint a tag with its left side at ``x`` on the edge strip at ``edge_top``; return its width."""
        rng, edge_height = self.rng, self.layout.edge_height
        th = max(4, min(round(edge_height * style.fill * rng.uniform(0.95, 1.05)), round(20 * self.scale)))
        tw = round(max(th * 1.5, rng.uniform(18, 36) * self.scale))
        # In the channel below the lip, or hung from the lip and over the strip's lower edge.
        top = edge_top + (max(1, edge_height // 7) if style.fill < 1 else 1)
        albedo = np.empty((th, tw, 3), np.uint8)
        albedo[:] = style.paper
        split = 0
        if style.header is not None:
            split = round(tw * rng.uniform(0.2, 0.3))
            albedo[:, :split] = style.header
        ink = np.array(style.ink)
        price = f"{rng.integers(0, 20)}.{rng.integers(0, 100):02d}"
        price_left = split + round((tw - split) * 0.55)
        _write(rng, albedo, price, (price_left, 1, tw - 2, th - 1), ink)
        _stamp_fine_print(rng, albedo, self.fine_print, (split + 2, 2, price_left - 1, th - 2), ink)
        cv2.rectangle(albedo, (0, 0), (tw - 1, th - 1), tuple(int(c * 0.8) for c in style.paper), 1)
        self.canvas.paste(x, top, albedo, np.ones((th, tw), np.uint8), self.ids.price_tag)
        return tw


def _wall(rng: np.random.Generator, height: int, length: int, scale: float) -> np.ndarray:
    """The back panel: a muted colour, a vertical gradient and one of a few textures."""
    family = rng.choice(["light", "beige", "dark", "muted"], p=[0.4, 0.2, 0.15, 0.25])
    hue, saturation, value = {
        "light": (rng.random(), rng.uniform(0, 0.06), rng.uniform(0.75, 0.95)),
        "beige": (rng.uniform(0.07, 0.12), rng.uniform(0.1, 0.25), rng.uniform(0.7, 0.9)),
        "dark": (rng.random(), rng.uniform(0, 0.1), rng.uniform(0.15, 0.35)),
        "muted": (rng.random(), rng.uniform(0.15, 0.45), rng.uniform(0.35, 0.75)),
    }[family]
    colour = np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255
    shade = np.linspace(1 + rng.uniform(-0.15, 0.15), 1 + rng.uniform(-0.15, 0.15), height, dtype=np.float32)
    texture = rng.choice(["plain", "pegboard", "slats", "blotches"], p=[0.2, 0.3, 0.2, 0.3])
    pattern = np.ones((height, length), np.float32)
    if texture == "pegboard":
        pitch = max(4, round(rng.uniform(9, 16) * scale))
        cell = np.ones((pitch, pitch), np.float32)
        cv2.circle(cell, (pitch // 2, pitch // 2), max(1, round(pitch * 0.14)), rng.uniform(0.35, 0.7), -1)
        pattern = np.tile(cell, (height // pitch + 1, length // pitch + 1))[:height, :length]
    elif texture == "slats":
        pattern[:, :: max(8, round(rng.uniform(30, 110) * scale))] = rng.uniform(0.6, 0.85)
    elif texture == "blotches":
        coarse = rng.uniform(0.9, 1.1, (max(2, height // 48), max(2, length // 48))).astype(np.float32)
        pattern = cv2.resize(coarse, (length, height), interpolation=cv2.INTER_CUBIC)
    # Grey to three channels, then a per-channel scale: cv2 does both far faster than numpy broadcasting.
    wall = cv2.multiply(cv2.cvtColor(shade[:, None] * pattern, cv2.COLOR_GRAY2RGB), (*colour.tolist(), 0.0))
    return np.clip(wall, 0, 255, out=wall).astype(np.uint8)


def _unit_boundaries(rng: np.random.Generator, length: int, scale: float) -> list[int]:
    """x of the uprights between shelf units (about a metre apart)."""
    xs, x = [], rng.uniform(-600, 0) * scale
    while x < length:
        x += rng.uniform(700, 1000) * scale
        xs.append(round(x))
    return [x for x in xs if x < length]


def _edge_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    choices = [(235, 235, 232), (200, 202, 205), (120, 124, 130), (40, 40, 44), (190, 30, 35),
               (25, 70, 160), (240, 200, 30), (30, 120, 60), (180, 140, 95)]  # fmt: skip
    base = np.array(choices[rng.integers(len(choices))], np.float32)
    return _rgb(np.clip(base * rng.uniform(0.85, 1.1) + rng.uniform(-12, 12, 3), 0, 255))


# --- products: each shape paints flat artwork ("albedo") and a silhouette, then gets lit ---


@dataclass(frozen=True)
class _Product:
    patch: np.ndarray  # RGB uint8 [h, w, 3], shaded
    silhouette: np.ndarray  # uint8 [h, w], 1 inside


def _box(rng: np.random.Generator, room: int, scale: float, page: np.ndarray) -> _Product:
    """Cereal, tea, pasta: a printed rectangle, sometimes with its side face showing."""
    h, w = _size(rng, room, scale, (0.55, 0.97), (0.3, 0.95))
    base, albedo = _blank(rng, h, w)
    top = round(h * rng.uniform(0.0, 0.2))
    _decorate(rng, albedo, page, (top, top + round(h * rng.uniform(0.35, 0.7))), base)
    if rng.random() < 0.4:
        side = max(2, round(w * rng.uniform(0.1, 0.2)))
        albedo[:, slice(0, side) if rng.random() < 0.5 else slice(w - side, w)] *= 0.65
    return _Product(_shade(rng, albedo, round_body=False), np.ones((h, w), np.uint8))


def _bottle(rng: np.random.Generator, room: int, scale: float, page: np.ndarray) -> _Product:
    """Drinks, oil, sauces: a body, rounded shoulders, a neck and a cap of another colour."""
    h, w = _size(rng, room, scale, (0.65, 0.98), (0.22, 0.4))
    cap_h = max(2, round(h * rng.uniform(0.04, 0.08)))
    neck_half = w * rng.uniform(0.14, 0.24)
    neck_bottom = cap_h + round(h * rng.uniform(0.05, 0.2))
    body_top = neck_bottom + round(h * rng.uniform(0.06, 0.18))
    centre = w / 2 - 0.5
    t = np.linspace(0, 1, 10)
    shoulder_x = centre + centre - (centre - neck_half) * t * t * (3 - 2 * t)  # eases in to the neck
    shoulder_y = body_top - t * (body_top - neck_bottom)
    right = np.column_stack([np.r_[w - 1, shoulder_x, centre + neck_half], np.r_[h - 1, shoulder_y, cap_h]])
    left = np.column_stack([w - 1 - right[::-1, 0], right[::-1, 1]])
    silhouette = np.zeros((h, w), np.uint8)
    cv2.fillPoly(silhouette, [np.round(np.vstack([right, left])).astype(np.int32)], 1)
    cap_half = min(neck_half * rng.uniform(1.1, 1.4), centre)
    cap = (round(centre - cap_half), 0), (round(centre + cap_half), cap_h)
    cv2.rectangle(silhouette, *cap, 1, -1)
    base, albedo = _blank(rng, h, w)
    cv2.rectangle(albedo, *cap, _rgb(_package_colour(rng)), -1)
    body = h - body_top
    label_top = body_top + round(body * rng.uniform(0.05, 0.3))
    _decorate(rng, albedo, page, (label_top, label_top + round(body * rng.uniform(0.35, 0.6))), base)
    return _Product(_shade(rng, albedo, round_body=True), silhouette)


def _can(rng: np.random.Generator, room: int, scale: float, page: np.ndarray) -> _Product:
    """Tins and drink cans: a cylinder seen slightly from above, its metal lid an ellipse."""
    h, w = _size(rng, room, scale, (0.35, 0.75), (0.45, 0.9))
    rim = max(1, round(w * rng.uniform(0.06, 0.1)))
    centre = round((w - 1) / 2)
    silhouette = np.zeros((h, w), np.uint8)
    silhouette[rim : h - rim] = 1
    for y in (rim, h - 1 - rim):
        cv2.ellipse(silhouette, (centre, y), (centre, rim), 0, 0, 360, 1, -1)
    base, albedo = _blank(rng, h, w)
    _decorate(rng, albedo, page, (2 * rim + round(h * rng.uniform(0, 0.15)), h - 2 * rim), base)
    metal = rng.uniform(150, 225)
    cv2.ellipse(albedo, (centre, rim), (centre, rim), 0, 0, 360, (metal, metal, metal * 0.97), -1)
    albedo[h - rim - 2 : h - rim] *= 0.7  # the seam at the bottom
    return _Product(_shade(rng, albedo, round_body=True), silhouette)


def _jar(rng: np.random.Generator, room: int, scale: float, page: np.ndarray) -> _Product:
    """Jam, sauce, pickles: a squat rounded body under a lid."""
    h, w = _size(rng, room, scale, (0.35, 0.7), (0.6, 1.0))
    lid_h = max(2, round(h * rng.uniform(0.1, 0.18)))
    lid_inset = round(w * rng.uniform(0.03, 0.1))
    radius = max(1, round(min(w, h) * rng.uniform(0.08, 0.2)))
    silhouette = np.zeros((h, w), np.uint8)
    _rounded_rect(silhouette, (0, lid_h - 1, w - 1, h - 1), radius)
    silhouette[:lid_h, lid_inset : w - lid_inset] = 1
    base, albedo = _blank(rng, h, w)
    lids = [(200, 170, 60), (190, 30, 30), (240, 240, 240), (30, 30, 30), (40, 120, 50)]
    albedo[:lid_h] = lids[rng.integers(len(lids))]
    albedo[lid_h - 2 : lid_h] *= 0.6
    body = h - lid_h
    label_top = lid_h + round(body * rng.uniform(0.1, 0.3))
    _decorate(rng, albedo, page, (label_top, label_top + round(body * rng.uniform(0.4, 0.6))), base)
    return _Product(_shade(rng, albedo, round_body=True), silhouette)


def _pouch(rng: np.random.Generator, room: int, scale: float, page: np.ndarray) -> _Product:
    """Stand-up pouches and crisp bags: wide at the bottom, a crimped seal on top."""
    h, w = _size(rng, room, scale, (0.55, 0.92), (0.55, 0.9))
    inset = w * rng.uniform(0.04, 0.1)
    t = np.linspace(0, 1, 8)
    side = np.column_stack([inset * t**1.5, (h - 1) * (1 - t)])  # bottom-left corner up to the seal
    teeth = max(2, w // max(3, round(5 * scale)))
    crimp_x = np.linspace(inset, w - 1 - inset, 2 * teeth + 1)
    crimp_y = np.where(np.arange(crimp_x.size) % 2 == 0, 0, max(1, round(2 * scale)))
    other_side = np.column_stack([w - 1 - side[::-1, 0], side[::-1, 1]])
    outline = np.vstack([side, np.column_stack([crimp_x, crimp_y]), other_side])
    silhouette = np.zeros((h, w), np.uint8)
    cv2.fillPoly(silhouette, [np.round(outline).astype(np.int32)], 1)
    base, albedo = _blank(rng, h, w)
    seal = max(2, round(h * rng.uniform(0.05, 0.1)))
    albedo[:seal] *= 0.8
    _decorate(rng, albedo, page, (seal + round(h * 0.1), seal + round(h * rng.uniform(0.45, 0.75))), base)
    return _Product(_shade(rng, albedo, round_body=False), silhouette)


def _carton(rng: np.random.Generator, room: int, scale: float, page: np.ndarray) -> _Product:
    """Milk and juice cartons: a box under a gable roof with a sealed fin on top."""
    h, w = _size(rng, room, scale, (0.6, 0.97), (0.32, 0.5))
    fin = max(1, round(h * 0.04))
    eaves = fin + round(w * rng.uniform(0.25, 0.4))
    silhouette = np.zeros((h, w), np.uint8)
    silhouette[eaves:] = 1
    cv2.fillPoly(silhouette, [np.array([[0, eaves], [w // 2, fin], [w - 1, eaves]], np.int32)], 1)
    silhouette[:fin, round(w * 0.4) : round(w * 0.6) + 1] = 1
    base, albedo = _blank(rng, h, w, white=0.5)
    albedo[:eaves] *= 0.85
    label_top = eaves + round((h - eaves) * rng.uniform(0.05, 0.25))
    _decorate(rng, albedo, page, (label_top, label_top + round((h - eaves) * rng.uniform(0.4, 0.65))), base)
    return _Product(_shade(rng, albedo, round_body=False), silhouette)


_SHAPES: tuple[Callable[[np.random.Generator, int, float, np.ndarray], _Product], ...] = (
    _box,
    _bottle,
    _can,
    _jar,
    _pouch,
    _carton,
)


def _size(
    rng: np.random.Generator,
    room: int,
    scale: float,
    height: tuple[float, float],
    aspect: tuple[float, float],
) -> tuple[int, int]:
    """(h, w) of a product: ``height`` as fractions of the room on the shelf, ``aspect`` as w / h."""
    h = max(8, round(rng.uniform(*height) * room))
    w = round(h * rng.uniform(*aspect))
    return h, int(np.clip(w, max(6, 12 * scale), 170 * scale))


def _blank(rng: np.random.Generator, h: int, w: int, white: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A package colour and float artwork of that colour to paint on (white with probability ``white``)."""
    base = np.full(3, rng.uniform(225, 250)) if rng.random() < white else _package_colour(rng)
    albedo = np.empty((h, w, 3), np.float32)
    albedo[:] = base
    return base, albedo


def _package_colour(rng: np.random.Generator) -> np.ndarray:
    """Packaging colours: mostly saturated, some white, some near black."""
    pick = rng.random()
    if pick < 0.12:
        hsv = rng.random(), rng.uniform(0, 0.08), rng.uniform(0.85, 1.0)
    elif pick < 0.2:
        hsv = rng.random(), rng.uniform(0, 0.5), rng.uniform(0.08, 0.25)
    else:
        hsv = rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.35, 1.0)
    return np.array(colorsys.hsv_to_rgb(*hsv)) * 255


def _contrast(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """A colour that stands out on ``colour``: white, black or a different hue."""
    if rng.random() < 0.5:
        return np.full(3, 245.0) if colour.mean() < 140 else np.full(3, 20.0)
    other = _package_colour(rng)
    return other if abs(other.mean() - colour.mean()) > 40 else 255 - colour


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(c) for c in colour)  # type: ignore[return-value]


def _decorate(
    rng: np.random.Generator, albedo: np.ndarray, page: np.ndarray, band: tuple[int, int], base: np.ndarray
) -> None:
    """Label artwork between rows ``band``: a colour band, stripes, a logo, a brand name and small print."""
    w = albedo.shape[1]
    top, bottom = band
    label = _contrast(rng, base) if rng.random() < 0.7 else base
    albedo[top:bottom] = _rgb(label)
    ink = _contrast(rng, label)
    for _ in range(int(rng.integers(0, 3))):
        y = int(rng.integers(top, max(bottom - 2, top + 1)))
        albedo[y : y + max(1, (bottom - top) // 12)] = _rgb(_contrast(rng, label))
    if rng.random() < 0.35:
        axes = max(2, int(w * rng.uniform(0.15, 0.4))), max(2, int((bottom - top) * rng.uniform(0.15, 0.35)))
        centre = int(rng.integers(0, w)), (top + bottom) // 2
        cv2.ellipse(albedo, centre, axes, 0, 0, 360, _rgb(_package_colour(rng)), -1)
    margin = max(1, w // 10)
    brand_bottom = top + round((bottom - top) * rng.uniform(0.35, 0.6))
    brand = "".join(rng.choice(list(_LETTERS), int(rng.integers(2, 8))))
    _write(rng, albedo, brand, (margin, top + 1, w - margin, brand_bottom), ink)
    _stamp_fine_print(rng, albedo, page, (margin, brand_bottom + 2, w - margin, bottom - 1), ink)


def _shade(rng: np.random.Generator, albedo: np.ndarray, round_body: bool) -> np.ndarray:
    """Light the flat artwork: cylinders darken towards their sides and catch a highlight stripe."""
    h, w = albedo.shape[:2]
    x = (np.arange(w, dtype=np.float32) + 0.5) / w
    if round_body:
        across = 0.5 + 0.5 * np.sin(np.pi * x) ** 0.6
        shine = rng.uniform(20, 90) * np.exp(-(((x - rng.uniform(0.2, 0.4)) / rng.uniform(0.04, 0.1)) ** 2))
    else:
        across = 1 + rng.uniform(-0.18, 0.18) * (x - 0.5)
        shine = np.zeros(w, np.float32)
    down = 1 + rng.uniform(-0.2, 0.1) * np.linspace(-0.5, 0.5, h, dtype=np.float32)
    lit = albedo * (down[:, None] * across[None, :])[:, :, None] + shine[None, :, None]
    return np.clip(lit, 0, 255).astype(np.uint8)


def _rounded_rect(image: np.ndarray, box: tuple[int, int, int, int], radius: int) -> None:
    x0, y0, x1, y1 = box
    cv2.rectangle(image, (x0 + radius, y0), (x1 - radius, y1), 1, -1)
    cv2.rectangle(image, (x0, y0 + radius), (x1, y1 - radius), 1, -1)
    for cx in (x0 + radius, x1 - radius):
        for cy in (y0 + radius, y1 - radius):
            cv2.circle(image, (cx, cy), radius, 1, -1)


# --- print: brand names, prices and small print ---


def _fine_print_page(rng: np.random.Generator) -> np.ndarray:
    """A page of tiny word-like marks; products and tags copy windows of it as their small print."""
    page = np.zeros((96, 256), np.uint8)
    for y in range(1, page.shape[0] - 2, 4):
        runs = rng.integers(1, 9, 64)
        runs[1::2] = rng.integers(1, 3, 32)  # the spaces between words
        row = np.repeat(np.arange(64) % 2 == 0, runs)[: page.shape[1]]
        page[y : y + 2, : row.size] = row
    return page


def _stamp_fine_print(
    rng: np.random.Generator, albedo: np.ndarray, page: np.ndarray, box: tuple[int, int, int, int], ink
) -> None:
    x0, y0, x1, y1 = (max(v, 0) for v in box)
    w, h = min(x1 - x0, page.shape[1]), min(y1 - y0, page.shape[0])
    if w < 3 or h < 3:
        return
    px, py = rng.integers(0, page.shape[1] - w + 1), rng.integers(0, page.shape[0] - h + 1)
    albedo[y0 : y0 + h, x0 : x0 + w][page[py : py + h, px : px + w].astype(bool)] = _rgb(ink)


def _write(
    rng: np.random.Generator, albedo: np.ndarray, text: str, box: tuple[int, int, int, int], ink
) -> None:
    """Fit ``text`` into ``box``; a box too small to read gets a bar, as a distant word would look."""
    x0, y0, x1, y1 = box
    if x1 - x0 < 4 or y1 - y0 < 3:
        return
    font, thickness = _FONTS[rng.integers(len(_FONTS))], int(rng.integers(1, 3))
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, thickness)
    size = min((x1 - x0) / tw, (y1 - y0) / th)
    if size * th < 6:
        cv2.rectangle(albedo, (x0, y0 + (y1 - y0) // 3), (x1 - 1, y1 - 1 - (y1 - y0) // 3), _rgb(ink), -1)
        return
    origin = x0 + round((x1 - x0 - size * tw) / 2), y1 - round((y1 - y0 - size * th) / 2)
    cv2.putText(albedo, text, origin, font, size, _rgb(ink), thickness, cv2.LINE_AA)


@dataclass(frozen=True)
class _TagStyle:
    """One store's tag design: paper and ink colours, header band, how far tags hang below the edge."""

    paper: tuple[int, int, int]
    ink: tuple[int, int, int]
    header: tuple[int, int, int] | None
    fill: float  # tag height as a fraction of the edge strip (above 1: it hangs below the strip)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _TagStyle:
        papers = [(248, 248, 245), (250, 242, 170), (255, 214, 40), (255, 160, 50), (235, 245, 235)]
        paper = papers[rng.choice(len(papers), p=[0.45, 0.2, 0.15, 0.1, 0.1])]
        ink = (200, 20, 20) if paper == (255, 214, 40) and rng.random() < 0.5 else (25, 25, 30)  # promo
        headers = [(200, 30, 30), (30, 80, 170), (30, 130, 60), (240, 200, 30)]
        header = headers[rng.integers(len(headers))] if rng.random() < 0.4 else None
        fill = rng.uniform(0.6, 0.9) if rng.random() < 0.75 else rng.uniform(1.1, 1.4)
        return cls(paper, ink, header, fill)


# --- the camera ---


@dataclass(frozen=True)
class _Lighting:
    """What a camera does to a scene: exposure, white balance, uneven light, blur and sensor noise."""

    gain: float
    red: float
    green: float
    blue: float
    ramp: float  # strength of a linear brightness gradient (a side light)
    ramp_angle: float
    vignette: float
    blur: float  # gaussian sigma in pixels; below 0.3 means none
    noise: float  # sigma in grey levels

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _Lighting:
        red, green, blue = np.exp(rng.normal(0, 0.06, 3)).tolist()
        return cls(
            gain=rng.uniform(0.7, 1.2),
            red=red,
            green=green,
            blue=blue,
            ramp=rng.uniform(0, 0.35),
            ramp_angle=rng.uniform(0, 2 * math.pi),
            vignette=rng.uniform(0, 0.4),
            blur=rng.uniform(0.3, 1.2) if rng.random() < 0.4 else 0.0,
            noise=rng.uniform(1, 7),
        )

    def nudged(self, rng: np.random.Generator) -> _Lighting:
        """A nearby lighting: where the light has drifted to a couple of seconds later."""
        values = np.array(astuple(self)) + rng.uniform(-1, 1, 9) * np.array(astuple(_DRIFT_STEP))
        return _Lighting(*np.clip(values, astuple(_LIGHTING_MIN), astuple(_LIGHTING_MAX)).tolist())

    @staticmethod
    def blend(a: _Lighting, b: _Lighting, weight: float) -> _Lighting:
        return _Lighting(*(x + (y - x) * weight for x, y in zip(astuple(a), astuple(b), strict=True)))


_DRIFT_STEP = _Lighting(0.06, 0.015, 0.015, 0.015, 0.05, 0.3, 0.04, 0.15, 0.8)
_LIGHTING_MIN = _Lighting(0.5, 0.8, 0.8, 0.8, 0.0, -math.inf, 0.0, 0.0, 0.5)
_LIGHTING_MAX = _Lighting(1.4, 1.25, 1.25, 1.25, 0.5, math.inf, 0.5, 1.5, 10.0)


class _DriftingLighting:
    """Lighting that wanders smoothly: keyframes a few seconds apart, eased in between."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._period = rng.uniform(45, 150)  # frames between keyframes
        self._keys = [_Lighting.sample(rng)]

    def at(self, t: int) -> _Lighting:
        k, frac = divmod(t / self._period, 1.0)
        while len(self._keys) < int(k) + 2:
            self._keys.append(self._keys[-1].nudged(self._rng))
        return _Lighting.blend(self._keys[int(k)], self._keys[int(k) + 1], frac * frac * (3 - 2 * frac))


def _photograph(image: np.ndarray, lighting: _Lighting, rng: np.random.Generator) -> np.ndarray:
    """Apply ``lighting`` to a rendered image (the mask is untouched: a camera does not move edges)."""
    height, width = image.shape[:2]
    if lighting.blur >= 0.3:
        image = cv2.GaussianBlur(image, (0, 0), lighting.blur)
    v, u = np.mgrid[0:1:9j, 0:1:16j].astype(np.float32)
    slope = (u - 0.5) * math.cos(lighting.ramp_angle) + (v - 0.5) * math.sin(lighting.ramp_angle)
    falloff = 1 - lighting.vignette * 2 * ((u - 0.5) ** 2 + (v - 0.5) ** 2)
    coarse = (lighting.gain * (1 + 2 * lighting.ramp * slope) * falloff)[:, :, None]
    coarse = coarse * np.array([lighting.red, lighting.green, lighting.blue], np.float32)
    light = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)  # smooth, [H, W, 3]
    out = cv2.multiply(image.astype(np.float32), light)
    out += cv2.LUT(rng.integers(0, 256, out.shape, dtype=np.uint8), _GAUSS_LUT * np.float32(lighting.noise))
    return np.clip(out, 0, 255, out=out).astype(np.uint8)
