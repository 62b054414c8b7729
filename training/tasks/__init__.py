"""Task adapters: everything training must know about one task (segmentation, detection,
classification), behind one interface, so that the pipeline stays ONE pipeline.

:mod:`training.pipeline` runs data -> train -> export + parity -> evaluate -> gate -> publish for
every model. It reads the task from the config (checked against the model's ``config.pbtxt``),
asks :func:`adapter_for` for the task's adapter and calls only the methods below. A new task is a
new module ``training/tasks/<task>.py`` that subclasses :class:`TaskAdapter` and calls
:func:`register` at import time (as smp's ``create_model`` looks architectures up in a registry).

What an adapter must provide, in the order the pipeline uses it
--------------------------------------------------------------
Class attributes

``task``          the :class:`clients.contract.Task` it serves.
``headline``      the name of its main metric in :meth:`Evaluation.metrics` (``"miou"``, ``"map50"``,
                  ``"accuracy"``): validation during training reports it, and the gate's
                  no-regression check compares candidate and baseline on it.
``loss_spec``     a frozen dataclass with defaults: the config's ``loss:`` section (weights of the
                  task's loss terms). Unknown keys are config errors naming the file and key.
``gate_spec``     a frozen dataclass with defaults: the task's floors in the config's ``gate:``
                  section (e.g. ``min_miou``, ``min_class_iou``). The gate section's shared keys
                  (:class:`training.config.GateSpec`: parity floors, ``max_regression``,
                  ``baseline``) sit beside them in the same YAML mapping.

Methods (``config`` is :class:`training.config.PipelineConfig`, ``contract`` the model's
:class:`clients.contract.ModelContract`; images are always RGB uint8)

1. :meth:`check_config` (config): checks beyond types when the file is loaded, before anything
   runs (model names against smp/timm registries, option names). :meth:`check_contract` (config,
   contract): checks against the target model's contract (class names in gate floors against
   ``labels.txt``, crops against the input size). Both raise ``config.error(key, problem)``.
2. :meth:`build_splits` (config, contract, work_dir, progress) -> :class:`DataSplits`: train, val
   and test datasets from ``config.data`` (:class:`training.datasets.DataSpec`: ``kind``
   procedural with a ``generator`` name from ``datagen``, or ``folder`` with ``root``), plus a
   JSON-able report (sizes, skipped files with reasons). ``work_dir`` is the run directory's
   scratch space (e.g. bootstrapped labels). A dataset is any ``len()``/``[i]`` sequence of the
   task's samples; each sample has an ``image`` (RGB uint8 ``[H, W, 3]``, any size: parity reads
   it), everything else only the adapter reads.
3. :meth:`build_model` (spec, contract) -> ``torch.nn.Module``: the trainable network with random
   or local weights (``spec.encoder_weights``), taking normalised float ``[N, 3, H, W]`` (see
   :class:`training.export.ServingModel`, which adds the uint8 -> float step in the graph) and
   returning whatever the loss and :meth:`serving_head` expect. It must be rebuildable from
   ``spec`` alone: checkpoints store the spec, not the code.
4. :meth:`load_training_data` (dataset, contract, progress) -> a ``Sized`` object: the split held in
   memory at the contract's input size, as clients resize frames (read once; steps only cut
   batches from it).
5. :meth:`sample_batch` (data, augment, batch_size, rng) -> ``(images, targets)``: uint8 NHWC
   images and the matching targets, with target-aware augmentation from
   :class:`training.config.AugmentSpec` (a flip or crop moves boxes and masks with the pixels;
   :func:`photometric` touches pixels only). Draw every random number from ``rng`` (runs are
   reproducible), and only for augmentations that are enabled.
6. :meth:`loss` (config, device) -> ``callable(outputs, targets) -> scalar tensor``: ``outputs``
   is the network's output (float32), ``targets`` what :meth:`sample_batch` returned (move them
   to ``device`` inside).
7. :meth:`serving_head` (contract) -> ``torch.nn.Module``: network outputs -> the task's serving
   outputs, a tuple of tensors in ``contract.output_names`` order (argmax -> uint8 masks;
   decode + NMS -> boxes, scores, class_ids, num_detections; softmax -> probabilities). It is
   exported inside the ONNX graph: use ops ONNX, OpenVINO and TensorRT run, and keep the batch
   dimension first on every output.
8. :meth:`agreement` (reference, candidate) -> ``(agreeing, total)``: how many units (pixels,
   detections, images) of an engine's outputs match PyTorch's; both are ``{output name: array}``
   for one batch. Parity runs it for ONNX Runtime and for the served engine
   (``OnnxEngine`` of ``model_repository/onnx_runner.py`` with the cpu config's parameters).
9. :meth:`evaluate` (predict, dataset, contract, engine, out_dir, worst_k, batch_size) ->
   :class:`Evaluation`: score a predictor (uint8 NHWC -> ``{output name: array}``; a PyTorch model
   or an exported graph) on a split, as serving sees it (images resized to the input, results
   mapped back to image coordinates). With ``out_dir``, also write ``evaluation.json`` (use
   :mod:`clients.atomic`) and plots there.
10. :meth:`gate_checks` (evaluation, floors) -> list of :class:`Check`: one per floor of the
    task's ``gate_spec`` instance ``floors``. The shared checks (parity, no regression on
    ``headline``) are made by :func:`training.evaluate.gate`.
11. :meth:`card` (evaluation) -> dict: optional extra fields for the model card (default: none).

Shared helpers for adapters: :func:`photometric` (brightness/contrast jitter and JPEG round
trips, in place) and :class:`Check`. Shared tests: subclass ``AdapterTester`` from
``tests/training/adapter_testers.py`` (``tests/training/test_segmentation_adapter.py`` shows how).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import cv2
import numpy as np

from clients.contract import ModelContract, Task

if TYPE_CHECKING:
    import torch

    from training.config import AugmentSpec, ModelSpec, PipelineConfig

# uint8 [N, H, W, 3] -> {output name: array}: a PyTorch serving model or an exported graph.
Predictor = Callable[[np.ndarray], dict[str, np.ndarray]]
Outputs = dict[str, np.ndarray]


class Evaluation(Protocol):
    """What :meth:`TaskAdapter.evaluate` returns: any dataclass with these members."""

    images: int  # how many images were scored
    engine: str  # what ran the model ("onnxruntime", "openvino", "pytorch")

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat numbers: ``{"miou": 0.8, "iou/crack": 0.6}``, keys prefixed ``"<prefix>/"`` if given."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able: evaluation.json and the model card's ``evaluation``."""
        ...


