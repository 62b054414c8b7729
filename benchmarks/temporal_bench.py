"""Temporal reuse: engine calls saved vs mIoU, every-frame inference side by side, through one real Triton.

    .venv/bin/python -m benchmarks.temporal_bench [--frames 300]

Two generated shelf pans with exact ground truth: the demo's (``write_pan_video(seed=7)``, 6 px per
frame) and a faster one (16 px per frame). Each goes through the real video job
(``clients.pipeline.process_video``: decode, Triton, overlay, H.264) once with every frame inferred
and once per reuse setting (``clients.temporal``); per run: engine calls (frames Triton ran on),
calls saved (every-frame calls / reuse calls), mIoU against the ground truth and its loss against
every-frame inference in the same run. A live stream propagates forwards only: the same keyframe
logic (``LiveReuse``) is measured frame by frame on the same videos, forwards only at several
tolerances and with a lookahead (a result may wait that many frames for the next keyframe, which
fills what came into view). The two motion models are timed and checked on the same frame pairs (how
often a ground-truth mask warped by the estimate matches).

``measure_temporal(triton_url, work)`` returns the dict (``temporal_calls_saved`` and
``temporal_miou_loss`` are the default setting's, the worse of the two videos); the main writes
benchmarks/results/temporal.json and temporal.png (the curve). The target: >= 3x fewer engine calls at
an mIoU within 0.01 of every-frame inference on both videos, with the default setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from clients.atomic import write_text
from clients.contract import ModelContract
from clients.evaluation import ConfusionMatrix
from clients.masks import read_mask_archive
from clients.pipeline import process_video
from clients.temporal import (
    DEFAULT_MAX_INTERVAL,
    FrameView,
    LiveReuse,
    MotionEstimator,
    MotionModel,
    ReuseSettings,
)
from clients.triton_client import TritonModelClient
from clients.video import frames

MODEL = "shelf_segmenter"
RESULTS = Path(__file__).parent / "results" / "temporal.json"
VIDEOS = {"demo": 6.0, "fast": 16.0}  # pixels per frame of the pan
SEED = 7
MAX_INTERVALS = (4, DEFAULT_MAX_INTERVAL, 16, 30)  # the curve, at tolerance 1
LIVE_TOLERANCES = (1.0, 1.5, 2.0, 3.0)  # the live curve, at the default max_interval
# Frames a live result may wait for the next keyframe, at tolerance 1; max_interval is raised to
# lookahead + 1 where the default would cap it.
LIVE_LOOKAHEADS = (2, 4, DEFAULT_MAX_INTERVAL - 1, 11)
TARGET_CALLS_SAVED, TARGET_MIOU_LOSS = 3.0, 0.01
IN_FLIGHT = 3


def measure_temporal(triton_url: str, work: Path, num_frames: int = 300) -> dict:
    """Every-frame vs temporal reuse on both videos through the Triton at ``triton_url``."""
    from datagen.shelves import write_pan_video

    contract = ModelContract.load(MODEL)
    work.mkdir(parents=True, exist_ok=True)
    default = ReuseSettings("auto")
    settings = [ReuseSettings("auto", interval) for interval in MAX_INTERVALS]
    _warm_up(triton_url, contract)
    videos: dict[str, dict] = {}
    for name, speed in VIDEOS.items():
        video, truth = work / f"{name}.mp4", work / f"{name}_masks.zip"
        write_pan_video(
            video, truth, seed=SEED, num_frames=num_frames, height=contract.height, width=contract.width,
            pixels_per_frame=speed,
        )  # fmt: skip
        every = _job(triton_url, contract, video, truth, work / f"{name}-every", ReuseSettings())
        runs = [
            _job(triton_url, contract, video, truth, work / f"{name}-{i}", s) for i, s in enumerate(settings)
        ]
        for run in runs:
            run["calls_saved"] = round(every["engine_calls"] / run["engine_calls"], 3)
            run["miou_loss"] = round(every["miou"] - run["miou"], 4)
        live_curve = [
            _live(triton_url, contract, video, truth, ReuseSettings("auto", tolerance=tolerance))
            for tolerance in LIVE_TOLERANCES
        ]
        live_lookahead = [
            _live(triton_url, contract, video, truth, live_lookahead_settings(lookahead))
            for lookahead in LIVE_LOOKAHEADS
        ]
        for run in live_curve + live_lookahead:
            run["calls_saved"] = round(num_frames / run["engine_calls"], 3)
            run["miou_loss"] = round(every["miou"] - run["miou"], 4)
        live = next(run for run in live_curve if run["settings"] == default.to_dict())
        videos[name] = {
            "pixels_per_frame": speed,
            "frames": num_frames,
            "every_frame": every,
            "reuse": runs,
            "live_forward_only": live,
            "live_curve": live_curve,
            "live_lookahead": live_lookahead,
            "motion_models": _motion_models(video, truth, default.max_interval),
        }
    at_default = [next(r for r in v["reuse"] if r["settings"] == default.to_dict()) for v in videos.values()]
    calls_saved = min(r["calls_saved"] for r in at_default)
    miou_loss = max(r["miou_loss"] for r in at_default)
    return {
        "default": default.to_dict(),
        "temporal_calls_saved": calls_saved,
        "temporal_miou_loss": miou_loss,
        "target": {
            "calls_saved_at_least": TARGET_CALLS_SAVED,
            "miou_loss_at_most": TARGET_MIOU_LOSS,
            "met": calls_saved >= TARGET_CALLS_SAVED and miou_loss <= TARGET_MIOU_LOSS,
        },
        "videos": videos,
    }


def live_lookahead_settings(lookahead: int) -> ReuseSettings:
    """Reuse for a live stream whose results may wait ``lookahead`` frames (max_interval follows)."""
    return ReuseSettings("auto", max(DEFAULT_MAX_INTERVAL, lookahead + 1), lookahead=lookahead)


def _warm_up(triton_url: str, contract: ModelContract) -> None:
    """A few requests first: the first ones after a start are slow, and every-frame runs first."""

    async def run():
        async with TritonModelClient(triton_url, contract) as client:
            blank = np.zeros((contract.height, contract.width, 3), np.uint8)
            for _ in range(8):
                await client.predict_image(blank)

    asyncio.run(run())


def _job(triton_url: str, contract: ModelContract, video: Path, truth: Path, out: Path, reuse) -> dict:
    async def run():
        async with TritonModelClient(triton_url, contract, max_in_flight=IN_FLIGHT) as client:
            return await process_video(video, out, client, reuse=reuse)

    stats = asyncio.run(run())
    per_frame = {stage: round(1000 * s / stats.frames, 3) for stage, s in stats.stage_seconds.items()}
    return {
        "settings": reuse.to_dict(),
        "engine_calls": stats.engine_calls,
        "miou": round(_miou(read_mask_archive(out / "masks.zip"), truth, contract.num_classes), 4),
        "fps": round(stats.fps, 2),
        "stage_ms_per_frame": per_frame,  # motion and propagate: temporal reuse's own cost
        "keyframe_reasons": (stats.reuse or {}).get("keyframe_reasons"),
        "motion_ms_per_frame": (stats.reuse or {}).get("motion_ms_per_frame"),
        "propagate_ms_per_frame": (stats.reuse or {}).get("propagate_ms_per_frame"),
    }


def _live(triton_url: str, contract: ModelContract, video: Path, truth: Path, reuse: ReuseSettings) -> dict:
    """A live stream frame by frame: each keyframe's result is awaited before the next frame (no drops);
    carried frames wait for their keyframe (with a lookahead, for the next one too)."""

    async def run():
        live = LiveReuse(reuse)
        results = []
        async with TritonModelClient(triton_url, contract) as client:
            for frame in frames(video):
                plan = await live.plan(frame)
                results.append(live.result(plan, lambda frame=frame: client.predict_image(frame)))
                if plan.keyframe:
                    await results[-1]
            live.close()
            masks = [result.mask for result in await asyncio.gather(*results)]
        return masks, live.stats.to_dict()

    masks, stats = asyncio.run(run())
    return {
        "settings": reuse.to_dict(),
        "engine_calls": stats["engine_calls"],
        "miou": round(_miou(masks, truth, contract.num_classes), 4),
        "keyframe_reasons": stats["keyframe_reasons"],
        "motion_ms_per_frame": stats["motion_ms_per_frame"],
        "propagate_ms_per_frame": stats["propagate_ms_per_frame"],
    }


def _motion_models(video: Path, truth: Path, lag: int) -> dict:
    """Both motion models on the same (frame, frame + lag) pairs: ms per estimate, and the share of
    covered pixels where the ground-truth mask warped by the estimate equals the frame's own."""
    images, masks = list(frames(video)), list(read_mask_archive(truth))
    views = [FrameView.of(image) for image in images]
    pairs = [(t, t + lag) for t in range(0, len(images) - lag, 3)]
    found = {}
    for model in MotionModel:
        estimator = MotionEstimator(model)
        started = time.perf_counter()
        motions = [estimator.estimate(views[a], views[b]) for a, b in pairs]
        seconds = time.perf_counter() - started
        agreement = []
        for (a, b), motion in zip(pairs, motions, strict=True):
            height, width = masks[b].shape
            warped = cv2.warpAffine(
                masks[a], motion.matrix, (width, height), flags=cv2.INTER_NEAREST, borderValue=255
            )
            seen = warped != 255
            agreement.append(float((warped[seen] == masks[b][seen]).mean()) if seen.any() else 0.0)
        view_ms = _view_ms(images[:20])
        found[model.value] = {
            "pairs": len(pairs),
            "lag_frames": lag,
            "estimate_ms": round(1000 * seconds / len(pairs), 3),
            "ms_per_frame_with_view": round(1000 * seconds / len(pairs) + view_ms, 3),
            "mask_agreement_mean": round(float(np.mean(agreement)), 5),
            "mask_agreement_min": round(float(np.min(agreement)), 5),
        }
    return found


