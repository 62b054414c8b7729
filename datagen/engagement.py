"""Procedural product photos labelled high or low engagement by a documented rule, with label noise.

No engagement data (clicks, add-to-carts per product image) can be downloaded where this project
trains, so the label comes from a rule over five properties of the photo that merchandising guides
name as what makes a product image work. The generator *chooses* each property, renders a product
photo (:mod:`datagen.products`) that has it, and scores the photo from the chosen values, so the
rule is exact and known, not estimated from pixels. Each property is scaled to 0..1, 1 = engaging:

=============  ==========================================================================  ======
property       what is varied, and how it is scored                                        weight
=============  ==========================================================================  ======
framing        item size, half-width as a fraction of the short side, drawn in 0.12..0.5;    0.25
               score 1 - |size - 0.38| / 0.22, clipped (fills most of the frame, not cut off)
centring       distance of the item's centre from the image centre, 0..0.3 of the side;     0.15
               score 1 - distance / 0.3
lighting       exposure drawn log-uniform in 0.35..2.4 (1 = correct); score                 0.20
               1 - |log2 exposure| / 1.26, clipped
tidiness       distractor objects in the background, 0..10, and a plain or busy backdrop;   0.20
               score 1 - objects / 10 (x0.8 on a textured backdrop)
colourfulness  saturation of item and backdrop, 0..1; score = saturation                    0.20
=============  ==========================================================================  ======

``score`` is the weighted sum (0..1). The label is ``high_engagement`` with probability
``sigmoid((score - 0.47) / 0.025)`` (0.47 is the median score, so the classes are balanced, and
images near it are labelled either way), then ``FLIP_RATE`` (3 %) of labels
are flipped at random: real engagement is noisy. An oracle that knows ``score`` exactly reaches a
ROC AUC of about 0.94 on these labels (:func:`rule_scores`), so that is the ceiling for a model.

Classes, in label-map order: ``low_engagement`` (0), ``high_engagement`` (1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from datagen.products import PRODUCT_CLASSES, Placement, background, draw_product, photograph, sample_seed

ENGAGEMENT_CLASSES = ("low_engagement", "high_engagement")
WEIGHTS = {"framing": 0.25, "centring": 0.15, "lighting": 0.20, "tidiness": 0.20, "colourfulness": 0.20}
THRESHOLD = 0.47
TEMPERATURE = 0.025
FLIP_RATE = 0.03
BEST_SIZE, SIZE_RANGE = 0.38, (0.12, 0.5)
MAX_OFFSET = 0.3
MAX_CLUTTER = 10


@dataclass(frozen=True)
class PhotoProperties:
    """The chosen properties of one photo, in their own units."""

    size: float  # item half-width / short side
    offset: float  # distance of the item's centre from the image centre / side
    exposure: float  # light multiplier, 1 = correct
    clutter: int  # distractor objects
    busy_backdrop: bool  # a textured backdrop
    saturation: float  # 0 grey .. 1 vivid
    category: int  # index in PRODUCT_CLASSES

    @classmethod
    def sample(cls, rng: np.random.Generator) -> PhotoProperties:
        return cls(
            size=float(rng.uniform(*SIZE_RANGE)),
            offset=float(MAX_OFFSET * math.sqrt(rng.random())),
            exposure=float(math.exp(rng.uniform(math.log(0.35), math.log(2.4)))),
            clutter=int(rng.integers(0, MAX_CLUTTER + 1)),
            busy_backdrop=bool(rng.random() < 0.3),
            saturation=float(rng.random()),
            category=int(rng.integers(len(PRODUCT_CLASSES))),
        )

    def scores(self) -> dict[str, float]:
        """Each property scored 0..1 (1 = engaging), as the module docstring's table says."""
        tidiness = 1 - self.clutter / MAX_CLUTTER
        return {
            "framing": _clip01(1 - abs(self.size - BEST_SIZE) / 0.22),
            "centring": _clip01(1 - self.offset / MAX_OFFSET),
            "lighting": _clip01(1 - abs(math.log2(self.exposure)) / 1.26),
            "tidiness": tidiness * (0.8 if self.busy_backdrop else 1.0),
            "colourfulness": self.saturation,
        }

    def score(self) -> float:
        return sum(WEIGHTS[name] * value for name, value in self.scores().items())

    def probability_high(self) -> float:
        return 1 / (1 + math.exp(-(self.score() - THRESHOLD) / TEMPERATURE))


