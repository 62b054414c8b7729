"""Data drift: do the images a model sees now (and what it answers) still look like its reference?

Torch-free, for the gateway and the ``prodseg drift`` commands. Three parts, top to bottom:

1. **Features of one sample** (:class:`Sample`): image features (brightness, contrast, blur as the
   variance of the Laplacian, colourfulness and the colour cast on its two opponent axes, width,
   height, aspect ratio, and a few principal
   components of a 16x16 thumbnail, the PCA fitted on the reference) plus output features per task,
   computed from a plain summary dict (see :func:`summarize_outputs`):

   ==============  ==================================================  ===============================
   task            summary                                              features
   ==============  ==================================================  ===============================
   segmentation    ``{"class_shares": [share of pixels per class]}``    ``share_<class>`` (numeric)
   detection       ``{"count": n, "class_ids": [id, ...]}``             ``detections`` (numeric),
                                                                        ``detected_classes`` (class mix)
   classification  ``{"class_id": i, "confidence": p}``                 ``top_confidence`` (numeric),
                                                                        ``predicted_class`` (class mix)
   ==============  ==================================================  ===============================

2. **The reference** (:class:`DriftReference`): the features of a held-out set of images and the
   model's outputs on them, saved as ``model_repository/<model>/<version>/drift_reference.json``.

3. **The tests** (:meth:`DriftReference.compare`): per numeric feature the two-sample
   Kolmogorov-Smirnov test (its p-value decides), the Wasserstein distance (in reference standard
   deviations) and a 10-bin PSI over the reference's deciles (both reported); per class mix a
   chi-square test with the image as the unit (an image's detections share one count: they are
   not independent draws). The window drifts when at least ``min_drifted`` features have a
   Bonferroni-corrected p-value below ``alpha``: with ~15 features, single features cross p < 0.05
   on undrifted data all the time, so the alarm is raised for the dataset, never for one feature's
   noise. A window with fewer than ``min_samples`` samples reports ``insufficient_data``, never a
   verdict.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
from scipy import stats

from clients.atomic import write_text
from clients.contract import Task, default_repository

REFERENCE_FILE = "drift_reference.json"
SCHEMA_VERSION = 1

IMAGE_FEATURES = (
    "brightness",
    "contrast",
    "blur",
    "colourfulness",
    "cast_red_green",
    "cast_yellow_blue",
    "width",
    "height",
    "aspect_ratio",
)
EMBEDDING_PREFIX = "embedding_pc"
THUMBNAIL_SIZE = 16
FEATURE_SIDE = 256  # image features are measured at this longer side, so blur means the same at any size
PSI_BINS = 10

# Statuses of a comparison.
OK, DRIFT, INSUFFICIENT_DATA = "ok", "drift", "insufficient_data"


# --- 1. Features of one sample ---


@dataclass(frozen=True)
class Sample:
    """The features of one request: numeric values, and class ids observed (for class mixes)."""

    numeric: dict[str, float]
    classes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def image_features(image: np.ndarray) -> dict[str, float]:
    """Photometric and size features of one RGB uint8 image (at its size as received)."""
    _check_image(image)
    height, width = image.shape[:2]
    scale = FEATURE_SIDE / max(height, width)
    small = image if scale >= 1 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    brightness, contrast = cv2.meanStdDev(grey)
    rgb = small.astype(np.float32)
    # Hasler and Suesstrunk's colourfulness: spread and mean of two opponent colour axes.
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    colourfulness = math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())
    return {
        "brightness": float(brightness[0, 0]),
        "contrast": float(contrast[0, 0]),
        "blur": float(cv2.Laplacian(grey, cv2.CV_64F).var()),  # low = blurred (or flat)
        "colourfulness": float(colourfulness),
        # The mean of each opponent axis: a white-balance cast moves these before anything else.
        "cast_red_green": float(rg.mean()),
        "cast_yellow_blue": float(yb.mean()),
        "width": float(width),
        "height": float(height),
        "aspect_ratio": width / height,
    }


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The image as a 16x16 RGB thumbnail, flattened to 768 floats in [0, 1] (the embedding's input)."""
    _check_image(image)
    small = cv2.resize(image, (THUMBNAIL_SIZE, THUMBNAIL_SIZE), interpolation=cv2.INTER_AREA)
    return small.reshape(-1).astype(np.float32) / 255.0