@dataclass(frozen=True)
class DataSplits:
    train: Sequence[Any]
    val: Sequence[Any]
    test: Sequence[Any]
    report: dict[str, Any] = field(default_factory=dict)  # JSON-able: source, skipped files, ...


@dataclass(frozen=True)
class Check:
    """One gate check: whether it passed and a line saying what was compared."""

    ok: bool
    text: str


class TaskAdapter(ABC):
    """The per-task parts of training; see the module docstring for the contract of each method."""

    task: ClassVar[Task]
    headline: ClassVar[str]
    loss_spec: ClassVar[type]
    gate_spec: ClassVar[type]

    def check_config(self, config: PipelineConfig) -> None:  # noqa: B027
        """Config checks beyond types, at load time; the default checks nothing."""

    def check_contract(self, config: PipelineConfig, contract: ModelContract) -> None:  # noqa: B027
        """Config checks against the model's contract; the default checks nothing."""

    @abstractmethod
    def build_splits(
        self, config: PipelineConfig, contract: ModelContract, work_dir: Path, progress: Any = None
    ) -> DataSplits: ...

    @abstractmethod
    def build_model(self, spec: ModelSpec, contract: ModelContract) -> torch.nn.Module: ...

    @abstractmethod
    def load_training_data(
        self, dataset: Sequence[Any], contract: ModelContract, progress: Any = None, description: str = "load"
    ) -> Sized: ...

    @abstractmethod
    def sample_batch(
        self, data: Any, augment: AugmentSpec, batch_size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, Any]: ...

    @abstractmethod
    def loss(self, config: PipelineConfig, device: torch.device) -> Callable[[Any, Any], torch.Tensor]: ...

    @abstractmethod
    def serving_head(self, contract: ModelContract) -> torch.nn.Module: ...

    @abstractmethod
    def agreement(self, reference: Outputs, candidate: Outputs) -> tuple[int, int]: ...

    @abstractmethod
    def evaluate(
        self,
        predict: Predictor,
        dataset: Sequence[Any],
        contract: ModelContract,
        engine: str,
        out_dir: Path | None = None,
        worst_k: int = 6,
        batch_size: int = 4,
    ) -> Evaluation: ...

    @abstractmethod
    def gate_checks(self, evaluation: Any, floors: Any) -> list[Check]: ...

    def card(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        """Extra model-card fields from evaluation.json's content; none by default."""
        return {}


# ---------------------------------------------------------------------------------------- registry

_ADAPTERS: dict[Task, TaskAdapter] = {}
# Where each task's adapter lives; imported on first use, and the module registers itself.
_MODULES = {task: f"training.tasks.{task.value}" for task in Task}


def register(adapter: TaskAdapter) -> TaskAdapter:
    """Make ``adapter`` the one for its task (a module calls this at import time); returns it."""
    if not isinstance(adapter, TaskAdapter):
        raise TypeError(f"{adapter!r} is not a TaskAdapter")
    _ADAPTERS[Task(adapter.task)] = adapter
    return adapter


def adapter_for(task: Task | str) -> TaskAdapter:
    """The registered adapter of ``task``; imports ``training/tasks/<task>.py`` the first time."""
    try:
        task = Task(task)
    except ValueError:
        known = ", ".join(t.value for t in Task)
        raise ValueError(f"unknown task {task!r}; expected one of {known}") from None
    if task not in _ADAPTERS:
        try:
            importlib.import_module(_MODULES[task])
        except ModuleNotFoundError as error:
            if error.name != _MODULES[task]:
                raise
            raise ValueError(
                f"no training adapter for task {task.value!r} ({_MODULES[task]} is missing)"
            ) from None
    if task not in _ADAPTERS:
        raise ValueError(f"{_MODULES[task]} did not register an adapter for {task.value!r}")
    return _ADAPTERS[task]


# ----------------------------------------------------------------------------------------- helpers


def photometric(images: np.ndarray, augment: AugmentSpec, rng: np.random.Generator) -> None:
    """Brightness/contrast jitter and JPEG round trips of uint8 NHWC ``images``, in place.

    Pixels only: targets never change. Random numbers are drawn only for enabled jitters, so a
    config without them consumes ``rng`` as before they existed.
    """
    count = len(images)
    if augment.brightness or augment.contrast:
        gains = rng.uniform(1 - augment.brightness, 1 + augment.brightness, count)
        contrasts = rng.uniform(1 - augment.contrast, 1 + augment.contrast, count)
        for image, gain, contrast in zip(images, gains, contrasts, strict=True):
            pixels = image.astype(np.float32)
            mean = pixels.mean()
            image[...] = np.clip((pixels - mean) * contrast + mean * gain, 0, 255)
    if augment.jpeg_probability:
        chosen = rng.random(count) < augment.jpeg_probability
        qualities = rng.integers(augment.jpeg_quality[0], augment.jpeg_quality[1] + 1, count)
        for image, use, quality in zip(images, chosen, qualities, strict=True):
            if use:
                bgr = np.ascontiguousarray(image[..., ::-1])
                _, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
                image[...] = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1]
