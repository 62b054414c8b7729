"""Smoke test: the benchmark suite runs end to end at tiny size and writes what it promises.

Its figures are measurements for benchmarks/results/, never assertions: only shapes are checked.
"""

import json

import pytest

from benchmarks import suite

pytestmark = [pytest.mark.slow, pytest.mark.triton]


def test_suite_runs_every_path_and_writes_json_table_and_plot(tmp_path):
    result = suite.run(repeats=1, seconds=0.5, num_frames=8, work=tmp_path / "work", with_perf_analyzer=False)
    suite.write(result, "smoke", tmp_path)

    saved = json.loads((tmp_path / "smoke.json").read_text())
    assert set(saved["ratios"]) == {"triton_vs_engine", "gateway_vs_engine", "vs_baseline"}
    assert all(value > 0 for value in saved["ratios"].values())
    medians = saved["medians"]
    for key in (
        "engine_openvino_fps",
        "engine_onnxruntime_fps",
        "bare_video_pipeline_fps",
        "gateway_job_fps",
        "baseline_fps",
    ):
        assert medians[key] > 0, key
    assert set(medians["triton_grpc"]) == {f"triton_grpc_{w}" for w in ("1x1", "2x1", "4x1", "8x1", "3x2")}
    assert (
        saved["bytes_per_returned_frame"]["uint8_mask"] * 16
        == saved["bytes_per_returned_frame"]["fp32_logits"]
    )
    assert all(mb > 50 for mb in saved["peak_memory"].values())
    assert "| gRPC -> Triton, 4 requests x 1 frames in flight |" in (tmp_path / "smoke.md").read_text()
    assert (tmp_path / "smoke.png").stat().st_size > 0
    assert saved["image_route_drift"]["drift_on_fps"] > 0 and saved["image_route_drift"]["drift_off_fps"] > 0
    assert saved["batch"]["shelf_segmenter"]["batch_images_per_s"] > 0
    for name, measured in saved["other_models"].items():
        assert measured["engine_openvino_fps"] > 0 and measured["triton_grpc_4x1_fps"] > 0, name