@dataclass(frozen=True)
class Embedding:
    """PCA of thumbnails, fitted on the reference: a cheap summary of what the scenes look like."""

    mean: np.ndarray  # [768]
    components: np.ndarray  # [k, 768], unit rows

    @classmethod
    def fit(cls, thumbnails: np.ndarray, components: int = 3) -> Embedding:
        if thumbnails.ndim != 2 or len(thumbnails) <= components:
            raise ValueError(f"PCA of {components} components needs more than {components} thumbnails")
        mean = thumbnails.mean(axis=0)
        _, _, vt = np.linalg.svd(thumbnails - mean, full_matrices=False)
        # Fix each component's sign (largest loading positive) so refits give comparable numbers.
        signs = np.sign(vt[np.arange(components), np.abs(vt[:components]).argmax(axis=1)])
        return cls(mean.astype(np.float32), (vt[:components] * signs[:, None]).astype(np.float32))

    def project(self, thumb: np.ndarray) -> dict[str, float]:
        values = self.components @ (thumb - self.mean)
        return {f"{EMBEDDING_PREFIX}{i + 1}": float(v) for i, v in enumerate(values)}


def output_features(task: Task | str, summary: Mapping, class_names: Sequence[str]) -> Sample:
    """Output features of one response from its plain summary dict (the module docstring's table)."""
    task = Task(task)
    num_classes = len(class_names)
    if task == Task.SEGMENTATION:
        shares = _require(summary, "class_shares", task)
        if len(shares) != num_classes:
            raise ValueError(f"class_shares has {len(shares)} values, the model has {num_classes} classes")
        return Sample(
            {f"share_{name}": float(share) for name, share in zip(class_names, shares, strict=True)}
        )
    if task == Task.DETECTION:
        count = int(_require(summary, "count", task))
        class_ids = tuple(int(c) for c in _require(summary, "class_ids", task))
        if len(class_ids) != count:
            raise ValueError(f"count is {count} but {len(class_ids)} class_ids were given")
        _check_class_ids(class_ids, num_classes)
        return Sample({"detections": float(count)}, {"detected_classes": class_ids})
    class_id = int(_require(summary, "class_id", task))
    _check_class_ids((class_id,), num_classes)
    confidence = float(_require(summary, "confidence", task))
    return Sample({"top_confidence": confidence}, {"predicted_class": (class_id,)})


def summarize_outputs(task: Task | str, outputs: Mapping[str, np.ndarray], num_classes: int) -> dict:
    """The summary dict of ONE image's model outputs (contract tensors without the batch dimension)."""
    task = Task(task)
    if task == Task.SEGMENTATION:
        mask = np.asarray(outputs["masks"])
        counts = np.bincount(mask.reshape(-1), minlength=num_classes)[:num_classes]
        return {"class_shares": (counts / max(mask.size, 1)).tolist()}
    if task == Task.DETECTION:
        count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
        return {"count": count, "class_ids": np.asarray(outputs["class_ids"])[:count].astype(int).tolist()}
    probabilities = np.asarray(outputs["probabilities"], dtype=np.float64)
    return {"class_id": int(probabilities.argmax()), "confidence": float(probabilities.max())}


def _require(summary: Mapping, key: str, task: Task):
    if key not in summary:
        raise ValueError(f"a {task} output summary needs {key!r}, got keys {sorted(summary)}")
    return summary[key]


def _check_class_ids(class_ids: Sequence[int], num_classes: int) -> None:
    bad = [c for c in class_ids if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class ids {bad} are outside 0..{num_classes - 1}")


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        described = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {described}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"the image is empty: {image.shape}")


# --- 2. The reference ---


@dataclass(frozen=True)
class DriftSettings:
    """How a window is judged; defaults measured in benchmarks/results/drift.json."""

    alpha: float = 0.01  # family-wise: Bonferroni divides it by the number of features tested
    min_drifted: int = 1  # features that must drift (after the correction) for the window to drift
    min_samples: int = 30  # fewer samples in a window: insufficient_data

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.min_drifted < 1 or self.min_samples < 2:
            raise ValueError("min_drifted must be >= 1 and min_samples >= 2")


