"""The rollout run's figures: requests, failures, drops and p95 cut into before, during and after."""

from __future__ import annotations

from types import SimpleNamespace

from loadtest.rollout import parse_args, summarise, window_figures


def frame(at: float, latency_ms: float, error: str = "") -> list:
    return [at, "grpc", "shelf_segmenter frame", latency_ms, error]


def test_each_window_counts_only_what_finished_inside_it():
    requests = [frame(1.0 + i / 10, 100.0) for i in range(20)]  # 1.0 .. 2.9 s, all 100 ms
    requests += [frame(3.5, 900.0), frame(3.6, 50.0, "StatusCode.UNAVAILABLE")]
    requests += [[3.7, "POST", "POST /v1/models/{model}/videos", 30.0, ""]]
    drops = [1.5, 3.1, 3.2, 9.0]

    before = window_figures(requests, drops, 1.0, 3.0)
    during = window_figures(requests, drops, 3.0, 4.0)

    assert before["requests"] == 20 and before["failures"] == 0 and before["dropped_frames"] == 1
    assert before["drop_rate"] == round(1 / 21, 4)
    assert before["camera_latency_ms_p95"] == 100.0
    assert during["requests"] == 3 and during["failures"] == 1 and during["upload_requests"] == 1
    assert during["camera_frames"] == 2 and during["dropped_frames"] == 2
    assert during["camera_latency_ms_p95"] == 900.0  # failed frames have no latency to count


def test_frames_carried_by_temporal_reuse_are_camera_frames_but_not_requests():
    carried = [[1.0 + i / 10, "reuse", "frame carried from its keyframe", 30.0, ""] for i in range(7)]
    requests = [frame(1.05, 80.0)] + carried
    figures = window_figures(requests, [1.9], 1.0, 2.0)
    assert figures["requests"] == 1 and figures["camera_frames_inferred"] == 1
    assert figures["camera_frames"] == 8 and figures["camera_fps_total"] == 8.0
    assert figures["drop_rate"] == round(1 / 9, 4)
    assert figures["camera_latency_ms_p95"] == 80.0  # the server's latency: requests only


def test_the_summary_compares_drops_during_the_rollout_with_the_rate_before():
    requests = [frame(t / 10, 100.0) for t in range(0, 300)]  # 0 .. 29.9 s
    report = SimpleNamespace(
        started_at=10.0, seconds=10.0, ok=True, serving={"a": [2]}, to_dict=lambda: {"ok": True}
    )
    args = parse_args("--cameras 1 --fps 10 --upload-users 0 --seconds 30 --rollout-at 10 --warmup 0".split())
    server = SimpleNamespace(http_url="127.0.0.1:1")  # nobody listens: the version is left out

    calm = summarise({"requests": requests, "drops": [15.0]}, report, 0.0, args, server, 1, 2)
    assert calm["requests"] == 300 and calm["failures"] == 0 and calm["dropped_frames"] == 1
    assert calm["camera_normal_drop_rate"] == 0.0
    assert calm["verdict"] == {"zero_failures": True, "drops_within_normal_rate": True, "rollout_ok": True}

    drops = [10.0 + i / 10 for i in range(50)]  # a third of the frames dropped during the rollout
    worse = summarise({"requests": requests, "drops": drops}, report, 0.0, args, server, 1, 2)
    assert worse["verdict"]["drops_within_normal_rate"] is False
    assert set(worse["p95_ms"]) == {"before", "during", "after"}
