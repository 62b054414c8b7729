"""``python -m loadtest.soak``: the leak verdict on synthetic samples, and one short real soak."""

import json
import os
import subprocess
import sys

import psutil
import pytest

from loadtest.soak import (
    RSS_GROWTH_LIMIT,
    compared_windows,
    folder_usage,
    growth,
    largest_files,
    plan_from_ramp,
    role_of,
    summarise,
)

WARMUP_S = 60.0


def make_samples(rss_mb, fds=lambda t: 40, files=lambda t: 3, failures: int = 0, seconds: int = 300):
    """Samples every 10 s of one Triton, one stub, the gateway and Locust; figures as functions of t."""
    samples = []
    for t in range(0, seconds + 1, 10):
        processes = {
            name: {"rss_mb": rss_mb(t), "fds": fds(t)}
            for name in ("tritonserver", "python stub shelf_segmenter/1 #1", "gateway", "locust")
        }
        temp = {"gateway data": {"files": files(t), "bytes": 1000 * files(t)}}
        load = {"camera_frames": 30 * t, "camera_failures": failures, "dropped_frames": 0}
        samples.append({"t_s": float(t), "processes": processes, "temp": temp, "load": load})
    return samples


PROCESSES = {
    "tritonserver": {"pid": 1, "role": "tritonserver", "model": None},
    "python stub shelf_segmenter/1 #1": {"pid": 2, "role": "python stub", "model": "shelf_segmenter/1"},
    "gateway": {"pid": 3, "role": "gateway", "model": None},
    "locust": {"pid": 4, "role": "locust", "model": None},
}


def verdict(samples):
    return summarise(samples, PROCESSES, WARMUP_S, samples[-1]["load"])