@dataclass(frozen=True)
class DriftReference:
    """Reference features of one model version, and the tests of a window of samples against them."""

    model_name: str
    task: Task
    class_names: tuple[str, ...]
    embedding: Embedding
    numeric: dict[str, np.ndarray]  # feature -> reference values (one per image; embedding: half)
    class_counts: dict[str, np.ndarray]  # class-mix feature -> images per class (module docstring)
    version: int | None = None
    created: str = ""

    @classmethod
    def build(
        cls,
        model_name: str,
        task: Task | str,
        class_names: Sequence[str],
        images: Iterable[np.ndarray],
        summaries: Iterable[Mapping],
        version: int | None = None,
        components: int = 3,
    ) -> DriftReference:
        """Features of reference images and the model's summaries of them (same order, same count)."""
        task, class_names = Task(task), tuple(class_names)
        pairs = list(zip(images, summaries, strict=True))
        if len(pairs) < 20:
            raise ValueError(f"a drift reference needs at least 20 images, got {len(pairs)}")
        # The PCA is fitted on every other image and the embedding's reference values come from the
        # rest: projections of the images a PCA was fitted on spread wider than those of new images
        # (it maximises their variance), which made undrifted windows look drifted.
        embedding = Embedding.fit(np.stack([thumbnail(image) for image, _ in pairs[::2]]), components)
        partial = cls(model_name, task, class_names, embedding, {}, {}, version)
        samples = [partial.sample(image, summary) for image, summary in pairs]
        numeric = {name: np.array([s.numeric[name] for s in samples]) for name in samples[0].numeric}
        for name in numeric:
            if name.startswith(EMBEDDING_PREFIX):
                numeric[name] = numeric[name][1::2]
        class_counts = {
            name: _class_counts((s.classes[name] for s in samples), len(class_names))
            for name in samples[0].classes
        }
        created = datetime.now(UTC).isoformat(timespec="seconds")
        return cls(model_name, task, class_names, embedding, numeric, class_counts, version, created)

    @property
    def num_samples(self) -> int:
        """Reference images (the embedding's values come from half of them)."""
        return len(self.numeric["brightness"])

    @property
    def feature_names(self) -> list[str]:
        return [*self.numeric, *self.class_counts]

    def sample(self, image: np.ndarray, summary: Mapping) -> Sample:
        """Every feature of one request (about 1 ms for a 640x384 image)."""
        outputs = output_features(self.task, summary, self.class_names)
        numeric = image_features(image) | self.embedding.project(thumbnail(image)) | outputs.numeric
        return Sample(numeric, outputs.classes)

    def compare(self, samples: Sequence[Sample], settings: DriftSettings | None = None) -> dict:
        """Test a window of samples against the reference; a JSON-ready report (module docstring)."""
        settings = settings or DriftSettings()
        report = {
            "model": self.model_name,
            "version": self.version,
            "task": self.task.value,
            "samples": len(samples),
            "reference_samples": self.num_samples,
            "min_samples": settings.min_samples,
            "alpha": settings.alpha,
            "correction": "bonferroni",
            "min_drifted": settings.min_drifted,
        }
        if len(samples) < settings.min_samples:
            return report | {"status": INSUFFICIENT_DATA, "drifted_features": [], "features": {}}
        features: dict[str, dict] = {}
        for name, reference in self.numeric.items():
            features[name] = numeric_test(reference, np.array([s.numeric[name] for s in samples]))
        for name, counts in self.class_counts.items():
            window = _class_counts((s.classes[name] for s in samples), len(self.class_names))
            features[name] = class_mix_test(counts, window, self.class_names)
        tests = len(features)
        for result in features.values():
            result["p_value_corrected"] = min(1.0, result["p_value"] * tests)
            result["drifted"] = result["p_value_corrected"] < settings.alpha
        drifted = [name for name, result in features.items() if result["drifted"]]
        status = DRIFT if len(drifted) >= settings.min_drifted else OK
        return report | {
            "status": status,
            "tests": tests,
            "drifted_features": drifted,
            "drifted_share": len(drifted) / tests,
            "features": features,
        }

    # --- files ---

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "model": self.model_name,
            "version": self.version,
            "task": self.task.value,
            "class_names": list(self.class_names),
            "created": self.created,
            "samples": self.num_samples,
            "embedding": {
                "mean": _rounded(self.embedding.mean),
                "components": _rounded(self.embedding.components),
            },
            # Exact values: rounding would make a discrete feature (width, aspect ratio) differ from
            # the same value measured live, and KS would call every window drifted.
            "numeric": {name: values.tolist() for name, values in self.numeric.items()},
            "class_counts": {name: _rounded(counts) for name, counts in self.class_counts.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> DriftReference:
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"drift reference schema {data.get('schema')!r} is not {SCHEMA_VERSION}")
        try:
            embedding = Embedding(
                np.array(data["embedding"]["mean"], np.float32),
                np.array(data["embedding"]["components"], np.float32),
            )
            return cls(
                model_name=data["model"],
                task=Task(data["task"]),
                class_names=tuple(data["class_names"]),
                embedding=embedding,
                numeric={name: np.array(values, np.float64) for name, values in data["numeric"].items()},
                class_counts={
                    name: np.array(counts, np.float64) for name, counts in data["class_counts"].items()
                },
                version=data.get("version"),
                created=data.get("created", ""),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"drift reference is missing or malformed field {error}") from error

    def save(self, path: Path) -> Path:
        """Write the reference atomically (the gateway may be reading the previous one)."""
        write_text(path, json.dumps(self.to_dict(), separators=(",", ":")) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> DriftReference:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no drift reference at {path}: build one with `prodseg drift reference`"
            ) from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON: {error}") from error
        try:
            return cls.from_dict(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error


def reference_path(model_name: str, version: int, repository: Path | None = None) -> Path:
    """Where a model version's reference lives: beside its model.onnx."""
    return Path(repository or default_repository()) / model_name / str(version) / REFERENCE_FILE


# --- 3. The tests ---


def numeric_test(reference: np.ndarray, window: np.ndarray) -> dict:
    """KS (decides), Wasserstein in reference standard deviations and 10-bin PSI (reported)."""
    reference, window = np.asarray(reference, np.float64), np.asarray(window, np.float64)
    if not (np.isfinite(reference).all() and np.isfinite(window).all()):
        raise ValueError("numeric features must be finite")
    ks = stats.ks_2samp(reference, window)
    scale = reference.std() or 1.0  # a constant reference feature (e.g. width): plain units
    wasserstein = stats.wasserstein_distance(reference, window)
    return {
        "kind": "numeric",
        "test": "ks",
        "statistic": float(ks.statistic),
        "p_value": float(ks.pvalue),
        "wasserstein": float(wasserstein / scale),
        "psi": psi(reference, window),
        "reference_mean": float(reference.mean()),
        "window_mean": float(window.mean()),
    }


def psi(reference: np.ndarray, window: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index over the reference's quantile bins (0.1 moderate, 0.25 large shift)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    actual = np.bincount(np.searchsorted(edges, window, side="right"), minlength=len(edges) + 1)
    # A floor on empty bins keeps the log finite; 1e-4 is the usual choice.
    p = np.maximum(expected / len(reference), 1e-4)
    q = np.maximum(actual / len(window), 1e-4)
    return float(np.sum((q - p) * np.log(q / p)))


def class_mix_test(
    reference_counts: np.ndarray, window_counts: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Chi-square test of homogeneity: are classes mixed in the window as in the reference?"""
    reference_counts, window_counts = np.asarray(reference_counts), np.asarray(window_counts)
    result = {
        "kind": "class_mix",
        "test": "chi2",
        "reference_share": _shares(reference_counts, class_names),
        "window_share": _shares(window_counts, class_names),
    }
    table = _pool_rare_classes(np.vstack([reference_counts, window_counts]).astype(np.float64))
    if table.shape[1] < 2 or window_counts.sum() == 0 or reference_counts.sum() == 0:
        # One class only (or nothing observed): no mix to compare; an empty window is not evidence.
        return result | {"statistic": 0.0, "p_value": 1.0}
    chi2 = stats.chi2_contingency(table, correction=False)
    return result | {"statistic": float(chi2.statistic), "p_value": float(chi2.pvalue)}


def _pool_rare_classes(table: np.ndarray, min_expected: float = 5.0) -> np.ndarray:
    """Merge classes whose expected window count is below 5 into one column (chi-square's validity)."""
    table = table[:, table.sum(axis=0) > 0]
    expected = table.sum(axis=0) * table[1].sum() / table.sum()
    rare = expected < min_expected
    if rare.sum() >= 1 and (~rare).sum() >= 1:
        table = np.column_stack([table[:, ~rare], table[:, rare].sum(axis=1)])
    return table


def _shares(counts: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    total = max(int(counts.sum()), 1)
    return {name: float(count) / total for name, count in zip(class_names, counts, strict=True)}


def _class_counts(observations: Iterable[tuple[int, ...]], num_classes: int) -> np.ndarray:
    """Class mix with the IMAGE as the unit: each image adds 1, shared among its detections.

    Detections of one image are not independent (one scene, one camera), so counting each as a
    draw overstates the sample: on held-out face scenes the per-detection chi-square flagged an
    undrifted window. Shares per image make the test conservative instead.
    """
    counts = np.zeros(num_classes, np.float64)
    for class_ids in observations:
        if class_ids:
            np.add.at(counts, list(class_ids), 1.0 / len(class_ids))
    return counts


def _rounded(values: np.ndarray) -> list:
    """Six significant digits for the PCA's parameters, so the file stays small."""
    return np.vectorize(lambda v: float(f"{v:.6g}"), otypes=[float])(np.asarray(values, np.float64)).tolist()
