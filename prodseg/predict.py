"""``prodseg predict``: any model on images or a video, straight to Triton over gRPC or via the gateway.

Images: segmentation writes a PNG of class ids (or an overlay with ``overlay=True``); detection and
classification write JSON in image pixels (or the annotated image). Videos: the task's artefacts
(``clients.pipeline.ARTIFACTS``) go into an output folder.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
from rich.console import Console
from rich.progress import Progress

from clients.atomic import atomic_path, write_bytes, write_text
from clients.contract import ModelContract, Task
from clients.images import ImageError, decode_image
from clients.masks import decode_mask_png, encode_mask_png
from clients.overlay import Annotator
from clients.pipeline import ARTIFACTS, process_video
from clients.results import Classification, Detections, FrameResult, Segmentation
from clients.temporal import REUSE_OFF, ReuseSettings
from clients.triton_client import InferenceError, TritonModelClient
from clients.video import VideoError, probe

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


class PredictError(RuntimeError):
    """Something the user must fix; the CLI prints it and exits 2."""


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: Path):
    try:
        return decode_image(path.read_bytes())
    except (OSError, ImageError) as error:
        raise PredictError(f"{path}: {error}") from error


def write_image_result(
    path: Path, frame, result: FrameResult, contract: ModelContract, overlay: bool
) -> None:
    """One image's result: an annotated picture, a class-id PNG (segmentation) or JSON."""
    prediction = result.prediction
    if overlay:
        picture = cv2.cvtColor(Annotator(contract)(frame, prediction), cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(path.suffix or ".png", picture)
        if not ok:
            raise PredictError(f"cannot encode an image as {path.suffix!r}")
        write_bytes(path, encoded.tobytes())
    elif isinstance(prediction, Segmentation):
        write_bytes(path, encode_mask_png(prediction.mask))
    else:
        body = {"height": frame.shape[0], "width": frame.shape[1]} | prediction.to_json(contract.labels)
        write_text(path, json.dumps(body, indent=2) + "\n")


def predict_via_triton(
    contract: ModelContract,
    input_path: Path,
    output: Path,
    triton: str,
    overlay: bool,
    in_flight: int,
    console: Console,
    reuse: ReuseSettings = REUSE_OFF,
) -> str:
    async def run() -> str:
        async with TritonModelClient(triton, contract, max_in_flight=in_flight) as client:
            if not await client.is_ready():
                raise PredictError(
                    f"Triton at {triton} is not ready for {contract.model_name} (`prodseg serve`)"
                )
            if is_image(input_path):
                frame = read_image(input_path)
                result = await client.predict_image(frame)
                write_image_result(output, frame, result, contract, overlay)
                return f"wrote {output} ({result.timings['infer'] * 1000:.1f} ms inference)"
            total = _frames_of(input_path)
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task(f"{contract.model_name}", total=total)
                stats = await process_video(
                    input_path,
                    output,
                    client,
                    on_progress=lambda n: progress.update(task, completed=n),
                    reuse=reuse,
                )
            artefacts = ", ".join(ARTIFACTS[contract.task])
            message = f"wrote {artefacts} to {output}: {stats.frames} frames at {stats.fps:.1f} frames/s"
            return message + _engine_calls(stats.frames, stats.engine_calls, reuse)

    try:
        return asyncio.run(run())
    except (InferenceError, VideoError) as error:
        raise PredictError(str(error)) from error


def predict_via_gateway(
    url: str,
    model: str,
    contract: ModelContract,
    input_path: Path,
    output: Path,
    overlay: bool,
    console: Console,
    reuse: ReuseSettings = REUSE_OFF,
) -> str:
    with httpx.Client(base_url=url, timeout=120) as client:
        try:
            if is_image(input_path):
                return _image_via_gateway(client, model, contract, input_path, output, overlay)
            return _video_via_gateway(client, model, input_path, output, console, reuse)
        except httpx.HTTPError as error:
            raise PredictError(f"gateway at {url}: {error}") from error


def _image_via_gateway(
    client: httpx.Client, model: str, contract: ModelContract, input_path: Path, output: Path, overlay: bool
) -> str:
    with open(input_path, "rb") as file:
        response = _check(client.post(f"/v1/models/{model}/images", files={"file": (input_path.name, file)}))
    if contract.task == Task.SEGMENTATION:
        prediction = Segmentation(decode_mask_png(response.content))
    else:
        prediction = _prediction_from_json(response.json()["results"][0], contract)
    frame = read_image(input_path) if overlay or contract.task != Task.SEGMENTATION else None
    if frame is None:
        write_bytes(output, response.content)
    else:
        write_image_result(output, frame, FrameResult(0, prediction), contract, overlay)
    return f"wrote {output}"


def _prediction_from_json(body: dict, contract: ModelContract) -> Detections | Classification:
    if contract.task == Task.DETECTION:
        rows = body["detections"]
        return Detections(
            np.array([r["box"] for r in rows], np.float32).reshape(-1, 4),
            np.array([r["score"] for r in rows], np.float32),
            np.array([r["class_id"] for r in rows], np.int32),
        )
    probabilities = np.array([body["probabilities"][name] for name in contract.labels.names], np.float32)
    return Classification(probabilities / probabilities.sum())


def _video_via_gateway(
    client: httpx.Client, model: str, input_path: Path, output: Path, console: Console, reuse: ReuseSettings
) -> str:
    options = {"reuse": "auto", "max_interval": reuse.max_interval, "tolerance": reuse.tolerance}
    with open(input_path, "rb") as file:
        response = _check(
            client.post(
                f"/v1/models/{model}/videos",
                files={"file": (input_path.name, file)},
                params=options if reuse.enabled else None,
            )
        )
    status_url = response.json()["status_url"]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{model} via gateway", total=None)
        while (job := _check(client.get(status_url)).json())["status"] in ("queued", "running"):
            progress.update(task, completed=job["frames_done"], total=job["frames_total"])
            time.sleep(0.25)
    if job["status"] != "succeeded":
        raise PredictError(f"the video job failed: {job['error']}")
    for name, url in job["artifacts"].items():
        download(client, url, output / name)
    calls = _engine_calls(job["frames_done"], job.get("engine_calls", job["frames_done"]), reuse)
    return f"wrote {', '.join(job['artifacts'])} to {output}{calls}"


def _engine_calls(frames: int, engine_calls: int, reuse: ReuseSettings) -> str:
    if not reuse.enabled:
        return ""
    return f"; temporal reuse: {engine_calls} engine calls for {frames} frames"


def _frames_of(path: Path) -> int | None:
    try:
        return probe(path).frames or None
    except VideoError as error:
        raise PredictError(f"{path}: {error}") from error


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            detail = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError):
            detail = response.text[:200]
        raise PredictError(f"the gateway answered {response.status_code} ({detail})")
    return response


def download(client: httpx.Client, url: str, path: Path) -> None:
    with atomic_path(path) as partial, client.stream("GET", url) as response, open(partial, "wb") as file:
        _check(response)
        for chunk in response.iter_bytes():
            file.write(chunk)
