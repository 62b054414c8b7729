"""Published shelf_segmenter versions side by side: quality on the demo video and frames/s, one run.

    .venv/bin/python -m benchmarks.shelf_versions [--versions 1,3] [--repeats 3]

Quality: mIoU and per-class IoU against the exact ground truth of the two generated pans the
temporal benchmark uses (the demo's, 6 px per frame, and a fast one, 16 px per frame), every frame
through the bare engine (``prodseg.engine.load_engine``: the runner Triton serves). Speed: frames/s
of each version's engine at batch 1 on the same frames, the versions taking turns, median of
``--repeats``. Writes benchmarks/results/shelf_versions.json. Issue 13's target for a new default:
demo mIoU >= 0.80 at no loss of frames/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.temporal_bench import SEED, VIDEOS  # the same two generated pans
from clients.atomic import write_text
from clients.contract import ModelContract
from clients.evaluation import ConfusionMatrix
from clients.masks import read_mask_archive
from clients.repository import latest_version
from clients.video import frames
from prodseg.engine import load_engine, measure_fps

MODEL = "shelf_segmenter"
RESULTS = Path(__file__).parent / "results" / "shelf_versions.json"


def measure_versions(versions: list[int], repeats: int = 3, num_frames: int = 300) -> dict:
    from datagen.shelves import write_pan_video

    contract = ModelContract.load(MODEL)
    engines = {version: load_engine(MODEL, version=version) for version in versions}
    quality: dict[int, dict] = {version: {} for version in versions}
    sample = None
    with tempfile.TemporaryDirectory() as scratch:
        for name, speed in VIDEOS.items():
            video, truth = Path(scratch) / f"{name}.mp4", Path(scratch) / f"{name}.zip"
            write_pan_video(
                video, truth, seed=SEED, num_frames=num_frames, height=contract.height, width=contract.width,
                pixels_per_frame=speed,
            )  # fmt: skip
            images = np.stack([contract.to_model_input(frame) for frame in frames(video)])
            masks = list(read_mask_archive(truth))
            sample = images[:32] if sample is None else sample
            for version, engine in engines.items():
                matrix = ConfusionMatrix(contract.num_classes)
                for image, expected in zip(images, masks, strict=True):
                    matrix.update(engine(image[None])["masks"][0], expected)
                quality[version][name] = {
                    "miou": round(matrix.miou(), 4),
                    "iou": dict(zip(contract.labels.names, np.round(matrix.iou(), 4).tolist(), strict=True)),
                }
    fps: dict[int, list[float]] = {version: [] for version in versions}
    for _ in range(repeats):  # the versions take turns, so a noisy neighbour hits both
        for version, engine in engines.items():
            fps[version].append(measure_fps(engine, sample, seconds=5.0))
    baseline = versions[0]
    median = {version: statistics.median(values) for version, values in fps.items()}
    return {
        "versions": {
            str(version): {
                "quality": quality[version],
                "fps_batch1": round(median[version], 2),
                "fps_runs": [round(value, 2) for value in fps[version]],
                "fps_ratio_to_first": round(median[version] / median[baseline], 3),
            }
            for version in versions
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--versions", default=f"1,{latest_version(MODEL)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    versions = [int(v) for v in args.versions.split(",")]
    result = {
        "what": "benchmarks.shelf_versions: published shelf_segmenter versions, same frames, same run",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "engine": "prodseg.engine.load_engine (OpenVINO, the served runner), batch 1",
    } | measure_versions(versions, args.repeats)
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["versions"], indent=2))


if __name__ == "__main__":
    main()
