import numpy as np
import pytest

from clients.evaluation import ConfusionMatrix
from clients.overlay import OverlayPainter, colorize


def test_overlay_tints_classes_and_leaves_background_alone(contract):
    frame = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0] = contract.labels.index("product")
    out = OverlayPainter(contract.labels, alpha=0.5)(frame, mask)
    assert out[1, 1].tolist() == [100, 100, 100]
    expected = (np.array(contract.labels.labels[1].color) * 0.5 + 50).astype(np.uint8)
    assert out[0, 0].tolist() == expected.tolist()
    assert colorize(mask, contract.labels)[0, 0].tolist() == list(contract.labels.labels[1].color)


def test_overlay_refuses_mismatched_sizes(contract):
    with pytest.raises(ValueError, match="differ in size"):
        OverlayPainter(contract.labels)(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2), np.uint8))


def test_miou_of_known_masks():
    truth = np.array([[0, 0, 1, 1]], np.uint8)
    predicted = np.array([[0, 1, 1, 1]], np.uint8)
    matrix = ConfusionMatrix(3)
    matrix.update(predicted, truth)
    # class 0: 1 hit / union 2; class 1: 2 hits / union 3; class 2 absent from both -> ignored
    assert matrix.iou()[:2].tolist() == pytest.approx([0.5, 2 / 3])
    assert np.isnan(matrix.iou()[2])
    assert matrix.miou() == pytest.approx((0.5 + 2 / 3) / 2)
    assert matrix.pixel_accuracy() == 0.75
