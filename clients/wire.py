"""The JPEG wire: frames go to Triton as JPEG and segmentation masks come back as PNG.

A raw 640x384 frame is 737 KB and its class mask 246 KB; as JPEG (quality 80) and PNG they are
about 1/11 and 1/40 of that. The repository serves each image model's frames as JPEG two ways:

- on CPU (``configs/cpu.pbtxt``, the embedded server and CPU nodes) the model itself takes them: an
  optional input ``jpeg`` beside ``images`` and, for a segmentation, an output ``masks_png``
  (``clients.contract``); its runner decodes, infers and encodes in one process, so a JPEG frame
  costs the server what a raw one does (``benchmarks/results/wire_experiments.json``);
- everywhere, the ensemble ``<model>_jpeg`` (``model_repository/<model>_jpeg/config.pbtxt``), which
  GPU nodes serve with nvJPEG and TensorRT::

    jpeg UINT8 [N, L] -> jpeg_decoder -> images -> <model> -> masks -> mask_encoder -> masks_png BYTES [N, 1]

  On CPU its ``configs/cpu.pbtxt`` runs the same three steps in one python model
  (``model_repository/jpeg_wire.py``, the model called through BLS) for clients that call it by name.

``jpeg_route`` is where the SDK and the load test send JPEG frames: where Triton serves
``<model>_jpeg``, to the model itself when its metadata lists the ``jpeg`` input, else to the
ensemble. The tensors are the same either way.

Detectors and classifiers skip the mask encoder: their outputs are small and come back as they are.
``jpeg_decoder`` and ``mask_encoder`` are shared by every model. None of these is a model users
call: their configs carry ``task: "codec"`` (the two steps) or ``task: "jpeg_wire"`` with
``serves: "<model>"`` (the ensembles), and ``clients.repository.discover`` lists them as
companions of the models they serve, never as models.

Each row of ``jpeg`` is one JPEG, zero-padded to the longest of its request (JPEG decoders stop at
the end-of-image marker); the SDK resizes frames to the model's input size before encoding, so the
server only decodes. A frame that does not decode or is truncated fails its own request only.

Versions: each step of the ensemble runs ``model_version: -1``, the newest version Triton serves. A
request that pins a version (an A/B test's split, ``version=``) therefore goes as JPEG only where the
model itself takes it, with the version, and raw otherwise (``TritonModelClient``); over the ensemble
the SDK reports the version ``-1`` resolves to, over the model the version that ran.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import NamedTuple

import cv2
import numpy as np
from tritonclient.grpc import model_config_pb2

# JPEG_INPUT, PNG_MASKS: the wire's tensors, whose home is the model contract (a model may take them).
from clients.contract import JPEG_INPUT, PNG_MASKS, ModelContract, Task
from clients.images import imdecode_rgb
from clients.masks import decode_mask_png

JPEG_WIRE_SUFFIX = "_jpeg"
# The highest quality of those measured whose frames are <= 1/10 of the raw bytes on the demo video
# (90 is 1/8), at an mIoU loss of 0.002 (benchmarks/results/wire.json); the web page encodes at 0.8.
DEFAULT_JPEG_QUALITY = 80

# Config parameter ``task`` of the helper models (companions, not models).
CODEC_TASK = "codec"  # a step shared by every ensemble: jpeg_decoder, mask_encoder
JPEG_WIRE_TASK = "jpeg_wire"  # <model>_jpeg, with SERVES_PARAMETER naming <model>
SERVES_PARAMETER = "serves"
COMPANION_TASKS = (CODEC_TASK, JPEG_WIRE_TASK)


class Wire(StrEnum):
    """How frames travel to Triton: raw pixels (the default) or JPEG through ``<model>_jpeg``."""

    RAW = "raw"
    JPEG = "jpeg"


def wire_model_name(model_name: str) -> str:
    """The ensemble serving ``model_name`` over the JPEG wire."""
    return model_name + JPEG_WIRE_SUFFIX


class JpegRoute(NamedTuple):
    """Where one model's JPEG frames go, from what Triton reports READY."""

    model: str  # the model itself (it takes ``jpeg``) or its ``<model>_jpeg`` ensemble
    direct: bool  # the model itself: its responses name the version that ran
    ready: bool  # whether that destination is served at all
    newest_version: str  # the newest READY version of the model: what the ensemble's -1 runs


