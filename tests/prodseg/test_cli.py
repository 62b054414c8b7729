"""The ``prodseg`` command line, run as a user runs it (a subprocess), against the real stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clients.contract import Task, default_repository
from clients.masks import decode_mask_png
from clients.repository import discover, versions
from clients.video import probe
from prodseg.processes import free_ports

SERVED = {n: c for n, c in discover().contracts.items() if versions(default_repository() / n)}


def prodseg(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "prodseg.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands():
    result = prodseg("--help")
    assert result.returncode == 0
    for command in ("serve", "predict", "segment", "synth", "demo"):
        assert command in result.stdout


def test_synth_video_writes_video_and_ground_truth(tmp_path: Path):
    result = prodseg("synth", "video", str(tmp_path / "pan.mp4"), "--frames", "6", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert probe(tmp_path / "pan.mp4").frames == 6
    assert (tmp_path / "pan_masks.zip").exists()


def test_segment_a_missing_file_fails_clearly(tmp_path: Path):
    result = prodseg("segment", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "out.mp4"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


@pytest.mark.triton
def test_segment_rejects_a_non_video_without_writing_output(tmp_path: Path, triton):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video")
    result = prodseg("segment", str(bogus), "-o", str(tmp_path / "out"), "--triton", triton.grpc_url)
    assert result.returncode == 2
    assert "not a video" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.triton
def test_segment_video_straight_to_triton(tmp_path: Path, triton, shelf_video):
    out = tmp_path / "out"
    result = prodseg("segment", str(shelf_video.video), "-o", str(out), "--triton", triton.grpc_url)
    assert result.returncode == 0, result.stderr
    assert probe(out / "overlay.mp4").frames == shelf_video.frames
    assert sorted(p.name for p in out.iterdir()) == ["masks.zip", "overlay.mp4", "timeline.jsonl"]


@pytest.mark.triton
@pytest.mark.parametrize("name", sorted(SERVED))
def test_predict_an_image_with_every_model(tmp_path: Path, triton, gateway, name):
    import json

    import cv2

    from datagen.shelves import render_scene

    image = tmp_path / "in.png"
    cv2.imwrite(str(image), cv2.cvtColor(render_scene(4, 300, 400).image, cv2.COLOR_RGB2BGR))
    task = SERVED[name].task
    result_file = tmp_path / ("out.png" if task == Task.SEGMENTATION else "out.json")
    via_triton = prodseg(
        "predict", str(image), "--model", name, "-o", str(result_file), "--triton", triton.grpc_url
    )
    assert via_triton.returncode == 0, via_triton.stderr
    if task == Task.SEGMENTATION:
        assert decode_mask_png(result_file.read_bytes()).shape == (300, 400)
    else:
        assert json.loads(result_file.read_text())["task"] == task.value
    picture = tmp_path / "annotated.jpg"
    via_gateway = prodseg(
        "predict", str(image), "--model", name, "-o", str(picture), "--overlay", "--gateway", gateway.url
    )
    assert via_gateway.returncode == 0, via_gateway.stderr
    assert cv2.imread(str(picture)).shape == (300, 400, 3)


def test_predict_with_an_unknown_model_names_the_known_ones(tmp_path: Path):
    image = tmp_path / "in.png"
    image.write_bytes(b"x")
    result = prodseg("predict", str(image), "--model", "nope", "-o", str(tmp_path / "o.png"))
    assert result.returncode == 2 and "known models" in result.stderr


@pytest.mark.triton
def test_segment_image_via_gateway_and_via_triton_agree(tmp_path: Path, triton, gateway, contract):
    import cv2

    from datagen.shelves import render_scene

    image = tmp_path / "shelf.png"
    cv2.imwrite(
        str(image), cv2.cvtColor(render_scene(4, contract.height, contract.width).image, cv2.COLOR_RGB2BGR)
    )
    direct, via_gateway = tmp_path / "direct.png", tmp_path / "gateway.png"
    assert prodseg("segment", str(image), "-o", str(direct), "--triton", triton.grpc_url).returncode == 0
    result = prodseg("segment", str(image), "-o", str(via_gateway), "--gateway", gateway.url)
    assert result.returncode == 0, result.stderr
    assert (decode_mask_png(direct.read_bytes()) == decode_mask_png(via_gateway.read_bytes())).all()


@pytest.mark.triton
def test_gateway_errors_reach_the_user(tmp_path: Path, gateway):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video")
    result = prodseg("segment", str(bogus), "-o", str(tmp_path / "o.mp4"), "--gateway", gateway.url)
    assert result.returncode == 2
    assert "415" in result.stderr and "not_a_video" in result.stderr


@pytest.mark.triton
def test_serve_runs_triton_and_gateway_until_ctrl_c(tmp_path: Path):
    import signal
    import time

    import httpx

    ports = dict(zip(("http", "grpc", "metrics", "gateway"), free_ports(4), strict=True))
    options = [f"--{name}-port={port}" for name, port in ports.items()]
    command = [sys.executable, "-m", "prodseg.cli", "serve", *options]
    log = tmp_path / "serve.log"  # a file, not a pipe nobody reads: a full pipe would block serve
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{ports['gateway']}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            pytest.fail("prodseg serve did not become ready")
        assert httpx.get(f"http://127.0.0.1:{ports['http']}/v2/health/ready").status_code == 200
        children = descendants(server.pid)
        assert len(children) >= 2  # tritonserver (and its python stubs), the gateway
        server.send_signal(signal.SIGINT)
        # Bounded: serve SIGTERMs both and SIGKILLs what is left after 10 s.
        assert server.wait(timeout=60) == 0, log.read_text()
    finally:
        server.kill()
    for port in (ports["http"], ports["gateway"]):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    assert not [pid for pid in children if alive(pid)]


@pytest.mark.triton
def test_serve_killed_with_sigkill_leaves_no_process_behind(tmp_path: Path):
    import signal
    import time

    ports = dict(zip(("http", "grpc", "metrics", "gateway"), free_ports(4), strict=True))
    options = [f"--{name}-port={port}" for name, port in ports.items()]
    command = [sys.executable, "-m", "prodseg.cli", "serve", *options]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        wait_ready(f"http://127.0.0.1:{ports['gateway']}/readyz", 150)
        children = descendants(server.pid)
        assert len(children) >= 2
        server.send_signal(signal.SIGKILL)  # no handler runs: only the kernel can stop the children
        server.wait(timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and [pid for pid in children if alive(pid)]:
            time.sleep(0.2)
        assert not [pid for pid in children if alive(pid)], "orphans outlived prodseg serve"
    finally:
        server.kill()
        for pid in children:  # never leave the test's own processes behind, even when it fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def wait_for_line(log: Path, text: str, timeout_s: float) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    pytest.fail(f"{text!r} not in the server's output after {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")


def wait_ready(url: str, timeout_s: float, log: Path | None = None) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    said = f"; the server's output:\n{log.read_text(errors='replace')[-4000:]}" if log else ""
    pytest.fail(f"{url} did not become ready in {timeout_s:.0f} s{said}")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren...), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing


@pytest.mark.triton
def test_stream_a_video_file_as_a_camera_counts_fps_and_drops(tmp_path: Path, triton, shelf_video):
    import json

    out = tmp_path / "live.mp4"
    result = prodseg(
        "stream",
        str(shelf_video.video),
        "--fps",
        "15",
        "--window",
        "2",
        "-o",
        str(out),
        "--triton",
        triton.grpc_url,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["captured"] == shelf_video.frames
    assert stats["completed"] + stats["dropped"] + stats["failed"] == shelf_video.frames
    assert stats["completed"] > 0 and stats["failed"] == 0
    assert probe(out).frames == stats["completed"]
    assert 0 < stats["achieved_fps"] <= 16


def test_stream_from_a_missing_camera_fails_clearly(tmp_path: Path):
    result = prodseg("stream", str(tmp_path / "nope.mp4"), "--max-frames", "3")
    assert result.returncode == 2 and "cannot open camera" in result.stderr


@pytest.mark.triton
def test_serve_restarts_a_killed_triton_and_gives_up_after_too_many_deaths(tmp_path: Path):
    import signal
    import time

    ports = dict(zip(("http", "grpc", "metrics", "gateway"), free_ports(4), strict=True))
    options = [f"--{name}-port={port}" for name, port in ports.items()]
    # A restarted Triton loads and warms every model again: on a busy 2-core machine that has taken
    # over two minutes, so the test allows what a slow node's startup probe would.
    command = [sys.executable, "-m", "prodseg.cli", "serve", "--max-restarts=1", "--startup-timeout=300"]
    log = tmp_path / "serve.log"
    with open(log, "w") as output:
        server = subprocess.Popen([*command, *options], stdout=output, stderr=subprocess.STDOUT)
    children: set[int] = set()
    try:
        wait_ready(f"http://127.0.0.1:{ports['gateway']}/readyz", 330, log)
        # Ready is not yet supervised: serve's own probe may still be waiting for the answer this test
        # just had (a Triton killed then fails the start, which is not what this test is about).
        wait_for_line(log, "Ctrl-C to stop.", 60)
        children.update(descendants(server.pid))
        triton_pid = find_child(server.pid, "tritonserver")
        os.kill(triton_pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and find_child(server.pid, "tritonserver") in (None, triton_pid):
            time.sleep(0.3)
        children.update(descendants(server.pid))
        # back, without restarting serve
        wait_ready(f"http://127.0.0.1:{ports['gateway']}/readyz", 330, log)
        assert "tritonserver exited with -9; restarting" in log.read_text()
        os.kill(find_child(server.pid, "tritonserver"), signal.SIGKILL)  # a second death: over the limit
        assert server.wait(timeout=60) == 1
        assert "giving up" in log.read_text()
    finally:
        children.update(descendants(server.pid))
        server.kill()
        server.wait()
        for pid in children:  # never leave the test's own processes behind, even when it fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def find_child(pid: int, name: str) -> int | None:
    for child in descendants(pid):
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == name and alive(child):
                return child
        except OSError:
            continue
    return None