def test_a_flat_noisy_series_passes_every_target():
    noisy = lambda t: 200 + (t // 10 % 3) * 2  # noqa: E731 - +-1% jitter, no trend
    summary = verdict(make_samples(noisy, fds=lambda t: 40 + t // 10 % 2, files=lambda t: 3 + t // 10 % 2))
    assert summary["pass"], summary["targets"]
    assert set(summary["targets"]["rss_growth_after_warmup"]["per_process"]) == set(PROCESSES) - {"locust"}
    assert "locust" in summary["load_generator"]  # recorded, not judged


def test_growth_during_warm_up_is_not_counted():
    # Doubles during the first minute (caches, first requests), then flat.
    summary = verdict(make_samples(lambda t: 100 + min(t, WARMUP_S) * 100 / WARMUP_S))
    rss = summary["targets"]["rss_growth_after_warmup"]
    assert rss["pass"] and rss["figure"] == 0.0
    assert rss["per_process"]["gateway"]["start"] == 200


def test_a_steady_memory_leak_fails_the_rss_target():
    summary = verdict(make_samples(lambda t: 200 + t * 0.2))  # +48 MB over the 240 s after warm-up
    rss = summary["targets"]["rss_growth_after_warmup"]
    assert not rss["pass"] and not summary["pass"]
    assert rss["figure"] > RSS_GROWTH_LIMIT
    assert summary["targets"]["zero_failed_requests"]["pass"]  # only the leak fails


def test_descriptor_and_file_leaks_fail_their_targets():
    summary = verdict(make_samples(lambda t: 200, fds=lambda t: 40 + t // 20, files=lambda t: 3 + t // 30))
    assert not summary["targets"]["no_descriptor_growth"]["pass"]
    assert not summary["targets"]["no_temp_file_growth"]["pass"]
    assert summary["targets"]["rss_growth_after_warmup"]["pass"]


def test_one_failed_request_fails_the_soak():
    summary = verdict(make_samples(lambda t: 200, failures=1))
    failed = summary["targets"]["zero_failed_requests"]
    assert (failed["figure"], failed["pass"], summary["pass"]) == (1, False, False)


def test_a_stack_process_gone_mid_run_fails():
    samples = make_samples(lambda t: 200)
    for sample in samples[len(samples) // 2 :]:
        del sample["processes"]["python stub shelf_segmenter/1 #1"]
    summary = verdict(samples)
    gone = summary["targets"]["same_stack_processes_throughout"]
    assert not gone["pass"] and gone["figure"] == ["python stub shelf_segmenter/1 #1"]


def test_too_few_samples_after_warm_up_cannot_pass():
    summary = verdict(make_samples(lambda t: 200, seconds=60))  # one sample at t = warm-up
    assert growth([(0.0, 1.0), (60.0, 1.0)], WARMUP_S) is None
    assert not summary["pass"]


def test_compared_windows_are_a_tenth_at_least_three_never_more_than_half():
    assert compared_windows(list(range(144))) == (list(range(14)), list(range(130, 144)))
    assert compared_windows(list(range(10))) == ([0, 1, 2], [7, 8, 9])
    assert compared_windows([1, 2, 3, 4]) == ([1, 2], [3, 4])
    assert compared_windows([1, 2]) == ([1], [2])


def test_the_load_is_a_share_of_the_cameras_the_ramp_sustained():
    steps = [{"users": n, "frames_per_s_total": 30.0 * min(n, 2.7)} for n in (1, 2, 3, 4)]
    plan = plan_from_ramp({"camera_fps_target": 30.0, "users_sustained_at_target": 2, "steps": steps}, 0.8)
    assert (plan.cameras, plan.camera_fps, plan.capacity_frames_per_s) == (2, 24.0, 60.0)
    # Nothing sustained: one camera at 80% of the most frames/s the server delivered.
    plan = plan_from_ramp({"camera_fps_target": 30.0, "users_sustained_at_target": 0, "steps": steps}, 0.8)
    assert (plan.cameras, plan.camera_fps) == (1, 64.8)


def test_processes_are_named_by_role_and_model():
    stub = "/r/.venv-triton/prodseg-backends/python/triton_python_backend_stub"
    assert role_of([stub, "/r/model_repository/crack_segmenter/2/model.py", "region"]) == (
        "python stub",
        "crack_segmenter/2",
    )
    assert role_of(["/r/bin/tritonserver", "--model-repository=/r"]) == ("tritonserver", None)
    assert role_of(["/r/.venv/bin/python", "-m", "gateway", "--port", "1"]) == ("gateway", None)
    assert role_of(["/r/.venv/bin/python", "-m", "locust", "-f", "x.py"]) == ("locust", None)
    guard = ["timeout", "-s", "KILL", "180", "setpriv", "--pdeathsig", "KILL", "python", "-m", "locust"]
    assert role_of(guard) == ("locust guard", None)


def test_folder_usage_counts_files_at_any_depth_and_names_the_largest(tmp_path):
    (tmp_path / "jobs" / "a").mkdir(parents=True)
    (tmp_path / "gateway.sqlite-wal").write_bytes(b"w" * 3000)
    (tmp_path / "jobs" / "a" / "upload.mp4").write_bytes(b"v" * 1000)
    assert folder_usage(tmp_path) == {"files": 2, "bytes": 4000}
    assert largest_files(tmp_path, 1) == [("gateway.sqlite-wal", 3000)]
    assert folder_usage(tmp_path / "missing") == {"files": 0, "bytes": 0}


@pytest.mark.slow
@pytest.mark.triton
def test_a_one_minute_soak_samples_every_process_and_leaves_nothing_running(tmp_path):
    command = [
        sys.executable, "-m", "loadtest.soak",
        "--minutes", "1",
        "--sample-seconds", "5",
        "--warmup-minutes", "0.25",
        "--fps", "10",
        "--ramp-steps", "1,2",
        "--ramp-step-seconds", "4",
        "--upload-every-s", "15",
        "--out", str(tmp_path),
        "--work", str(tmp_path / "work"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=480)
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 2: the soak could not run
    soak = json.loads((tmp_path / "soak.json").read_text())

    roles = [info["role"] for info in soak["processes"].values()]
    assert roles.count("tritonserver") == 1 and roles.count("gateway") == 1 and roles.count("locust") == 1
    stub_models = {info["model"].split("/")[0] for info in soak["processes"].values() if info["model"]}
    loaded = {model.split("/")[0] for model in soak["config"]["models_loaded"]}
    assert "shelf_segmenter" in stub_models and stub_models <= loaded  # ensembles have no stub
    samples = soak["samples"]
    assert len(samples) >= 10  # 60 s sampled every 5 s
    for name, info in soak["processes"].items():
        if info["role"] != "locust guard":
            assert all(name in sample["processes"] for sample in samples[1:-1]), name
    assert all(sample["processes"]["gateway"]["fds"] > 0 for sample in samples)
    assert set(samples[-1]["temp"]) == {"gateway data", "stack TMPDIR", "python backend shm"}
    assert samples[-1]["temp"]["python backend shm"]["files"] >= len(stub_models)

    load = soak["summary"]["load_totals"]
    assert load["camera_frames"] > 0 and load["upload_jobs"] >= 1
    assert soak["summary"]["targets"]["zero_failed_requests"]["figure"] == 0, soak["errors"]
    assert soak["load_plan"]["capacity_frames_per_s"] > 0
    assert soak["config"]["malloc_arena_max"]["gateway"] == os.environ.get("MALLOC_ARENA_MAX", "2")
    assert (tmp_path / "soak.png").stat().st_size > 0

    # Nothing is left running: every process sampled is gone, and so are Triton's shared-memory files.
    assert soak["leftovers"] == {"processes": [], "shm_regions": []}
    for info in soak["processes"].values():
        assert not psutil.pid_exists(info["pid"]) or psutil.Process(info["pid"]).status() == "zombie"
