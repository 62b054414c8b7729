"""Tune the embedded Triton's CPU config: instances x OpenVINO threads x the client's window.

The client's window is requests in flight x frames per request (a video job can send several frames
per request; a live camera sends one).

``python -m benchmarks.tune_triton`` serves a copy of the repository with each variant of
configs/cpu.pbtxt, streams the same frames over gRPC, and compares with the bare engine measured in
the same run. Results: benchmarks/results/tuning.json and tuning.md.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.suite import RESULTS
from clients.atomic import write_text
from clients.contract import ModelContract, default_repository
from prodseg.engine import load_engine, measure_fps, measure_triton
from prodseg.triton_server import TritonServer

VARIANTS = [  # (instances, openvino threads per instance)
    (1, 2),
    (2, 1),
    (2, 2),
    (3, 1),
]
FLAGSHIP = "shelf_segmenter"
WINDOWS = [(2, 1), (4, 1), (2, 2), (3, 2), (2, 4)]  # (requests in flight, frames per request)


def variant_repository(root: Path, instances: int, threads: int) -> Path:
    source = default_repository() / FLAGSHIP
    target = root / FLAGSHIP
    shutil.copytree(source, target, symlinks=True)
    shutil.copy2(default_repository() / "onnx_runner.py", root / "onnx_runner.py")  # model.py links it
    config = target / "configs" / "cpu.pbtxt"
    text = re.sub(r"count: \d+", f"count: {instances}", config.read_text())
    text = re.sub(
        r'key: "openvino_threads" value: \{ string_value: "\d+" \}',
        f'key: "openvino_threads" value: {{ string_value: "{threads}" }}',
        text,
    )
    write_text(config, text)
    return root


def main(repeats: int = 2, frames_per_point: int = 360) -> None:
    from datagen.shelves import render_scene

    contract = ModelContract.load(FLAGSHIP)
    sample = [render_scene(seed, contract.height, contract.width).image for seed in range(16)]
    engine = load_engine(FLAGSHIP)
    engine_fps = statistics.median(measure_fps(engine, np.stack(sample), 5) for _ in range(repeats))
    rows = []
    for instances, threads in VARIANTS:
        with (
            tempfile.TemporaryDirectory() as tmp,
            TritonServer(repository=variant_repository(Path(tmp), instances, threads)) as server,
        ):
            for in_flight, per_request in WINDOWS:
                fps = statistics.median(
                    asyncio.run(
                        measure_triton(
                            server.grpc_url, contract, sample, in_flight, frames_per_point, per_request
                        )
                    )["fps"]
                    for _ in range(repeats)
                )
                rows.append(
                    {
                        "instances": instances,
                        "openvino_threads": threads,
                        "in_flight": in_flight,
                        "frames_per_request": per_request,
                        "fps": round(fps, 1),
                        "vs_engine": round(fps / engine_fps, 3),
                    }
                )
                print(rows[-1])
    best = max(rows, key=lambda r: r["fps"])
    result = {"engine_openvino_fps": round(engine_fps, 1), "rows": rows, "best": best}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tuning.json").write_text(json.dumps(result, indent=2) + "\n")
    table = [
        "| instances | OpenVINO threads | in flight | frames/request | frames/s | / bare engine |",
        "|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['instances']} | {r['openvino_threads']} | {r['in_flight']} | {r['frames_per_request']} "
        f"| {r['fps']} | {r['vs_engine']} |"
        for r in rows
    ]
    (RESULTS / "tuning.md").write_text(
        f"# Embedded Triton tuning (bare OpenVINO engine: {engine_fps:.1f} frames/s)\n\n"
        + "\n".join(table)
        + "\n"
    )
    print((RESULTS / "tuning.md").read_text())


if __name__ == "__main__":
    main()
