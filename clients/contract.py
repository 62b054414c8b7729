"""The model I/O contract, read from the model repository's ``config.pbtxt``.

The config is the single source of truth: Triton enforces it at the server, and this module parses
the same file (with Triton's own protobuf schema) so clients, the gateway and training agree on
model name, tensor names, dtype and input size without repeating them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from clients.labels import LabelMap

MODEL_NAME = "shelf_segmenter"


def default_repository() -> Path:
    """The repository this checkout serves; ``PRODSEG_MODEL_REPOSITORY`` points elsewhere."""
    override = os.environ.get("PRODSEG_MODEL_REPOSITORY")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "model_repository"


@dataclass(frozen=True)
class ModelContract:
    model_name: str
    input_name: str
    output_name: str
    height: int
    width: int
    max_batch_size: int
    labels: LabelMap

    @classmethod
    def load(cls, repository: Path | None = None, model_name: str = MODEL_NAME) -> ModelContract:
        model_dir = (repository or default_repository()) / model_name
        config = read_model_config(model_dir / "config.pbtxt")
        if len(config.input) != 1 or len(config.output) != 1:
            raise ValueError(f"{model_dir}/config.pbtxt: expected one input and one output")
        image, mask = config.input[0], config.output[0]
        if image.data_type != model_config_pb2.TYPE_UINT8 or mask.data_type != model_config_pb2.TYPE_UINT8:
            raise ValueError(f"{model_dir}/config.pbtxt: inputs and outputs must be TYPE_UINT8")
        height, width, channels = image.dims
        if channels != 3 or list(mask.dims) != [height, width]:
            raise ValueError(f"{model_dir}/config.pbtxt: expected images [H, W, 3] and masks [H, W]")
        return cls(
            model_name=config.name,
            input_name=image.name,
            output_name=mask.name,
            height=height,
            width=width,
            max_batch_size=config.max_batch_size,
            labels=LabelMap.from_file(model_dir / mask.label_filename),
        )

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_model_input(self, frame: np.ndarray) -> np.ndarray:
        """Resize an RGB uint8 frame of any size to the model's [H, W, 3]."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 frame [H, W, 3], got {frame.dtype} {frame.shape}")
        if frame.shape[:2] == (self.height, self.width):
            return np.ascontiguousarray(frame)
        return cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA)

    @staticmethod
    def mask_to_frame(mask: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
        """Scale a class-id mask back to a frame's size (nearest neighbour: ids never blend)."""
        height, width = frame_shape[:2]
        if mask.shape == (height, width):
            return mask
        return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def read_model_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
