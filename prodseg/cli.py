"""``prodseg``: the command line of ProdSegmenter.

Heavy imports (torch, the gateway, PyAV) happen inside the commands that need them, so ``--help``
is instant and serving commands never load training code.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from prodseg.ab_cli import ab_app
from prodseg.batch_cli import batch_app
from prodseg.drift_cli import drift_app
from prodseg.keys_cli import keys_app
from prodseg.rollout import command as rollout_command

app = typer.Typer(
    help="ProdSegmenter: segment products on grocery-shelf video with NVIDIA Triton.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
synth_app = typer.Typer(
    help="Generate procedural shelf scenes with exact ground-truth masks.", no_args_is_help=True
)
app.add_typer(synth_app, name="synth")
app.add_typer(ab_app, name="ab")
app.add_typer(drift_app, name="drift")
app.add_typer(batch_app, name="batch")
app.add_typer(keys_app, name="keys")
app.command(name="rollout")(rollout_command)
console = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)


# Temporal reuse (clients.temporal), for videos and streams.
ReuseFlag = Annotated[
    str,
    typer.Option(
        help="temporal reuse, off or auto: 'auto' runs the model on keyframes only and carries their "
        "results to the frames between by the camera's motion; 'off' runs it on every frame",
    ),
]
MaxIntervalFlag = Annotated[
    int | None, typer.Option(help="with --reuse auto: keyframes at most this many frames apart")
]
ToleranceFlag = Annotated[
    float | None,
    typer.Option(help="with --reuse auto: multiplies the keyframe thresholds (above 1: fewer keyframes)"),
]


LookaheadFlag = Annotated[
    int | None,
    typer.Option(
        help="with --reuse auto: a frame's result may wait this many frames for the next keyframe, "
        "which fills what came into view (fewer keyframes; results that many frames late)",
    ),
]


def reuse_settings(
    reuse: str, max_interval: int | None, tolerance: float | None, lookahead: int | None = None
):
    """The ``ReuseSettings`` of the flags, or exit 2 saying what is wrong."""
    from clients.temporal import ReuseSettings

    if reuse == "off" and (max_interval is not None or tolerance is not None or lookahead is not None):
        raise fail("--max-interval, --tolerance and --lookahead apply only with --reuse auto")
    knobs = {"max_interval": max_interval, "tolerance": tolerance, "lookahead": lookahead}
    try:  # the gateway's query options, checked by the one parser
        return ReuseSettings.from_options(
            {"reuse": reuse} | {name: str(value) for name, value in knobs.items() if value is not None}
        )
    except ValueError as error:
        raise fail(str(error)) from error


@app.command()
def serve(
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    gateway_port: int = 8080,
    config_name: Annotated[str, typer.Option(help="configs/<name>.pbtxt to serve the models with")] = "cpu",
    repository: Annotated[
        Path | None, typer.Option(help="model repository (default: this checkout's)")
    ] = None,
    max_restarts: Annotated[
        int, typer.Option(help="restarts of a dead Triton or gateway within 10 minutes before giving up")
    ] = 5,
    startup_timeout: Annotated[
        float,
        typer.Option(min=1, help="seconds Triton (loading every model) or the gateway may take to start"),
    ] = 120.0,
) -> None:
    """Run the embedded stack: Triton (every model) + gateway on 127.0.0.1. Ctrl-C stops both.

    A Triton or gateway that dies is restarted with backoff; after --max-restarts within ten minutes
    serve stops everything and exits 1."""
    from clients.contract import default_repository
    from prodseg.processes import StartError
    from prodseg.stack import EmbeddedStack
    from prodseg.triton_server import TritonServer

    triton = TritonServer(
        repository=repository or default_repository(),
        config_name=config_name,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        startup_timeout_s=startup_timeout,
    )
    # SIGTERM (kubectl, systemd, a test) stops the stack the same way Ctrl-C does, even mid-startup.
    # SIGINT too, explicitly: started in the background by a non-interactive shell (`... &`) a
    # process inherits SIGINT ignored, and Python then installs no Ctrl-C handler of its own.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    stack, exit_code = None, 0
    try:
        with console.status("Starting Triton and the gateway"):
            stack = EmbeddedStack(triton, gateway_port, gateway_startup_timeout_s=startup_timeout).start()
        for name, error in triton.refused.items():
            console.print(f"[red]refused[/red] {name}: {error}")
        console.print(f"Models   {', '.join(triton.models)}")
        if triton.companions:  # loaded beside the models, not models of their own
            console.print(f"JPEG wire helpers  {', '.join(triton.companions)}")
        console.print(f"Triton   HTTP http://{triton.http_url}  gRPC {triton.grpc_url}")
        console.print(f"         metrics {triton.metrics_url}")
        console.print(f"Gateway  {stack.gateway.url}  (API docs at {stack.gateway.url}/docs)")
        console.print("Ctrl-C to stop.")
        stack.supervise(max_restarts=max_restarts, log=console.print)
    except KeyboardInterrupt:
        console.print("Stopping.")
    except StartError as error:
        console.print(f"[red]error:[/red] {error}")
        exit_code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon the children
        if stack is not None:
            stack.stop()
    if exit_code:
        raise typer.Exit(code=exit_code)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@app.command()
def predict(
    input_path: Annotated[Path, typer.Argument(help="an image (png, jpg, ...) or a video (mp4, mkv, ...)")],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="image: the result file (PNG mask, JSON or --overlay picture); "
            "video: a folder for the task's artefacts (overlay.mp4, masks.zip, detections.jsonl...)",
        ),
    ],
    model: Annotated[
        str | None, typer.Option(help="model name (default: the repository's default model)")
    ] = None,
    triton: Annotated[str, typer.Option(help="Triton gRPC address")] = "127.0.0.1:8001",
    gateway: Annotated[str | None, typer.Option(help="use the gateway at this URL instead of Triton")] = None,
    overlay: Annotated[bool, typer.Option(help="for images: write the annotated picture")] = False,
    in_flight: Annotated[int, typer.Option(help="requests kept in flight to Triton")] = 4,
    reuse: ReuseFlag = "off",
    max_interval: MaxIntervalFlag = None,
    tolerance: ToleranceFlag = None,
) -> None:
    """Run a model on an image or a video, straight to Triton over gRPC or through the gateway."""
    from clients.repository import discover
    from prodseg import predict as runner

    if not input_path.is_file():
        raise fail(f"{input_path} does not exist or is not a file")
    temporal = reuse_settings(reuse, max_interval, tolerance)
    if temporal.enabled and runner.is_image(input_path):
        raise fail("--reuse applies to videos, not to a single image")
    found = discover()
    name = model or found.default_model
    if name is None:
        raise fail("no default model in the repository: pass --model")
    try:
        contract = found.get(name)
    except KeyError as error:
        raise fail(str(error.args[0])) from error
    try:
        if gateway:
            message = runner.predict_via_gateway(
                gateway, name, contract, input_path, output, overlay, console, temporal
            )
        else:
            message = runner.predict_via_triton(
                contract, input_path, output, triton, overlay, in_flight, console, temporal
            )
    except runner.PredictError as error:
        raise fail(str(error)) from error
    console.print(message)


@app.command(name="segment")
def segment(
    input_path: Annotated[Path, typer.Argument(help="an image or a video")],
    output: Annotated[Path, typer.Option("-o", "--output", help="result file (image) or folder (video)")],
    triton: Annotated[str, typer.Option(help="Triton gRPC address")] = "127.0.0.1:8001",
    gateway: Annotated[str | None, typer.Option(help="use the gateway at this URL instead of Triton")] = None,
    overlay: Annotated[bool, typer.Option(help="for images: write the overlay instead of class ids")] = False,
) -> None:
    """`prodseg predict` with the default model (the shelf segmenter)."""
    predict(input_path, output, None, triton, gateway, overlay, 4)


@app.command()
def stream(
    source: Annotated[str, typer.Argument(help="a camera (0, /dev/video0) or a video file played as one")],
    model: Annotated[str | None, typer.Option(help="model name (default: the repository's default)")] = None,
    fps: Annotated[float, typer.Option(help="frames per second to send")] = 30.0,
    window: Annotated[int, typer.Option(help="requests in flight; a frame finding it full is dropped")] = 2,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="write the annotated stream (.mp4)")
    ] = None,
    max_frames: Annotated[int | None, typer.Option(help="stop after this many frames")] = None,
    triton: Annotated[str, typer.Option(help="Triton gRPC address")] = "127.0.0.1:8001",
    reuse: ReuseFlag = "off",
    max_interval: MaxIntervalFlag = None,
    tolerance: ToleranceFlag = None,
    lookahead: LookaheadFlag = None,
    wire: Annotated[
        str,
        typer.Option(
            help="raw or jpeg: 'jpeg' sends frames as JPEG and gets masks back as PNG (a tenth of the "
            "bytes; Triton must serve <model>_jpeg); 'raw' sends pixels",
        ),
    ] = "raw",
    jpeg_quality: Annotated[
        int | None, typer.Option(min=1, max=100, help="JPEG quality with --wire jpeg (default: the SDK's)")
    ] = None,
) -> None:
    """Stream a camera to Triton live: achieved FPS, latency and dropped frames, annotated video."""
    import json

    from clients.repository import discover
    from clients.wire import DEFAULT_JPEG_QUALITY, Wire
    from prodseg.stream import run_stream

    temporal = reuse_settings(reuse, max_interval, tolerance, lookahead)
    if wire not in {w.value for w in Wire}:
        raise fail(f"--wire must be one of {', '.join(w.value for w in Wire)}, got {wire!r}")
    found = discover()
    try:
        contract = found.get(model or found.default_model or "")
    except KeyError as error:
        raise fail(str(error.args[0])) from error
    try:
        stats = run_stream(
            contract, source, triton, fps, window, output, max_frames, temporal, Wire(wire),
            jpeg_quality or DEFAULT_JPEG_QUALITY,
        )  # fmt: skip
    except (ValueError, ConnectionError) as error:
        raise fail(str(error)) from error
    print(json.dumps(stats.to_dict(), indent=2))
    summary = f"{stats.completed} frames at {stats.achieved_fps:.1f} FPS, {stats.dropped} dropped"
    if temporal.enabled:
        summary += f", {stats.sent} engine calls ({stats.propagated} propagated)"
    console.print(f"{summary}, {stats.failed} failed" + (f"; wrote {output}" if output else ""))


@synth_app.command("video")
def synth_video(
    output: Annotated[Path, typer.Argument(help="the H.264 .mp4 to write")],
    masks: Annotated[
        Path | None, typer.Option(help="ground-truth masks zip (default: OUTPUT with _masks.zip)")
    ] = None,
    frames: int = 300,
    seed: int = 7,
    fps: float = 30.0,
    height: int = 384,
    width: int = 640,
) -> None:
    """Render a camera panning along a generated shelf, with per-frame ground-truth masks."""
    from datagen.shelves import write_pan_video

    masks = masks or output.with_name(output.stem + "_masks.zip")
    with console.status(f"Rendering {frames} frames"):
        write_pan_video(output, masks, seed=seed, num_frames=frames, fps=fps, height=height, width=width)
    console.print(f"wrote {output} and {masks}")


@synth_app.command("images")
def synth_images(
    output_dir: Annotated[Path, typer.Argument(help="writes images/ and masks/ PNGs here")],
    count: int = 100,
    seed: int = 0,
    height: int = 384,
    width: int = 640,
) -> None:
    """Render shelf scenes as images/NNNNNN.png and masks/NNNNNN.png (class ids)."""
    from datagen.shelves import write_dataset

    with console.status(f"Rendering {count} scenes"):
        write_dataset(output_dir, count=count, seed=seed, height=height, width=width)
    console.print(f"wrote {count} scenes to {output_dir}")


@app.command()
def model(
    steps: Annotated[int | None, typer.Option(help="training steps (default: the default model's)")] = None,
    scenes: Annotated[
        int | None, typer.Option(help="training scenes to render (default: the default's)")
    ] = None,
    repository: Annotated[Path | None, typer.Option(help="model repository to publish into")] = None,
) -> None:
    """Train the small default model on generated shelves, export ONNX, check parity, publish a version.

    With the defaults this reproduces the committed version 1 (same seeds, steps and data).
    """
    import dataclasses

    from rich.progress import Progress

    from training.default_model import DefaultModelConfig, build_default_model

    config = DefaultModelConfig()
    overrides = {"steps": steps, "train_scenes": scenes}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    with Progress(console=console) as progress:
        version, card = build_default_model(config, repository, progress=progress)
    miou = card["evaluation"]["miou"]
    console.print(f"published shelf_segmenter version {version}: held-out mIoU {miou:.3f}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="where overlay.mp4 and report.json go")] = Path("out/demo"),
    frames: int = 300,
    seed: int = 7,
) -> None:
    """Segment a generated shelf video end to end on the embedded stack and report speed and mIoU."""
    from prodseg.demo import run_demo

    started = time.perf_counter()
    run_demo(out, frames, seed, console)
    console.print(f"demo finished in {time.perf_counter() - started:.1f} s; report in {out / 'report.json'}")


def _register_training_commands() -> None:
    # The training pipeline's commands live beside the code they drive; these modules import only
    # typer at load time, so serving commands never pay for torch.
    from training import data_cli, pipeline_cli

    data_cli.register(app)
    pipeline_cli.register(app)


_register_training_commands()

if __name__ == "__main__":
    app()
