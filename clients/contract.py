"""Model contracts: what each model of the Triton repository takes, returns, and which task it does.

``config.pbtxt`` in the model's folder is the single source for tensors: Triton enforces it at the
server, and this module parses the same file with Triton's own protobuf schema, so clients, the
gateway, training and the chart agree without repeating it. A model declares its task with a config
parameter (Triton passes it through untouched)::

    parameters [ { key: "task" value: { string_value: "detection" } } ]

Every task takes one input, ``images``: UINT8 ``[H, W, 3]`` RGB (normalisation is in the graph),
and returns fixed outputs, produced inside the exported graph so no client post-processes tensors:

=================  ===================================================================================
segmentation       ``masks`` UINT8 ``[H, W]`` class ids (binary models have 2 classes)
detection          ``boxes`` FP32 ``[K, 4]`` x1, y1, x2, y2 in model pixels, ``scores`` FP32 ``[K]``,
                   ``class_ids`` INT32 ``[K]``, ``num_detections`` INT32 ``[1]``: the first
                   ``num_detections`` rows are real, after decoding and NMS (TensorRT EfficientNMS
                   layout), the rest is padding
classification     ``probabilities`` FP32 ``[C]`` (softmax in the graph)
=================  ===================================================================================

A config may also take the frames as JPEG (the CPU configs do): an input ``jpeg`` UINT8 ``[-1]``
(one zero-padded JPEG per row, ``allow_ragged_batch``) beside ``images``, both ``optional`` since a
request sends one of them, and for a segmentation an output ``masks_png`` BYTES ``[1]``; the model
decodes and encodes in its own process (``clients/wire.py``). ``ModelContract.takes_jpeg`` says so.

The label map is ``labels.txt`` beside the config (``name #rrggbb``, line *i* = class *i*), named by
the ``label_filename`` of the output that carries class ids (``masks``, ``class_ids`` or
``probabilities``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from clients.labels import LabelMap

INPUT_NAME = "images"
JPEG_INPUT = "jpeg"  # frames as JPEG: UINT8 [N, L], one zero-padded JPEG per row
PNG_MASKS = "masks_png"  # a segmentation's masks as PNG: BYTES [N, 1]
TASK_PARAMETER = "task"


class Task(StrEnum):
    SEGMENTATION = "segmentation"
    DETECTION = "detection"
    CLASSIFICATION = "classification"


@dataclass(frozen=True)
class TensorRule:
    """One required output: name, Triton dtype and dims, where ``H``, ``W``, ``K``, ``C`` are symbols."""

    name: str
    data_type: int
    dims: tuple[str | int, ...]
    labelled: bool = False  # carries class ids / per-class values: label_filename is required here


_UINT8, _FP32, _INT32 = model_config_pb2.TYPE_UINT8, model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_INT32

OUTPUTS: dict[Task, tuple[TensorRule, ...]] = {
    Task.SEGMENTATION: (TensorRule("masks", _UINT8, ("H", "W"), labelled=True),),
    Task.DETECTION: (
        TensorRule("boxes", _FP32, ("K", 4)),
        TensorRule("scores", _FP32, ("K",)),
        TensorRule("class_ids", _INT32, ("K",), labelled=True),
        TensorRule("num_detections", _INT32, (1,)),
    ),
    Task.CLASSIFICATION: (TensorRule("probabilities", _FP32, ("C",), labelled=True),),
}


class ContractError(ValueError):
    """A model folder whose config breaks the platform's contract; the message names model and field."""


def default_repository() -> Path:
    """The repository this checkout serves; ``PRODSEG_MODEL_REPOSITORY`` points elsewhere."""
    override = os.environ.get("PRODSEG_MODEL_REPOSITORY")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "model_repository"


