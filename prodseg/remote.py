"""``prodseg segment --gateway URL``: the same results through the gateway's HTTP API."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import httpx
import typer
from rich.console import Console
from rich.progress import Progress

from clients.contract import ModelContract
from clients.masks import decode_mask_png
from clients.overlay import OverlayPainter


def segment_via_gateway(
    url: str,
    input_path: Path,
    output: Path,
    masks: Path | None,
    is_image: bool,
    overlay: bool,
    console: Console,
) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        try:
            if is_image:
                _image(client, input_path, output, overlay)
            else:
                _video(client, input_path, output, masks, console)
        except httpx.HTTPError as error:
            console.print(f"[red]error:[/red] gateway at {url}: {error}")
            raise typer.Exit(code=2) from error
    console.print(f"wrote {output}")


def _check(response: httpx.Response, console_message: str) -> httpx.Response:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            detail = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError):
            detail = response.text[:200]
        Console(stderr=True).print(f"[red]error:[/red] {console_message} ({response.status_code} {detail})")
        raise typer.Exit(code=2)
    return response


def _image(client: httpx.Client, input_path: Path, output: Path, overlay: bool) -> None:
    with open(input_path, "rb") as file:
        response = _check(
            client.post("/v1/frames", files={"file": (input_path.name, file)}), "segmenting failed"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    if not overlay:
        output.write_bytes(response.content)
        return
    frame = cv2.cvtColor(cv2.imread(str(input_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    blended = OverlayPainter(ModelContract.load().labels)(frame, decode_mask_png(response.content))
    cv2.imwrite(str(output), cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))


def _video(
    client: httpx.Client, input_path: Path, output: Path, masks: Path | None, console: Console
) -> None:
    with open(input_path, "rb") as file:
        response = _check(
            client.post("/v1/videos", files={"file": (input_path.name, file)}), "upload refused"
        )
    status_url = response.json()["status_url"]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("Segmenting via gateway", total=None)
        while (job := _check(client.get(status_url), "status failed").json())["status"] in (
            "queued",
            "running",
        ):
            progress.update(task, completed=job["frames_done"], total=job["frames_total"])
            time.sleep(0.25)
    if job["status"] != "succeeded":
        console.print(f"[red]error:[/red] the video job failed: {job['error']}")
        raise typer.Exit(code=1)
    download(client, job["overlay_url"], output)
    if masks:
        download(client, job["masks_url"], masks)


def download(client: httpx.Client, url: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with client.stream("GET", url) as response, open(partial, "wb") as file:
        _check(response, f"download of {url} failed")
        for chunk in response.iter_bytes():
            file.write(chunk)
    partial.replace(path)
