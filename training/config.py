"""The training configuration: one YAML file -> frozen dataclasses, checked before anything runs.

A config names everything a training run needs (architecture, loss, optimiser, schedule,
augmentations, budget, data, quality gate, tracking, where to publish), so a run is reproducible from
the file alone. Errors name the file and the key (``default.yaml: model.encoder: unknown encoder
'resnet9'``); the model is never built to find out. Input size and classes are *not* configured:
they come from the target repository's contract (:class:`clients.contract.ModelContract`), and a
config may only state them to assert that they match (:meth:`PipelineConfig.check_contract`).

Relative paths in a config are relative to the working directory, as in the ``data:`` section
(:class:`training.datasets.DataSpec`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from clients.contract import ModelContract, Task
from training.datasets import DataSpec

if TYPE_CHECKING:
    from training.tasks import TaskAdapter

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A config that cannot run; the message starts with the file and the key."""


@dataclass(frozen=True)
class ModelSpec:
    """The network, read by the task's adapter (:mod:`training.tasks`). For segmentation ``arch`` is
    an smp architecture (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, ...), ``encoder`` any smp encoder or
    ``tu-<timm model>``, and ``options`` go to the smp class as keyword arguments (e.g.
    ``decoder_channels``, ``decoder_attention_type: scse``). ``encoder_weights`` is an optional local
    state-dict file (``.pt``/``.pth``/``.safetensors``): nothing is downloaded."""

    arch: str = "Unet"
    encoder: str = "tu-mobilenetv3_small_100"
    options: dict[str, Any] = field(default_factory=dict)
    encoder_weights: Path | None = None


@dataclass(frozen=True)
class OptimizerSpec:
    """AdamW."""

    lr: float = 3e-3
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class ScheduleSpec:
    """Linear warm-up over ``warmup_steps``, then cosine decay to zero at the last step."""

    warmup_steps: int = 30


@dataclass(frozen=True)
class AugmentSpec:
    """Random ``crop`` (height, width) of the model-size image, then per-crop jitter.

    ``hflip`` is a probability; ``brightness``/``contrast`` are the +- range of a multiplicative
    jitter (0 = off); ``jpeg_probability`` of the crops are JPEG-compressed at a quality drawn from
    ``jpeg_quality``: video reaches the model through H.264, whose block artefacts cost the thin
    classes (shelf_edge, price_tag) most, and JPEG's 8x8 DCT blocks are a cheap stand-in.
    """

    crop: tuple[int, int] = (192, 320)
    hflip: float = 0.5
    vflip: float = 0.0  # surfaces (cracks) have no up; shelves do, so 0 by default
    transpose: float = 0.0  # swap rows and columns (a 90-degree turn with a flip); square crops only
    brightness: float = 0.0
    contrast: float = 0.0
    jpeg_probability: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 90)


@dataclass(frozen=True)
class TrainSpec:
    """How long and how: ``epochs`` or ``steps`` (one of them), and/or ``time_budget_s``.

    An epoch is ``ceil(len(train) / batch_size)`` steps of random crops. With a time budget the
    cosine schedule is sized after timing the first steps, and again at every validation (shared
    cores slow down), so that it still ends at zero; such a run is not step-for-step reproducible.
    ``eval_every`` (steps; default: once per epoch) logs validation mIoU; ``checkpoint_every``
    (steps) writes a resumable checkpoint. ``keep_best`` names a validation metric (e.g.
    ``roc_auc``): the run then ends with the weights of its best validation on it, not the last
    step's (a run that over-fits late keeps its peak); the test split is never looked at for it.
    """

    epochs: int | None = None
    steps: int | None = None
    time_budget_s: float | None = None
    batch_size: int = 16
    seed: int = 0
    threads: int = 2
    bf16: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_every: int | None = None
    checkpoint_every: int = 100
    keep_best: str | None = None