def _view_ms(images: list[np.ndarray]) -> float:
    started = time.perf_counter()
    for image in images:
        FrameView.of(image)
    return 1000 * (time.perf_counter() - started) / len(images)


def _miou(masks, truth: Path, num_classes: int) -> float:
    matrix = ConfusionMatrix(num_classes)
    for predicted, expected in zip(masks, read_mask_archive(truth), strict=True):
        matrix.update(predicted, expected)
    return matrix.miou()


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for (name, video), colour in zip(result["videos"].items(), ("tab:blue", "tab:orange"), strict=False):
        curve = sorted(
            video["reuse"],
            key=lambda r: r["calls_saved"],
        )
        speed = video["pixels_per_frame"]
        axis.plot(
            [1.0] + [r["calls_saved"] for r in curve],
            [video["every_frame"]["miou"]] + [r["miou"] for r in curve],
            "o-", color=colour, label=f"{name} ({speed:g} px/frame): video job",
        )  # fmt: skip
        for r in curve:
            axis.annotate(f"{r['settings']['max_interval']}", (r["calls_saved"], r["miou"]), fontsize=8)
        forwards = video.get("live_curve") or [video["live_forward_only"]]
        live_curves = (
            (forwards, "s--", "forwards only", "t", "tolerance"),
            (video.get("live_lookahead") or [], "^-.", "with lookahead", "L", "lookahead"),
        )
        for runs, style, kind, prefix, knob in live_curves:
            live = sorted(runs, key=lambda r: r["calls_saved"])
            axis.plot(
                [r["calls_saved"] for r in live], [r["miou"] for r in live], style, color=colour,
                label=f"{name}: live ({kind})",
            )  # fmt: skip
            for r in live:
                axis.annotate(f"{prefix}{r['settings'][knob]:g}", (r["calls_saved"], r["miou"]), fontsize=7)
        band = video["every_frame"]["miou"] - TARGET_MIOU_LOSS
        axis.axhline(band, color=colour, linestyle=":", linewidth=1)
    axis.axvline(TARGET_CALLS_SAVED, color="grey", linestyle="--", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlabel(
        "engine calls saved (every-frame / reuse calls)\nlabels: max_interval, t: live tolerance, "
        "L: live lookahead"
    )
    axis.set_ylabel("mIoU vs ground truth")
    axis.set_title("Temporal reuse: calls saved vs mIoU (dotted: every-frame mIoU - 0.01)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    from prodseg.triton_server import TritonServer

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch, TritonServer(models=(MODEL,)) as triton:
        version = _served_version(triton.http_url)
        result = measure_temporal(triton.grpc_url, Path(scratch), args.frames)
    result = {
        "what": "benchmarks.temporal_bench: every-frame inference vs temporal reuse, same Triton, same run",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "model": {"name": MODEL, "version": version},
        "seconds": round(time.perf_counter() - started, 1),
    } | result
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(
        json.dumps({k: result[k] for k in ("temporal_calls_saved", "temporal_miou_loss", "target")}, indent=2)
    )


def _served_version(http_url: str) -> str:
    import httpx

    index = httpx.post(f"http://{http_url}/v2/repository/index", timeout=10).json()
    ready = [m["version"] for m in index if m.get("name") == MODEL and m.get("state") == "READY"]
    return max(ready, key=int) if ready else ""


if __name__ == "__main__":
    main()
