"""The detector's targets, loss, decoding head and exported graph (ONNX Runtime and OpenVINO)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from training.detection.model import STRIDE, CenterNetDecode, Detector, DetectorSpec
from training.detection.parity import agreement
from training.detection.targets import build_targets, detection_loss, giou_loss

HEIGHT, WIDTH = 64, 96
TINY = DetectorSpec(widths=(8, 8, 16, 16), depths=(1, 1, 1, 1), stem=8, neck=8)


def test_targets_peak_once_per_box_at_its_centre_cell() -> None:
    boxes = np.array([[8, 8, 40, 48], [60, 10, 80, 30]], np.float32)
    heat, box_target, weight = build_targets(boxes, np.array([0, 2]), 3, HEIGHT, WIDTH)
    assert heat.shape == (3, HEIGHT // STRIDE, WIDTH // STRIDE)
    assert (heat == 1).sum() == 2
    assert (
        heat[0, int(28 // STRIDE), int(24 // STRIDE)] == 1
        and heat[2, int(20 // STRIDE), int(70 // STRIDE)] == 1
    )
    assert heat[1].max() == 0  # no box of class 1
    cells = weight > 0
    targets = {tuple(box_target[:, y, x]) for y, x in zip(*np.nonzero(cells), strict=True)}
    assert targets == {tuple(b) for b in boxes}


def test_giou_loss_is_zero_for_the_exact_box_and_grows_when_wrong() -> None:
    boxes = np.array([[8, 8, 40, 48]], np.float32)
    _, box_target, weight = build_targets(boxes, np.array([0]), 1, HEIGHT, WIDTH)
    h, w = weight.shape
    ys, xs = (np.mgrid[0:h, 0:w] + 0.5) * STRIDE
    exact = np.stack([xs - 8, ys - 8, 40 - xs, 48 - ys]).astype(np.float32)  # distances to the true sides
    args = (torch.from_numpy(box_target)[None], torch.from_numpy(weight)[None], STRIDE)
    assert giou_loss(torch.from_numpy(exact)[None], *args).item() == pytest.approx(0, abs=1e-5)
    assert giou_loss(torch.from_numpy(exact * 1.5)[None], *args).item() > 0.1


def test_loss_backpropagates_through_the_detector() -> None:
    model = Detector(3, TINY)
    heat, ltrb = model(torch.randn(2, 3, HEIGHT, WIDTH))
    assert heat.shape == (2, 3, HEIGHT // STRIDE, WIDTH // STRIDE) and ltrb.shape == (
        2,
        4,
        HEIGHT // STRIDE,
        WIDTH // STRIDE,
    )
    targets = [build_targets(np.array([[8, 8, 40, 48]], np.float32), np.array([1]), 3, HEIGHT, WIDTH)] * 2
    stacked = [torch.from_numpy(np.stack([t[i] for t in targets])) for i in range(3)]
    loss, parts = detection_loss(heat, ltrb, *stacked)
    loss.backward()
    assert loss.item() > 0 and parts["heat"] > 0 and parts["box"] > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _maps(peaks: list[tuple[int, int, int, float]], sizes: tuple[float, float, float, float] = (4, 6, 8, 10)):
    """Heatmap logits with the given (class, row, col, probability) peaks, constant distances."""
    h, w = HEIGHT // STRIDE, WIDTH // STRIDE
    heat = torch.full((1, 3, h, w), -20.0)
    for cls, y, x, p in peaks:
        heat[0, cls, y, x] = float(np.log(p / (1 - p)))
    ltrb = torch.tensor(sizes, dtype=torch.float32).view(1, 4, 1, 1).expand(1, 4, h, w).clone()
    return heat, ltrb


def test_decode_returns_peaks_sorted_and_padded_in_the_contract_layout() -> None:
    head = CenterNetDecode(HEIGHT, WIDTH, max_detections=100)
    boxes, scores, classes, count = head(_maps([(0, 2, 3, 0.9), (2, 10, 20, 0.6), (1, 5, 5, 0.04)]))
    assert boxes.shape == (1, 100, 4) and scores.shape == (1, 100)
    assert classes.dtype == torch.int32 and count.dtype == torch.int32 and count.tolist() == [[2]]
    assert scores[0, :2].tolist() == pytest.approx([0.9, 0.6], abs=1e-6)
    assert classes[0, :2].tolist() == [0, 2]
    cx, cy = (3 + 0.5) * STRIDE, (2 + 0.5) * STRIDE
    assert boxes[0, 0].tolist() == pytest.approx([cx - 4, cy - 6, cx + 8, cy + 10])
    assert scores[0, 2:].abs().sum() == 0 and boxes[0, 2:].abs().sum() == 0  # padding (0.04 < min score)


def test_decode_keeps_only_local_maxima() -> None:
    head = CenterNetDecode(HEIGHT, WIDTH)
    _, scores, _, count = head(_maps([(0, 5, 5, 0.9), (0, 5, 6, 0.8), (1, 5, 6, 0.7)]))
    assert count.item() == 1 and scores[0, 0].item() == pytest.approx(0.9, abs=1e-6)


def test_decode_refuses_inputs_with_fewer_cells_than_k() -> None:
    with pytest.raises(ValueError, match="fewer than K=100"):
        CenterNetDecode(32, 32, max_detections=100)


def test_exported_graph_runs_in_onnx_runtime_and_openvino_with_a_dynamic_batch(tmp_path, monkeypatch) -> None:
    from training.export import ServingModel, engine_predictor

    torch.manual_seed(0)
    model = Detector(3, TINY).eval()
    with torch.no_grad():  # a peaky random model, so there is something to compare
        model.heat[-1].bias.fill_(0.0)
    head = CenterNetDecode(HEIGHT, WIDTH, max_detections=100)
    serving = ServingModel(model, head).eval()
    path = tmp_path / "model.onnx"
    names = ["boxes", "scores", "class_ids", "num_detections"]
    torch.onnx.export(
        serving,
        (torch.zeros(1, HEIGHT, WIDTH, 3, dtype=torch.uint8),),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["images"],
        output_names=names,
        dynamic_axes={n: {0: "batch"} for n in ["images", *names]},
    )
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "NonMaxSuppression" not in ops and "Loop" not in ops and {"TopK", "MaxPool"} <= ops
    images = np.random.default_rng(0).integers(0, 256, (3, HEIGHT, WIDTH, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = {n: t.numpy() for n, t in zip(names, serving(torch.from_numpy(images)), strict=True)}
    for engine in ("onnxruntime", "openvino"):
        got = engine_predictor(path, engine)(images)
        assert got["boxes"].shape == (3, 100, 4) and got["num_detections"].shape == (3, 1)
        agreeing, units = agreement(expected, got)
        assert units > 0 and agreeing / units >= (1.0 if engine == "onnxruntime" else 0.9), engine
    np.testing.assert_allclose(
        engine_predictor(path, "onnxruntime")(images)["scores"], expected["scores"], atol=1e-5
    )


def test_agreement_counts_missing_and_extra_detections() -> None:
    def outputs(rows):
        boxes = np.zeros((1, 5, 4), np.float32)
        scores, classes = np.zeros((1, 5), np.float32), np.zeros((1, 5), np.int32)
        for i, (box, score, cls) in enumerate(rows):
            boxes[0, i], scores[0, i], classes[0, i] = box, score, cls
        return {
            "boxes": boxes,
            "scores": scores,
            "class_ids": classes,
            "num_detections": np.array([[len(rows)]]),
        }

    a = outputs([((0, 0, 10, 10), 0.9, 0), ((20, 20, 30, 30), 0.8, 1)])
    assert agreement(a, a) == (4, 4)
    b = outputs([((0, 0, 10, 10), 0.9, 0), ((20, 20, 30, 30), 0.8, 2)])  # second one: another class
    assert agreement(a, b) == (2, 4)
    assert agreement(outputs([]), outputs([])) == (1, 1)  # both see nothing: they agree
