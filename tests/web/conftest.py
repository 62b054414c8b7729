"""Browser fixtures: Debian's chromium driven by pytest-playwright, with a fake camera.

Playwright never downloads a browser here (`playwright install` must not run): the launch points at
Debian's binary. Without it (or without Playwright) every browser test skips and says what to install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/lib/chromium/chromium")
MISSING_CHROMIUM = (
    f"{CHROMIUM} is missing: install Debian's chromium and fonts-dejavu-core "
    "(`apt-get install --no-install-recommends chromium fonts-dejavu-core`, or `make install` as root)"
)
CAMERA_SIZE = (480, 640)  # height, width of the fake camera's frames
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def write_fake_camera(path: Path, frames: int = 30) -> Path:
    """A Y4M clip of generated shelves for ``--use-file-for-fake-video-capture`` (chromium loops it)."""
    import av
    import cv2

    from datagen.shelves import render_scene

    height, width = CAMERA_SIZE
    with av.open(str(path), "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("rawvideo", rate=15)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            image = cv2.resize(render_scene(100 + index // 10, 384, 640).image, (width, height))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def fake_camera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_camera(tmp_path_factory.mktemp("camera") / "shelves.y4m")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict, fake_camera: Path) -> dict:
    """pytest-playwright's launch options, pointed at Debian's chromium with a fake camera."""
    if not CHROMIUM.exists():
        pytest.skip(MISSING_CHROMIUM)
    return browser_type_launch_args | {
        "executable_path": str(CHROMIUM),
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={fake_camera}",
        ],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict) -> dict:
    return browser_context_args | {"viewport": DESKTOP}


@pytest.fixture
def page(page):
    """Every page fails its test on an uncaught script error (a broken module is not a blank page)."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(30_000)
    yield page
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="session")
def task_gateway(tmp_path_factory: pytest.TempPathFactory):
    """A second Triton + gateway serving a detector and a classifier with fixed answers (task_models)."""
    from prodseg.stack import GatewayProcess, serving_env
    from prodseg.triton_server import TritonServer
    from tests.web.task_models import build_repository

    repository = build_repository(tmp_path_factory.mktemp("task-models"))
    logs = tmp_path_factory.mktemp("task-triton")
    with TritonServer(repository=repository, log_path=logs / "triton.log") as triton:
        process = GatewayProcess(
            triton.grpc_url, data_dir=tmp_path_factory.mktemp("task-gateway"), env=serving_env(triton)
        )
        process.start()
        yield process
        process.stop()


@pytest.fixture(scope="session")
def drift_gateway(tmp_path_factory: pytest.TempPathFactory):
    """A Triton + gateway serving shelf_segmenter's latest version and a copy of it as the next (an
    A/B test can run), with a drift window of 30 samples evaluated every 0.5 s: reports come quickly."""
    import shutil

    from clients.config_text import serve_versions
    from clients.contract import default_repository
    from clients.repository import latest_version
    from prodseg.stack import GatewayProcess, serving_env
    from prodseg.triton_server import TritonServer

    model = "shelf_segmenter"
    repository = tmp_path_factory.mktemp("drift-repository")
    source = default_repository()
    shutil.copy2(source / "onnx_runner.py", repository / "onnx_runner.py")
    shutil.copytree(source / model, repository / model, symlinks=True)
    latest = latest_version(model, repository)
    shutil.copytree(repository / model / str(latest), repository / model / str(latest + 1), symlinks=True)
    for config in [repository / model / "config.pbtxt", *(repository / model / "configs").glob("*.pbtxt")]:
        config.write_text(serve_versions(config.read_text(), [latest, latest + 1]))
    env = {
        "PRODSEG_DRIFT_WINDOW": "30",  # the smallest window a verdict allows (min_samples is 30)
        "PRODSEG_DRIFT_EVALUATE_EVERY_S": "0.5",
        "PRODSEG_DRIFT_SAMPLE_EVERY": "1",
    }
    with TritonServer(repository=repository, models=(model,), log_path=repository / "triton.log") as triton:
        process = GatewayProcess(triton.grpc_url, data_dir=repository / "data", env=serving_env(triton) | env)
        process.start()
        try:
            yield process
        finally:
            process.stop()
