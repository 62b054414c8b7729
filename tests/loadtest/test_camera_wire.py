"""A camera counts the tensor bytes its requests report (the JPEG wire's figures in a load test)."""

import gevent
import numpy as np

from loadtest.camera import CameraStream

FRAMES = [np.zeros((4, 4, 3), np.uint8)]


def test_the_bytes_each_completed_frame_reports_are_added_up():
    def infer(frame: np.ndarray) -> tuple[int, int]:
        gevent.sleep(0.002)
        return 1000, 40

    counters = CameraStream(infer, FRAMES, fps=50, window=2).run(duration_s=0.5)
    assert counters.completed > 0
    assert (counters.bytes_sent, counters.bytes_received) == (
        1000 * counters.completed,
        40 * counters.completed,
    )


def test_failed_frames_and_silent_servers_add_no_bytes():
    calls = {"n": 0}

    def infer(frame: np.ndarray) -> tuple[int, int] | None:
        calls["n"] += 1
        if calls["n"] % 2:
            raise RuntimeError("server error")
        return None  # a caller that does not count bytes

    counters = CameraStream(infer, FRAMES, fps=50, window=1).run(duration_s=0.3)
    assert counters.failed > 0 and counters.completed > 0
    assert counters.bytes_sent == counters.bytes_received == 0