@dataclass(frozen=True)
class Sku110kSource:
    """``data: {kind: sku110k, ...}``: SKU-110K boxes -> masks (SAM or filled boxes) -> folder dataset.

    ``annotations`` and ``images`` are relative to ``root`` when it is given (``--data-root``
    replaces it, e.g. with an Azure ML input mount). ``out`` is where the bootstrapped folder dataset
    goes (default: ``<run dir>/bootstrap``); rerunning resumes it. The split fields are those of
    :class:`training.datasets.DataSpec`.
    """

    annotations: Path
    images: Path
    kind: Literal["sku110k"] = "sku110k"
    root: Path | None = None
    labeler: Literal["sam", "box"] = "sam"
    sam_checkpoint: Path | None = None
    sam_type: str = "vit_b"
    out: Path | None = None
    box_batch: int = 64
    min_predicted_iou: float = 0.5
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def path(self, name: Literal["annotations", "images"]) -> Path:
        value: Path = getattr(self, name)
        return value if self.root is None else self.root / value


@dataclass(frozen=True)
class EvaluateSpec:
    batch_size: int = 4
    worst_k: int = 6


@dataclass(frozen=True)
class ExportSpec:
    opset: int = 17
    parity_images: int = 16  # held-out test images compared pixel by pixel, ONNX vs PyTorch
    openvino_ir: bool = False  # also write model.xml/model.bin into the published version


@dataclass(frozen=True)
class GateSpec:
    """What a model must reach to be published: the ``gate:`` section.

    Shared by every task: agreement with PyTorch of ONNX Runtime fp32 (``min_onnxruntime_agreement``)
    and of the engine the cpu config serves (``min_served_agreement``: OpenVINO, bf16 where the CPU
    has it, so a little below 1), and no regression: the ``baseline`` alias's version (the latest
    published one if the alias is unset) is evaluated on the same test split, and the candidate may
    trail it on the task's headline metric by at most ``max_regression``. The task's own floors
    (e.g. ``min_miou``, ``min_class_iou``) sit in the same YAML mapping and are parsed into
    ``floors``, an instance of the task adapter's ``gate_spec``.
    """

    min_onnxruntime_agreement: float = 0.999
    min_served_agreement: float = 0.99
    max_regression: float = 0.01
    baseline: str = "production"
    floors: Any = None


@dataclass(frozen=True)
class TrackingSpec:
    """MLflow. ``uri`` beats ``MLFLOW_TRACKING_URI`` beats ``sqlite:///<project>/out/mlflow.db``."""

    uri: str | None = None
    experiment: str | None = None  # default: the model's name


@dataclass(frozen=True)
class PublishSpec:
    """Where versions go (default: this checkout's ``model_repository/``) and which alias to move."""

    repository: Path | None = None
    model_name: str | None = None  # or the top-level model_name; one of them is required
    promote: str | None = None  # e.g. "production": promote the new version after publishing
    triton_url: str | None = None  # a running Triton (HTTP) to reload after a promotion


@dataclass(frozen=True)
class AzureSpec:
    """The Azure ML command job that runs this config (:mod:`training.azure`): a GPU cluster, a
    base image (the Python packages come from pyproject.toml), the data and the model repository as
    datastore URIs (``azureml://datastores/<name>/paths/<path>``)."""

    compute: str = "gpu-cluster"
    image: str = "mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04:latest"
    data: str = "azureml://datastores/shelves/paths/data"
    model_repository: str = "azureml://datastores/models/paths/model_repository"
    experiment: str | None = None  # default: the model's name


