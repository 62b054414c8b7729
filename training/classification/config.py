"""The classification run's config: the subset of the pipeline's YAML that classifiers use.

``training/configs/returns_classifier.yaml`` and ``engagement_classifier.yaml`` are written in the
pipeline's layout (``task``, ``data``, ``model``, ``optimizer``, ``schedule``, ``augment``,
``train``, ``gate``, ``publish``...), so ``prodseg pipeline --config`` runs them through the task
adapter, and the standalone ``python -m training.classification.train`` reads the same file here.
Unknown sections or keys are errors naming the file and key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.classification.evaluate import Floors


class ConfigError(ValueError):
    """A config that cannot run; the message names the file and the key."""


@dataclass(frozen=True)
class DataSection:
    """``kind: procedural`` renders ``generator`` (products | engagement) images: ``train``, ``val``,
    ``test`` of them from ``seed`` (train, val and test use distinct seeds). ``kind: folder`` reads
    ``root``: an ImageFolder (``<split>/<class>/`` or ``<class>/``), or a CSV file of ``image,label``
    whose images are relative to the CSV's folder; missing splits are cut by the fractions."""

    kind: str = "procedural"
    generator: str = "products"
    root: Path | None = None
    train: int = 6000
    val: int = 600
    test: int = 1000
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass(frozen=True)
class ModelSection:
    arch: str = "timm"
    encoder: str = "mobilenetv3_small_100"  # any timm classification model
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerSection:
    lr: float = 3e-3
    weight_decay: float = 0.02


@dataclass(frozen=True)
class ScheduleSection:
    warmup_steps: int = 30


@dataclass(frozen=True)
class LossSection:
    label_smoothing: float = 0.05


@dataclass(frozen=True)
class AugmentSection:
    """``crop``: the smallest (height, width) of a random crop that is resized back to the input
    (values at or above the input size turn crops off). Engagement's label depends on framing,
    lighting and colour, so its config keeps flips only."""

    crop: tuple[int, int] = (10_000, 10_000)
    hflip: float = 0.5
    brightness: float = 0.0
    contrast: float = 0.0
    jpeg_probability: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 90)


@dataclass(frozen=True)
class TrainSection:
    steps: int = 600
    time_budget_s: float | None = 300.0  # stop early at this wall time; the best checkpoint is kept
    batch_size: int = 64
    seed: int = 0
    threads: int = 2
    eval_every: int = 100


@dataclass(frozen=True)
class ExportSection:
    opset: int = 17
    parity_images: int = 64


@dataclass(frozen=True)
class GateSection(Floors):
    min_onnxruntime_agreement: float = 0.999  # top-1 agreement with PyTorch


@dataclass(frozen=True)
class PublishSection:
    repository: Path | None = None
    model_name: str = ""


@dataclass(frozen=True)
class ClassifierConfig:
    source: str
    task: str
    input_size: tuple[int, int]
    classes: tuple[str, ...]
    data: DataSection
    model: ModelSection
    optimizer: OptimizerSection
    schedule: ScheduleSection
    loss: LossSection
    augment: AugmentSection
    train: TrainSection
    export: ExportSection
    gate: GateSection
    publish: PublishSection

    @classmethod
    def load(cls, path: Path) -> ClassifierConfig:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: {error}") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<config>") -> ClassifierConfig:
        sections = {
            "data": DataSection,
            "model": ModelSection,
            "optimizer": OptimizerSection,
            "schedule": ScheduleSection,
            "loss": LossSection,
            "augment": AugmentSection,
            "train": TrainSection,
            "export": ExportSection,
            "gate": GateSection,
            "publish": PublishSection,
        }
        ignored = {"tracking", "evaluate"}  # pipeline sections this entry point does not use
        unknown = set(raw) - set(sections) - ignored - {"task", "input_size", "classes"}
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}")
        if raw.get("task") != "classification":
            raise ConfigError(f"{source}: task: expected 'classification', got {raw.get('task')!r}")
        values = {name: _section(source, name, kind, raw.get(name) or {}) for name, kind in sections.items()}
        if not values["publish"].model_name:
            raise ConfigError(f"{source}: publish.model_name is required: it names the model to publish")
        size = raw.get("input_size")
        if not (
            isinstance(size, list | tuple)
            and len(size) == 2
            and all(isinstance(v, int) and v > 0 for v in size)
        ):
            raise ConfigError(f"{source}: input_size: expected [height, width], got {size!r}")
        classes = raw.get("classes")
        if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
            raise ConfigError(f"{source}: classes: expected a list of class names, got {classes!r}")
        data = values["data"]
        if data.kind not in ("procedural", "folder"):
            raise ConfigError(f"{source}: data.kind: expected procedural or folder, got {data.kind!r}")
        if data.kind == "folder" and data.root is None:
            raise ConfigError(f"{source}: data.root is required when data.kind is folder")
        return cls(
            source=source, task="classification", input_size=tuple(size), classes=tuple(classes), **values
        )

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


def _section(source: str, name: str, kind: type, raw: dict[str, Any]) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {name}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(f"{source}: {name}: unknown key(s) {sorted(unknown)}; known: {sorted(fields)}")
    values = {}
    for key, value in raw.items():
        default = getattr(kind(), key) if key not in ("options", "min_class_f1") else {}
        if isinstance(default, tuple):
            value = tuple(value)
        elif isinstance(default, Path) or key in ("root", "repository"):
            value = Path(value) if value is not None else None
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if default is not None and value is not None and not isinstance(value, type(default)):
            raise ConfigError(f"{source}: {name}.{key}: expected {type(default).__name__}, got {value!r}")
        values[key] = value
    return kind(**values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return str(value) if isinstance(value, Path) else value