def jpeg_route(
    model_name: str, ready: Iterable[tuple[str, str]], model_inputs: Iterable[str] = ()
) -> JpegRoute:
    """The route for ``model_name`` given the READY (name, version) pairs of Triton's repository
    index and the inputs its model metadata lists (empty when unknown). The wire is served when
    ``<model>_jpeg`` is READY (the server has the codecs: OpenCV, ``jpeg_decoder``, ``mask_encoder``);
    then frames go to the model itself if it takes ``jpeg``."""
    ready = list(ready)
    versions = [int(v) for name, v in ready if name == model_name and v.isdigit()]
    newest = str(max(versions)) if versions else ""
    ensemble = wire_model_name(model_name)
    served = any(name == ensemble for name, _ in ready)
    direct = served and bool(versions) and JPEG_INPUT in model_inputs
    return JpegRoute(model_name if direct else ensemble, direct, served, newest)


def jpeg_route_from_triton(model_name: str, index: dict, metadata: dict | None) -> JpegRoute:
    """``jpeg_route`` from Triton's answers as JSON: its repository index and the model's metadata
    (None when it could not be read)."""
    models = index.get("models", [])
    ready = [(m.get("name", ""), m.get("version", "")) for m in models if m.get("state") == "READY"]
    inputs = [tensor["name"] for tensor in (metadata or {}).get("inputs", [])]
    return jpeg_route(model_name, ready, inputs)


def wire_output_names(contract: ModelContract) -> tuple[str, ...]:
    """What the JPEG wire returns: the model's outputs, a segmentation's masks as PNG."""
    if contract.task == Task.SEGMENTATION:
        return (PNG_MASKS,)
    return contract.output_names


def encode_jpeg(frame: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """An RGB uint8 frame [H, W, 3] as JPEG bytes."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1..100, got {quality}")
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray | None:
    """JPEG (or PNG) bytes -> an RGB uint8 frame, or None when they do not decode."""
    return imdecode_rgb(data)


def looks_like_jpeg(data: bytes) -> bool:
    """Starts with JPEG's start-of-image marker (what the server's decoder accepts; PNG does not)."""
    return data[:2] == b"\xff\xd8"


def jpeg_rows(jpegs: list[bytes]) -> np.ndarray:
    """The ``jpeg`` tensor of one request: UINT8 [N, L], each JPEG zero-padded to the longest."""
    rows = np.zeros((len(jpegs), max(len(data) for data in jpegs)), np.uint8)
    for row, data in zip(rows, jpegs, strict=True):
        row[: len(data)] = np.frombuffer(data, np.uint8)
    return rows


def masks_from_pngs(pngs: np.ndarray) -> np.ndarray:
    """``masks_png`` BYTES [N, 1] -> the class masks UINT8 [N, H, W], bit-identical to the model's."""
    return np.stack([decode_mask_png(bytes(png)) for png in pngs.reshape(-1)])


def tensor_bytes(array: np.ndarray) -> int:
    """A tensor's bytes on the wire: BYTES elements carry a 4-byte length each (Triton's layout)."""
    if array.dtype == np.object_:
        return sum(len(element) + 4 for element in array.reshape(-1))
    return array.nbytes


def check_wire_config(config: model_config_pb2.ModelConfig, contract: ModelContract) -> str | None:
    """Why ``<model>_jpeg``'s config does not serve ``contract`` over the wire, or None when it does."""
    expected_name = wire_model_name(contract.model_name)
    if config.name != expected_name:
        return f"a JPEG wire for {contract.model_name} must be named {expected_name!r}"
    inputs = [(i.name, i.data_type, list(i.dims)) for i in config.input]
    if inputs != [(JPEG_INPUT, model_config_pb2.TYPE_UINT8, [-1])]:
        return f"expected one input {JPEG_INPUT!r} TYPE_UINT8 [-1], got {inputs}"
    outputs = [o.name for o in config.output]
    if outputs != list(wire_output_names(contract)):
        return f"expected outputs {list(wire_output_names(contract))}, got {outputs}"
    if config.max_batch_size > contract.max_batch_size:
        return f"max_batch_size {config.max_batch_size} exceeds the model's {contract.max_batch_size}"
    steps = config.ensemble_scheduling.step
    if contract.model_name not in [step.model_name for step in steps]:
        return f"no ensemble step runs {contract.model_name}"
    if any(step.model_version != -1 for step in steps):
        return "every step must run model_version -1 (the newest served): pinned versions go raw"
    return None
