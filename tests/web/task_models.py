"""A model repository with a detector and a classifier whose answers are known, for the browser tests.

The real detector and classifier may have no published version yet; the pages must still be tested
drawing boxes and labels. These tiny ONNX graphs keep the real models' configs (copied, so the
contracts are theirs) and answer fixed predictions, so a test can check exactly what is drawn.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from clients.contract import default_repository

DETECTOR, CLASSIFIER = "mask_detector", "engagement_classifier"
# In model pixels (416 x 320): two boxes, labels 0 and 1; the rest of the K = 100 rows are padding.
BOXES = [([40.0, 30.0, 200.0, 150.0], 0, 0.9), ([220.0, 100.0, 380.0, 300.0], 1, 0.6)]
PROBABILITIES = [0.3, 0.7]  # low_engagement, high_engagement


def _constant_per_image(name: str, value: np.ndarray, dtype) -> list:
    """Nodes broadcasting ``value`` [1, ...] to [batch, ...] of the input ``images``."""
    from onnx import helper, numpy_helper

    rest = list(value.shape[1:])
    return [
        helper.make_node(
            "Constant", [], [f"{name}_value"], value=numpy_helper.from_array(value.astype(dtype))
        ),
        helper.make_node(
            "Constant", [], [f"{name}_rest"], value=numpy_helper.from_array(np.array(rest, np.int64))
        ),
        helper.make_node("Concat", ["batch", f"{name}_rest"], [f"{name}_shape"], axis=0),
        helper.make_node("Expand", [f"{name}_value", f"{name}_shape"], [name]),
    ]


def _graph(input_shape: list[int], outputs: dict[str, np.ndarray]) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array([1], np.int64))),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
    ]
    declared = []
    for name, value in outputs.items():
        nodes += _constant_per_image(name, value, value.dtype)
        elem = TensorProto.FLOAT if value.dtype == np.float32 else TensorProto.INT32
        declared.append(helper.make_tensor_value_info(name, elem, ["N", *value.shape[1:]]))
    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", *input_shape])
    graph = helper.make_graph(nodes, "fixed_answers", [images], declared)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def detector_onnx(k: int = 100) -> bytes:
    boxes = np.zeros((1, k, 4), np.float32)
    scores = np.zeros((1, k), np.float32)
    class_ids = np.zeros((1, k), np.int32)
    for row, (box, class_id, score) in enumerate(BOXES):
        boxes[0, row], scores[0, row], class_ids[0, row] = box, score, class_id
    count = np.array([[len(BOXES)]], np.int32)
    outputs = {"boxes": boxes, "scores": scores, "class_ids": class_ids, "num_detections": count}
    return _graph([320, 416, 3], outputs)


def classifier_onnx() -> bytes:
    return _graph([64, 64, 3], {"probabilities": np.array([PROBABILITIES], np.float32)})


def build_repository(directory: Path) -> Path:
    """``directory`` as a model repository: the real configs of the two models, fixed-answer graphs."""
    source = default_repository()
    shutil.copy2(source / "onnx_runner.py", directory / "onnx_runner.py")
    for name, onnx_bytes in ((DETECTOR, detector_onnx()), (CLASSIFIER, classifier_onnx())):
        model = directory / name
        (model / "1").mkdir(parents=True)
        shutil.copy2(source / name / "config.pbtxt", model / "config.pbtxt")
        shutil.copy2(source / name / "labels.txt", model / "labels.txt")
        shutil.copytree(source / name / "configs", model / "configs")
        (model / "model.py").symlink_to("../onnx_runner.py")
        (model / "1" / "model.py").symlink_to("../model.py")
        (model / "1" / "model.onnx").write_bytes(onnx_bytes)
    return directory