@dataclass(frozen=True)
class ModelContract:
    model_name: str
    task: Task
    input_name: str
    height: int
    width: int
    max_batch_size: int
    labels: LabelMap
    output_names: tuple[str, ...]
    max_detections: int = 0  # K, detection only
    takes_jpeg: bool = False  # the config also takes ``jpeg`` frames (and returns ``masks_png``)

    @classmethod
    def load(cls, model_name: str, repository: Path | None = None, config_file: str = "config.pbtxt"):
        """The contract of ``repository/model_name`` (raises ``ContractError`` naming the field)."""
        model_dir = (repository or default_repository()) / model_name
        path = model_dir / config_file
        if not path.is_file():
            raise ContractError(f"{model_name}: no {config_file} in {model_dir}")
        try:
            config = read_model_config(path)
        except text_format.ParseError as error:
            raise ContractError(f"{model_name}: {config_file} does not parse: {error}") from error
        return cls.from_config(config, model_dir)

    @classmethod
    def from_config(cls, config: model_config_pb2.ModelConfig, model_dir: Path) -> ModelContract:
        name = config.name or model_dir.name

        def fail(field: str, message: str) -> ContractError:
            return ContractError(f"{name}: {field}: {message}")

        if config.name and config.name != model_dir.name:
            raise fail("name", f"{config.name!r} differs from its folder {model_dir.name!r}")
        task_text = (
            config.parameters[TASK_PARAMETER].string_value if TASK_PARAMETER in config.parameters else ""
        )
        try:
            task = Task(task_text)
        except ValueError:
            known = ", ".join(t.value for t in Task)
            raise fail(
                "parameters.task", f"{task_text or '(missing)'} is not a task; expected one of {known}"
            ) from None
        if config.max_batch_size < 1:
            raise fail("max_batch_size", "must be >= 1: every model takes a batch dimension")
        images = [tensor for tensor in config.input if tensor.name != JPEG_INPUT]
        jpeg = [tensor for tensor in config.input if tensor.name == JPEG_INPUT]
        if len(images) != 1 or len(jpeg) > 1:
            found = [tensor.name for tensor in config.input]
            raise fail("input", f"expected {INPUT_NAME!r} (and optionally {JPEG_INPUT!r}), found {found}")
        image = images[0]
        if (
            image.name != INPUT_NAME
            or image.data_type != _UINT8
            or len(image.dims) != 3
            or image.dims[2] != 3
        ):
            raise fail("input", f"expected {INPUT_NAME!r} TYPE_UINT8 [H, W, 3], got {_describe(image)}")
        height, width = int(image.dims[0]), int(image.dims[1])
        if height < 1 or width < 1:
            raise fail("input.dims", f"need a fixed positive size, got {list(image.dims)}")

        takes_jpeg = bool(jpeg)
        if takes_jpeg and (problem := _jpeg_input_problem(jpeg[0], image)):
            raise fail(f"input {JPEG_INPUT}", problem)
        outputs = {output.name: output for output in config.output}
        if takes_jpeg and task == Task.SEGMENTATION:
            png = outputs.pop(PNG_MASKS, None)
            if png is None or png.data_type != model_config_pb2.TYPE_STRING or list(png.dims) != [1]:
                got = _describe(png) if png is not None else "none"
                raise fail(PNG_MASKS, f"taking JPEG, a segmentation returns TYPE_STRING [1], got {got}")
        rules = OUTPUTS[task]
        missing = [rule.name for rule in rules if rule.name not in outputs]
        if missing or len(outputs) != len(rules):
            expected = ", ".join(rule.name for rule in rules)
            raise fail("output", f"a {task} model returns exactly [{expected}], found {sorted(outputs)}")
        label_file = next(outputs[rule.name].label_filename for rule in rules if rule.labelled)
        if not label_file:
            labelled = next(rule.name for rule in rules if rule.labelled)
            raise fail(f"output {labelled}.label_filename", "required: it names the classes")
        try:
            labels = LabelMap.from_file(model_dir / label_file)
        except (OSError, ValueError) as error:
            raise fail("labels", str(error)) from error
        symbols = {"H": height, "W": width, "C": len(labels)}
        if task == Task.DETECTION:
            symbols["K"] = int(outputs["boxes"].dims[0]) if outputs["boxes"].dims else 0
            if symbols["K"] < 1:
                raise fail("output boxes.dims", "need a fixed K >= 1 (the maximum detections)")
        for rule in rules:
            output = outputs[rule.name]
            expected_dims = [symbols[d] if isinstance(d, str) else d for d in rule.dims]
            if output.data_type != rule.data_type or list(output.dims) != expected_dims:
                want = f"{model_config_pb2.DataType.Name(rule.data_type)} {expected_dims}"
                raise fail(f"output {rule.name}", f"expected {want}, got {_describe(output)}")
        return cls(
            model_name=name,
            task=task,
            input_name=image.name,
            height=height,
            width=width,
            max_batch_size=config.max_batch_size,
            labels=labels,
            output_names=tuple(rule.name for rule in rules),
            max_detections=symbols.get("K", 0),
            takes_jpeg=takes_jpeg,
        )

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model takes."""
        return self.height, self.width

    def to_model_input(self, frame: np.ndarray) -> np.ndarray:
        """Resize an RGB uint8 frame of any size to the model's [H, W, 3]."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 frame [H, W, 3], got {frame.dtype} {frame.shape}")
        if frame.shape[:2] == (self.height, self.width):
            return np.ascontiguousarray(frame)
        return cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA)

    def to_dict(self) -> dict:
        return {
            "name": self.model_name,
            "task": self.task.value,
            "labels": [
                {"id": label.index, "name": label.name, "color": "#{:02x}{:02x}{:02x}".format(*label.color)}
                for label in self.labels.labels
            ],
            "input_size": {"height": self.height, "width": self.width},
            "max_batch_size": self.max_batch_size,
        }


def read_model_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


CPU_CONFIG = "cpu"  # configs/<this>.pbtxt: what the embedded server and CPU nodes run


class ServedEngine(NamedTuple):
    """How the served cpu config runs a model (its ``parameters``): what parity must run too."""

    engine: str
    threads: int
    precision: str  # OpenVINO's inference precision; "": the CPU's default


def served_engine(repository: Path, model_name: str) -> ServedEngine:
    """The served cpu config's engine parameters; ONNX Runtime if it names none."""
    path = Path(repository) / model_name / "configs" / f"{CPU_CONFIG}.pbtxt"
    if not path.is_file():
        return ServedEngine("onnxruntime", 0, "")
    parameters = read_model_config(path).parameters

    def parameter(key: str, default: str) -> str:
        return parameters[key].string_value if key in parameters else default

    threads = int(parameter("openvino_threads", "0") or 0)
    return ServedEngine(parameter("engine", "onnxruntime"), threads, parameter("openvino_precision", ""))


def _jpeg_input_problem(jpeg, image) -> str | None:
    """Why a config's ``jpeg`` input does not take frames as JPEG beside ``images``, or None."""
    if jpeg.data_type != _UINT8 or list(jpeg.dims) != [-1]:
        return f"expected TYPE_UINT8 [-1], got {_describe(jpeg)}"
    if not jpeg.allow_ragged_batch:
        return "needs allow_ragged_batch: true (JPEGs of one batch differ in length)"
    if not (jpeg.optional and image.optional):
        return f"{JPEG_INPUT!r} and {INPUT_NAME!r} must both be optional: a request sends one of them"
    return None


def _describe(tensor) -> str:
    return f"{tensor.name!r} {model_config_pb2.DataType.Name(tensor.data_type)} {list(tensor.dims)}"
