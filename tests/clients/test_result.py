import numpy as np
import pytest

from clients.result import FrameResult


def test_valid_result_reports_class_fractions():
    mask = np.array([[0, 1], [1, 3]], np.uint8)
    result = FrameResult(frame_index=4, mask=mask, timings={"infer": 0.01})
    assert result.class_fractions(4).tolist() == [0.25, 0.5, 0.0, 0.25]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frame_index": -1, "mask": np.zeros((2, 2), np.uint8)}, "frame_index"),
        ({"frame_index": 0, "mask": np.zeros((2, 2), np.int64)}, "uint8"),
        ({"frame_index": 0, "mask": np.zeros((2, 2, 1), np.uint8)}, "uint8"),
        ({"frame_index": 0, "mask": np.zeros((2, 2), np.uint8), "timings": {"infer": -1.0}}, "timings"),
    ],
)
def test_invalid_results_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FrameResult(**kwargs)