@dataclass(frozen=True, eq=False)
class EngagementImage:
    image: np.ndarray  # RGB uint8 [H, W, 3]
    label: int  # index in ENGAGEMENT_CLASSES
    score: float  # the rule's score before noise
    properties: PhotoProperties

    @property
    def class_name(self) -> str:
        return ENGAGEMENT_CLASSES[self.label]

    def to_dict(self) -> dict:
        return {"label": self.class_name, "score": round(self.score, 4), **asdict(self.properties)}


def render_engagement(seed: int, height: int = 128, width: int = 128) -> EngagementImage:
    """One product photo with sampled properties, its rule score and its noisy label."""
    rng = np.random.default_rng(seed)
    properties, label = _sample_label(rng)
    return EngagementImage(
        render_photo(properties, rng, height, width), label, properties.score(), properties
    )


def sample_label(seed: int) -> tuple[PhotoProperties, int]:
    """The properties and label :func:`render_engagement` draws for ``seed``, without rendering."""
    return _sample_label(np.random.default_rng(seed))


def _sample_label(rng: np.random.Generator) -> tuple[PhotoProperties, int]:
    properties = PhotoProperties.sample(rng)
    return properties, draw_label(properties, rng)


def draw_label(properties: PhotoProperties, rng: np.random.Generator) -> int:
    """The rule's label: Bernoulli(probability_high), then flipped with probability FLIP_RATE."""
    label = int(rng.random() < properties.probability_high())
    return 1 - label if rng.random() < FLIP_RATE else label


def render_photo(
    properties: PhotoProperties, rng: np.random.Generator, height: int, width: int
) -> np.ndarray:
    """A photo that has exactly the given properties (everything else varies as in datagen.products)."""
    short = min(height, width)
    canvas = background(
        rng,
        height,
        width,
        clutter=properties.clutter,
        saturation=properties.saturation,
        kind="texture" if properties.busy_backdrop else str(rng.choice(["solid", "gradient", "studio"])),
    )
    direction = rng.uniform(0, 2 * math.pi)
    placement = Placement(
        cx=width / 2 + math.cos(direction) * properties.offset * width,
        cy=height / 2 + math.sin(direction) * properties.offset * height,
        half_size=properties.size * short,
        angle=float(rng.normal(0, 10)),
        mirror=bool(rng.random() < 0.5),
        shear=float(rng.uniform(-0.1, 0.1)),
    )
    draw_product(rng, canvas, properties.category, placement, properties.saturation)
    return photograph(rng, canvas, exposure=properties.exposure)


def iter_engagement(count: int, seed: int, height: int = 128, width: int = 128) -> Iterator[EngagementImage]:
    for index in range(count):
        yield render_engagement(sample_seed(seed, index), height, width)


def render_engagement_set(
    count: int, seed: int, height: int = 128, width: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` images stacked: uint8 [N, H, W, 3], int64 labels [N], float rule scores [N]."""
    samples = list(iter_engagement(count, seed, height, width))
    return (
        np.stack([s.image for s in samples]),
        np.array([s.label for s in samples], dtype=np.int64),
        np.array([s.score for s in samples], dtype=np.float64),
    )


def write_image_folder(out_dir: Path, count: int, seed: int, size: int = 128) -> list[Path]:
    """``count`` images as ``out_dir/<class>/NNNNNN.jpg`` (the ImageFolder layout); returns the paths."""
    written = []
    for index, sample in enumerate(iter_engagement(count, seed, size, size)):
        path = Path(out_dir) / sample.class_name / f"{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        written.append(path)
    return written


def rule_scores(count: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The rule's scores and noisy labels of ``count`` sampled photos, without rendering them.

    The ROC AUC of these scores against these labels is the best any model can reach.
    """
    rng = np.random.default_rng(seed)
    scores, labels = [], []
    for _ in range(count):
        properties = PhotoProperties.sample(rng)
        scores.append(properties.score())
        labels.append(draw_label(properties, rng))
    return np.array(scores), np.array(labels, dtype=np.int64)


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, value))
