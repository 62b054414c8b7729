"""The camera's pacing logic, against a simulated server (a gevent sleep standing in for inference)."""

import gevent
import numpy as np
import pytest

from loadtest.camera import CameraStream

FRAMES = [np.zeros((4, 4, 3), np.uint8)]


def simulated_server(seconds_per_frame: float, fail_every: int = 0):
    calls = {"n": 0}

    def infer(frame):
        calls["n"] += 1
        gevent.sleep(seconds_per_frame)
        if fail_every and calls["n"] % fail_every == 0:
            raise RuntimeError("server error")

    return infer


def test_a_fast_server_gets_every_frame_at_the_target_rate():
    counters = CameraStream(simulated_server(0.005), FRAMES, fps=50, window=2).run(duration_s=1.0)
    assert counters.dropped == 0
    assert 45 <= counters.completed <= 51
    assert max(counters.latencies_s) < 0.05


def test_a_slow_server_causes_counted_drops_not_a_queue():
    # 50 frames/s offered, one request in flight, 50 ms each: the server can take ~20 frames/s.
    counters = CameraStream(simulated_server(0.05), FRAMES, fps=50, window=1).run(duration_s=1.0)
    assert 15 <= counters.completed <= 21
    assert counters.dropped >= 25
    assert counters.sent == counters.completed + counters.failed
    assert max(counters.latencies_s) < 0.1  # latency stays one service time: nothing queued up


def test_failures_are_counted_and_reported():
    results = []
    camera = CameraStream(
        simulated_server(0.001, fail_every=2),
        FRAMES,
        fps=40,
        window=2,
        on_result=lambda latency, error: results.append(error),
    )
    counters = camera.run(duration_s=0.5)
    assert counters.failed > 0 and counters.completed > 0
    assert sum(error is not None for error in results) == counters.failed


def test_should_stop_ends_the_stream_after_frames_in_flight():
    stop = {"now": False}
    gevent.spawn_later(0.3, stop.__setitem__, "now", True)
    counters = CameraStream(simulated_server(0.01), FRAMES, fps=30, window=2).run(
        should_stop=lambda: stop["now"]
    )
    assert 5 <= counters.sent <= 11
    assert counters.sent == counters.completed


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="fps > 0"):
        CameraStream(simulated_server(0), FRAMES, fps=0)


def test_with_temporal_reuse_only_keyframes_are_requests_and_every_frame_is_answered():
    from clients.results import Segmentation
    from clients.temporal import ReuseMode, ReuseSettings
    from datagen.shelves import render_pan_frames
    from loadtest.camera import CameraReuse, Reply

    views = [scene.image for scene in render_pan_frames(3, 30, 96, 160, pixels_per_frame=1.5)]
    requests = []

    def infer(frame):
        requests.append(frame)
        gevent.sleep(0.01)
        return Reply(100, 10, Segmentation(np.zeros((96, 160), np.uint8)))

    reuse = CameraReuse(ReuseSettings(ReuseMode.AUTO, max_interval=5), views)
    counters = CameraStream(infer, views, fps=30, window=1, reuse=reuse).run(duration_s=1.0)
    assert counters.dropped == 0 and counters.failed == 0
    assert counters.completed == counters.sent + counters.propagated
    # A slow pan: at most max_interval frames per keyframe, and far fewer requests than frames.
    assert counters.completed / 5 <= counters.sent <= counters.completed / 2
    assert counters.bytes_sent == 100 * counters.sent


def test_frames_carried_from_a_failed_keyframe_fail_and_the_next_frame_is_a_keyframe():
    from clients.temporal import ReuseMode, ReuseSettings
    from datagen.shelves import render_pan_frames
    from loadtest.camera import CameraReuse

    views = [scene.image for scene in render_pan_frames(3, 30, 96, 160, pixels_per_frame=1.5)]

    def infer(frame):
        gevent.sleep(0.05)
        raise RuntimeError("server error")

    reuse = CameraReuse(ReuseSettings(ReuseMode.AUTO, max_interval=8), views)
    counters = CameraStream(infer, views, fps=30, window=1, reuse=reuse).run(duration_s=0.6)
    assert counters.completed == 0
    assert counters.failed > counters.sent  # the frames waiting on a failed keyframe failed with it
    assert counters.sent >= 2  # after each failed keyframe a new one was sent
