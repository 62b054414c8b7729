"""The camera's pacing logic, against a simulated server (a gevent sleep standing in for inference)."""

import time

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
    assert max(counters.latencies_s) < 0.25  # a few service times at worst on a busy machine, no backlog


def test_a_slow_server_causes_counted_drops_not_a_queue():
    # 50 frames/s offered, one request in flight, 50 ms each: the server can take ~20 frames/s.
    counters = CameraStream(simulated_server(0.05), FRAMES, fps=50, window=1).run(duration_s=1.0)
    assert 15 <= counters.completed <= 21
    assert counters.dropped >= 25
    assert counters.dropped - counters.dropped_late >= 20  # the window was full: the server's doing
    assert counters.sent == counters.completed + counters.failed
    # A queue would grow to ~30 frames x 50 ms by the end; latency stays near one service time.
    assert max(counters.latencies_s) < 0.3


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


def test_frames_that_wait_for_a_late_camera_go_out_from_its_buffer_until_it_overflows():
    camera = CameraStream(simulated_server(0.001), FRAMES, fps=50, window=4)

    def hog_the_loop():  # the load generator's CPU busy elsewhere: no greenlet runs for 0.2 s
        gevent.sleep(0.3)
        busy_until = time.perf_counter() + 0.2
        while time.perf_counter() < busy_until:
            pass

    hog = gevent.spawn(hog_the_loop)
    counters = camera.run(duration_s=1.0)
    hog.join()
    # 20 ms ticks: ~10 frames came during the stall; the 2-frame capture buffer kept the last ones.
    assert counters.dropped_late >= 6
    assert counters.buffered >= 2  # those went out late, not dropped
    assert counters.dropped == counters.dropped_late  # the server never filled the window
    assert max(counters.latencies_s) >= 0.03  # counted from capture, not from sending


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


def test_with_a_lookahead_fewer_keyframes_are_requests_and_carried_frames_match_the_truth():
    from clients.results import Segmentation
    from clients.temporal import ReuseMode, ReuseSettings
    from datagen.shelves import render_pan_frames
    from loadtest.camera import CameraReuse, Reply

    scenes = list(render_pan_frames(3, 30, 96, 160, pixels_per_frame=6.0))  # 3.75 % new per frame
    views = [scene.image for scene in scenes]
    truth = {id(scene.image): scene.mask for scene in scenes}

    def infer(frame):
        gevent.sleep(0.01)
        return Reply(100, 10, Segmentation(truth[id(frame)]))

    sent = {}
    for lookahead in (0, 4):
        reuse = CameraReuse(ReuseSettings(ReuseMode.AUTO, lookahead=lookahead), views)
        counters = CameraStream(infer, views, fps=30, window=2, reuse=reuse).run(duration_s=1.0)
        assert counters.dropped == 0 and counters.failed == 0
        assert counters.completed == counters.sent + counters.propagated  # every frame answered
        sent[lookahead] = counters.sent / counters.completed
    assert sent[4] < sent[0]  # a keyframe at most 5 frames apart instead of every other frame

    # The carried results themselves: what came into view is taken from the next keyframe.
    reuse = CameraReuse(ReuseSettings(ReuseMode.AUTO, lookahead=4), views)
    carriers, keyframes = [], []
    for index in range(12):
        plan = reuse.plan(index)
        if plan.keyframe:
            keyframes.append(index)
            reuse.sending(plan).set(Segmentation(scenes[index].mask))
        else:
            carriers.append((index, gevent.spawn(reuse.carrier(plan))))
    reuse.close()
    agreement = [(task.get(timeout=5).mask == scenes[index].mask).mean() for index, task in carriers]
    assert max(np.diff(keyframes)) <= 5
    assert min(agreement) > 0.98