@dataclass(frozen=True)
class PipelineConfig:
    """A whole training config. ``task`` and the model's name (top-level ``model_name`` or
    ``publish.model_name``) are required; :func:`config_from_dict` fills ``publish.model_name`` and
    the experiment names from it. ``loss`` is the task adapter's ``loss_spec`` instance."""

    task: Literal["segmentation", "detection", "classification"] | None = None
    model_name: str | None = None
    data: DataSpec | Sku110kSource | None = None  # config_from_dict always sets it
    model: ModelSpec = field(default_factory=ModelSpec)
    input_size: tuple[int, int] | None = None  # assertion only: the contract decides
    classes: tuple[str, ...] | None = None  # assertion only: labels.txt decides
    loss: Any = None
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    train: TrainSpec = field(default_factory=lambda: TrainSpec(steps=600))
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)
    export: ExportSpec = field(default_factory=ExportSpec)
    gate: GateSpec = field(default_factory=GateSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    publish: PublishSpec = field(default_factory=PublishSpec)
    azure: AzureSpec = field(default_factory=AzureSpec)
    source: str = "<defaults>"  # the file it came from, for error messages and tracking

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")

    @property
    def adapter(self) -> TaskAdapter:
        """The task's training adapter (:mod:`training.tasks`)."""
        from training.tasks import adapter_for

        assert self.task is not None  # config_from_dict requires it
        return adapter_for(self.task)

    def contract(self) -> ModelContract:
        """The target repository's contract, checked against what this config asserts."""
        from clients.contract import default_repository

        repository = self.publish.repository or default_repository()
        assert self.publish.model_name is not None  # config_from_dict requires it
        try:
            contract = ModelContract.load(self.publish.model_name, repository)
        except (OSError, ValueError) as error:
            raise self.error("publish.repository", f"cannot read the model contract: {error}") from None
        self.check_contract(contract)
        return contract

    def check_contract(self, contract: ModelContract) -> None:
        if contract.task != self.task:
            raise self.error(
                "task", f"{self.task} but {contract.model_name}'s config.pbtxt declares {contract.task.value}"
            )
        if self.input_size is not None and tuple(self.input_size) != (contract.height, contract.width):
            raise self.error(
                "input_size",
                f"{list(self.input_size)} but {contract.model_name}'s config.pbtxt serves "
                f"{[contract.height, contract.width]} (publish to a repository with that input size)",
            )
        names = contract.labels.names
        if self.classes is not None and list(self.classes) != names:
            raise self.error("classes", f"{list(self.classes)} but labels.txt has {names}")
        self.adapter.check_contract(self, contract)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (paths as strings) for tracking and checkpoints, in the file's own layout (the
        task's gate floors beside the shared gate keys), so it loads back as the same config."""
        plain = _plain(dataclasses.asdict(self))
        gate = plain["gate"]
        plain["gate"] = {**{k: v for k, v in gate.items() if k != "floors"}, **(gate["floors"] or {})}
        return plain


def load_config(path: Path, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Read a YAML config; ``overrides`` maps dotted keys (``train.steps``) to values applied first."""
    path = Path(path)
    source = path.name
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value, source)
    return config_from_dict(raw, source)


def config_from_dict(raw: Mapping[str, Any], source: str = "<dict>") -> PipelineConfig:
    raw = dict(raw)
    sections = {}
    for name in ("data", "loss", "gate"):
        sections[name] = raw.pop(name, {}) or {}
        if not isinstance(sections[name], dict):
            raise ConfigError(f"{source}: {name}: expected a mapping")
    internal = frozenset({"data", "loss", "gate", "source"})
    config = _build(PipelineConfig, raw, source, "", internal=internal)
    if config.task is None:
        known = ", ".join(task.value for task in Task)
        raise ConfigError(f"{source}: task: required (one of {known})")
    from training.tasks import adapter_for

    adapter = adapter_for(config.task)
    config = dataclasses.replace(
        config,
        data=_data_spec(sections["data"], source),
        loss=_build(adapter.loss_spec, sections["loss"], source, "loss."),
        gate=_gate_spec(adapter.gate_spec, sections["gate"], source),
        source=source,
    )
    config = _named(config)
    _check(config)
    adapter.check_config(config)
    return config


def _gate_spec(floors_type: type, raw: dict[str, Any], source: str) -> GateSpec:
    """The shared gate keys into GateSpec, the rest into the task's floors; unknown keys name both."""
    shared = [f.name for f in dataclasses.fields(GateSpec) if f.name != "floors"]
    own = [f.name for f in dataclasses.fields(floors_type)]
    unknown = sorted(set(raw) - set(shared) - set(own))
    if unknown:
        raise ConfigError(f"{source}: gate: unknown key(s) {unknown}; known: {shared + own}")
    floors = _build(floors_type, {k: v for k, v in raw.items() if k in own}, source, "gate.")
    spec = _build(
        GateSpec, {k: v for k, v in raw.items() if k in shared}, source, "gate.", frozenset({"floors"})
    )
    return dataclasses.replace(spec, floors=floors)


def _named(config: PipelineConfig) -> PipelineConfig:
    """The model's name in every place that uses it: publish, tracking and Azure ML experiments."""
    top, published = config.model_name, config.publish.model_name
    if top and published and top != published:
        raise config.error("model_name", f"{top!r} but publish.model_name is {published!r}: give one")
    name = top or published
    if not name:
        raise config.error("model_name", "required: name the model (top level or publish.model_name)")
    return dataclasses.replace(
        config,
        model_name=name,
        publish=dataclasses.replace(config.publish, model_name=name),
        tracking=dataclasses.replace(config.tracking, experiment=config.tracking.experiment or name),
        azure=dataclasses.replace(config.azure, experiment=config.azure.experiment or name),
    )


def parse_override(text: str) -> tuple[str, Any]:
    """``train.steps=5`` -> ``("train.steps", 5)``; the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.steps=100")
    return key.strip(), yaml.safe_load(value)


# ---------------------------------------------------------------------------------------- checks


def _data_spec(data: dict[str, Any], source: str) -> DataSpec | Sku110kSource:
    if data.get("kind") == "sku110k":
        return _build(Sku110kSource, data, source, "data.")
    try:
        return DataSpec.from_dict(data)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: data: {error}") from None


def _check(config: PipelineConfig) -> None:
    """Checks that need more than types and hold for every task: ranges and combinations."""
    train, augment = config.train, config.augment
    if train.epochs is not None and train.steps is not None:
        raise config.error("train", "give epochs or steps, not both")
    if train.epochs is None and train.steps is None and train.time_budget_s is None:
        raise config.error("train", "give epochs, steps or time_budget_s")
    positive = {
        "train.epochs": train.epochs,
        "train.steps": train.steps,
        "train.time_budget_s": train.time_budget_s,
        "train.batch_size": train.batch_size,
        "train.threads": train.threads,
        "train.eval_every": train.eval_every,
        "train.checkpoint_every": train.checkpoint_every,
        "augment.crop": min(augment.crop),
        "evaluate.batch_size": config.evaluate.batch_size,
        "export.parity_images": config.export.parity_images,
    }
    for key, value in positive.items():
        if value is not None and value <= 0:
            raise config.error(key, f"must be > 0, got {value}")
    for key in ("hflip", "vflip", "transpose", "jpeg_probability"):
        if not 0 <= getattr(augment, key) <= 1:
            raise config.error(f"augment.{key}", "is a probability in [0, 1]")
    for key in ("brightness", "contrast"):
        if not 0 <= getattr(augment, key) < 1:
            raise config.error(f"augment.{key}", "is a jitter range in [0, 1)")
    low, high = augment.jpeg_quality
    if not 1 <= low <= high <= 100:
        raise config.error("augment.jpeg_quality", f"expected [low, high] within 1..100, got {[low, high]}")
    if isinstance(config.data, Sku110kSource) and config.data.labeler == "sam":
        if config.data.sam_checkpoint is None:
            raise config.error("data.sam_checkpoint", "required with labeler: sam (or use labeler: box)")


# ------------------------------------------------------------------------ dict -> dataclass


def _build(cls: type, data: Any, source: str, prefix: str, internal: frozenset[str] = frozenset()) -> Any:
    """A dataclass from a mapping: unknown keys are errors, values are checked against the hints.

    ``internal`` fields are set by the caller, never by the file."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name not in internal]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{source}: {where}: unknown key(s) {unknown}; known: {known}")
    values = {name: _coerce(hints[name], value, source, prefix + name) for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as error:  # a required key is missing
        raise ConfigError(f"{source}: {where}: {error}") from None


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _coerce(inner, value, source, key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value or {}, source, key + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {key}: expected a list, got {value!r}")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{source}: {key}: expected {len(args)} values, got {len(value)}")
        inner = args[0] if args[-1] is Ellipsis else None
        return tuple(_coerce(inner or args[i], item, source, f"{key}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, source, f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{source}: {key}: expected a path, got {value!r}")
        return Path(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key}: expected {hint.__name__}, got {value!r}")
    return value


def _set_dotted(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {key}: {part} is not a section")
        node = child
    node[leaf] = value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value
