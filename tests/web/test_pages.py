"""The web pages in a real headless chromium, against the real embedded stack (Triton + gateway).

Each test drives the page as a user would (pick a model, choose files, press buttons) and checks what
the page drew or played, and what arrived at the gateway.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

pytest.importorskip("playwright", reason="pip install playwright==1.65.2 pytest-playwright==0.10.0")

from clients.atomic import write_text  # noqa: E402
from clients.contract import default_repository  # noqa: E402
from clients.repository import discover, versions  # noqa: E402
from tests.web.conftest import PHONE  # noqa: E402

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]
# The screenshots and the live page's figures refresh docs/ and benchmarks/results/ only when asked
# (`make docs-screens`); otherwise they go to out/, so a test run leaves the working tree as it was.
PUBLISH = os.environ.get("PRODSEG_PUBLISH_SCREENS") == "1"
DOCS = ROOT / "docs" if PUBLISH else ROOT / "out" / "docs"
LIVE_RESULTS = (ROOT / "benchmarks" / "results" if PUBLISH else DOCS) / "web_live.json"
# The models the embedded Triton serves: every valid one with a published version.
CONTRACTS = {
    name: contract for name, contract in discover().contracts.items() if versions(default_repository() / name)
}


def shelf_png(directory: Path, seed: int, name: str, size: tuple[int, int] = (300, 420)) -> Path:
    from datagen.shelves import render_scene

    image = cv2.resize(render_scene(seed, 384, 640).image, (size[1], size[0]))
    path = directory / name
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def open_model(page, gateway, name: str) -> None:
    page.goto(f"{gateway.url}/ui/?model={name}")
    page.wait_for_function(f"document.getElementById('model').value === {json.dumps(name)}")


@pytest.fixture
def http(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


def test_root_redirects_to_the_pages_and_the_pages_stay_out_of_the_api_document(http):
    response = http.get("/", follow_redirects=False)
    assert response.status_code in (302, 307) and response.headers["location"] == "/ui/"
    assert http.get("/ui/").headers["content-type"].startswith("text/html")
    paths = http.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/ui") or path.endswith("/live")]


def test_the_picker_lists_every_model_with_its_task_and_the_legend_uses_the_label_colours(
    page, gateway, http
):
    listed = http.get("/v1/models").json()
    page.goto(f"{gateway.url}/ui/")
    page.wait_for_function("document.getElementById('model').options.length > 0")
    options = page.locator("#model option").evaluate_all("os => os.map(o => [o.value, o.textContent])")
    assert options == [[m["name"], f"{m['name']} ({m['task']})"] for m in listed["models"]]
    assert page.locator("#model").input_value() == listed["default_model"]
    default = next(m for m in listed["models"] if m["default"])
    swatches = page.locator("#legend span").evaluate_all(
        "spans => spans.map(s => [s.textContent, s.style.getPropertyValue('--swatch')])"
    )
    assert swatches == [[label["name"], label["color"]] for label in default["labels"]]
    assert "version" in page.locator("#model-info").text_content()


CHANGED_PIXELS = """(canvas) => new Promise(async (resolve) => {
    // How many pixels of the drawn result differ from the plain image: what the annotation covers.
    const file = document.getElementById('image-files').files[0];
    const plain = new OffscreenCanvas(canvas.width, canvas.height).getContext('2d');
    plain.drawImage(await createImageBitmap(file), 0, 0, canvas.width, canvas.height);
    const a = plain.getImageData(0, 0, canvas.width, canvas.height).data;
    const b = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let changed = 0;
    for (let i = 0; i < a.length; i += 4) changed += Math.abs(a[i] - b[i]) + Math.abs(a[i+1] - b[i+1]) > 30;
    resolve(changed);
})"""


def submit_images(page, files: list[Path]) -> None:
    page.set_input_files("#image-files", [str(f) for f in files])
    page.click("#images-submit")
    page.wait_for_function(f"document.querySelectorAll('#image-results canvas').length === {len(files)}")


def test_segmentation_masks_are_drawn_in_the_label_colours_and_downloadable(page, gateway, tmp_path):
    files = [shelf_png(tmp_path, 1, "a.png"), shelf_png(tmp_path, 2, "b.png", (200, 200))]
    open_model(page, gateway, "shelf_segmenter")
    submit_images(page, files)
    canvases = page.locator("#image-results canvas")
    sizes = canvases.evaluate_all("cs => cs.map(c => [c.width, c.height])")
    assert sizes == [[420, 300], [200, 200]], "each image is drawn at its own size"
    painted = int(canvases.first.get_attribute("data-painted-pixels"))
    assert painted > 0.3 * 420 * 300, (
        f"a shelf is mostly products and edges, but only {painted} px are painted"
    )
    changed = canvases.first.evaluate(CHANGED_PIXELS)
    assert changed > 0.5 * painted, f"the mask is not visible: {changed} px changed of {painted} painted"
    masks = page.locator("#images-downloads a", has_text="(PNG)")
    assert masks.count() == 2
    with page.expect_download() as download:
        masks.first.click()
    ids = cv2.imread(download.value.path(), cv2.IMREAD_UNCHANGED)
    assert ids.shape == (300, 420), "a one-channel PNG of class ids at the image's size"
    assert set(np.unique(ids)) <= set(range(len(CONTRACTS["shelf_segmenter"].labels)))
    assert (ids > 0).sum() == painted, "the PNG holds the same mask as the overlay"
    # That PNG goes back as the corrected mask, and the gateway's feedback store takes it.
    before = httpx.get(f"{gateway.url}/v1/models/shelf_segmenter/feedback").json()
    card = page.locator("#image-results article").first
    card.get_by_label("Corrected mask (PNG of class ids)").set_input_files(download.value.path())
    card.get_by_role("button", name="Send mask").click()
    card.locator(".feedback-status", has_text="feedback stored").wait_for()
    after = httpx.get(f"{gateway.url}/v1/models/shelf_segmenter/feedback").json()
    assert after["corrections"] == before["corrections"] + 1
    assert page.locator("#images-downloads a", has_text="JSON").count() == 1
    page.screenshot(path=str(DOCS / "web-images.png"), full_page=True)


def test_detections_are_drawn_as_boxes_in_image_pixels(page, task_gateway, tmp_path):
    from tests.web.task_models import BOXES, DETECTOR

    open_model(page, task_gateway, DETECTOR)
    assert page.locator("#confidence-row").is_visible()
    page.locator("#confidence").evaluate(  # both fixed boxes score above it
        "e => { e.value = '0.5'; e.dispatchEvent(new Event('input')); }"
    )
    submit_images(page, [shelf_png(tmp_path, 4, "boxes.png", (640, 832))])  # twice the model's size
    canvas = page.locator("#image-results canvas").first
    assert canvas.get_attribute("data-boxes") == str(len(BOXES))
    (x1, y1, _, _), class_id, _ = BOXES[0]
    colour = [int(c * 255) for c in (0x2E / 255, 0xCC / 255, 0x40 / 255)]  # with_mask #2ecc40
    left_edge = canvas.evaluate(
        f"c => Array.from(c.getContext('2d').getImageData({2 * x1}, {2 * y1 + 40}, 1, 1).data.slice(0, 3))"
    )
    assert left_edge == colour, f"box 1's left edge at x={2 * x1} is not drawn in its label colour"
    with page.expect_download() as download:
        page.locator("#images-downloads a", has_text="CSV").click()
    rows = Path(download.value.path()).read_text().splitlines()
    assert rows[0] == "filename,label,score,x1,y1,x2,y2" and len(rows) == 1 + len(BOXES)
    assert rows[1].split(",")[:2] == ["boxes.png", "with_mask"] and float(rows[1].split(",")[3]) == 2 * x1
    page.screenshot(path=str(DOCS / "web-detection.png"), full_page=True)


def test_classification_draws_the_label_and_offers_a_csv_and_a_correction(page, task_gateway, tmp_path):
    from tests.web.task_models import CLASSIFIER

    open_model(page, task_gateway, CLASSIFIER)
    assert not page.locator("#confidence-row").is_visible(), "a classifier takes no minimum score"
    submit_images(page, [shelf_png(tmp_path, 5, "one.png", (120, 160)), shelf_png(tmp_path, 6, "two.png")])
    labels = page.locator("#image-results canvas").evaluate_all("cs => cs.map(c => c.dataset.label)")
    assert labels == ["high_engagement", "high_engagement"]
    assert "high_engagement (70.0%)" in page.locator("#image-results .summary").first.text_content()
    with page.expect_download() as download:
        page.locator("#images-downloads a", has_text="CSV").click()
    rows = Path(download.value.path()).read_text().splitlines()
    header, *rows = list(csv.reader(Path(download.value.path()).read_text().splitlines()))
    assert header == ["filename", "label", "confidence", "low_engagement", "high_engagement"]
    assert [row[:2] for row in rows] == [["one.png", "high_engagement"], ["two.png", "high_engagement"]]
    assert [float(p) for p in rows[0][2:]] == pytest.approx([0.7, 0.3, 0.7], abs=1e-4)
    before = httpx.get(f"{task_gateway.url}/v1/models/{CLASSIFIER}/feedback").json()
    card = page.locator("#image-results article").first
    card.get_by_label("Correct class").select_option("low_engagement")
    card.get_by_role("button", name="Send correction").click()
    card.locator(".feedback-status", has_text="feedback stored").wait_for()
    after = httpx.get(f"{task_gateway.url}/v1/models/{CLASSIFIER}/feedback").json()
    assert after["corrections"] == before["corrections"] + 1
    page.screenshot(path=str(DOCS / "web-classification.png"), full_page=True)


def test_a_video_uploaded_in_the_page_plays_side_by_side_with_its_overlay(page, gateway, shelf_video, http):
    import av

    open_model(page, gateway, "shelf_segmenter")
    page.click("#tab-video")
    page.set_input_files("#video-file", str(shelf_video.video))
    page.click("#video-submit")
    page.wait_for_function("document.getElementById('video-overlay').readyState >= 3", timeout=90_000)
    overlay = page.locator("#video-overlay")
    overlay.evaluate("v => v.play()")
    first = overlay.evaluate("v => v.currentTime")
    page.wait_for_function(f"document.getElementById('video-overlay').currentTime > {first} + 0.3")
    assert overlay.evaluate("v => [v.videoWidth, v.videoHeight]") == [640, 384]
    assert page.locator("#video-plot").get_attribute("data-points") == str(shelf_video.frames)
    links = page.locator("#video-downloads a").evaluate_all("as => as.map(a => a.download)")
    assert set(links) == {"overlay.mp4", "masks.zip", "timeline.jsonl"}
    overlay.evaluate("v => v.pause()")
    page.screenshot(path=str(DOCS / "web-video.png"), full_page=True)

    # What the page played is what the job wrote: H.264 by libx264, yuv420p, moov before mdat.
    data = http.get(overlay.get_attribute("src")).content
    assert b"x264 - core" in data, "the overlay was not encoded by libx264"
    assert data.index(b"moov") < data.index(b"mdat"), "the overlay lacks +faststart"
    path = ROOT / "out" / "web-overlay-probe.mp4"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.codec_context.profile in ("Baseline", "Constrained Baseline", "Main", "High")
    path.unlink()


def test_the_fake_camera_is_annotated_live_with_fps_and_latency(page, gateway):
    open_model(page, gateway, "shelf_segmenter")
    page.click("#tab-live")
    page.click("#live-start")
    started = time.perf_counter()
    page.wait_for_function(
        "Number(document.getElementById('live-stats').dataset.frames || 0) >= 40", timeout=60_000
    )
    seconds = time.perf_counter() - started
    stats = page.locator("#live-stats").evaluate("e => ({...e.dataset})")
    page.screenshot(path=str(DOCS / "web-live.png"), full_page=True)
    page.click("#live-stop")
    fps, latency_ms = float(stats["fps"]), float(stats["latencyMs"])
    assert fps > 0 and latency_ms > 0  # the page shows its rates (their size is the benchmarks')
    painted = page.locator("#live-canvas").evaluate(
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                  for (let i = 0; i < d.length; i += 4) n += d[i] + d[i+1] + d[i+2] > 0; return n; }"""
    )
    assert painted > 0.5 * 640 * 480, "the live canvas shows no frame"
    suite = ROOT / "benchmarks" / "results" / "suite.json"  # the gRPC client's figures, from `make bench`
    grpc = (
        json.loads(suite.read_text())["medians"]["triton_grpc"]["triton_grpc_1x1"] if suite.exists() else None
    )
    result = {
        "what": "live camera in headless chromium: fake camera (Y4M of generated shelves, 640x480) -> JPEG "
        "-> WebSocket -> gateway -> Triton (shelf_segmenter, CPU) -> mask drawn on a canvas; one frame "
        "in flight per socket",
        "frames": int(stats["frames"]),
        "seconds_to_40_frames": round(seconds, 2),
        "fps_last_30": fps,
        "latency_ms_median_last_30": {
            "page_round_trip": latency_ms,
            "gateway": float(stats["gatewayMs"]),
            "triton_request": float(stats["inferenceMs"]),
        },
        "dropped_by_server": int(stats["dropped"]),
        "grpc_client_1_in_flight_for_comparison": grpc
        and grpc
        | {"source": "benchmarks/results/suite.json medians.triton_grpc.triton_grpc_1x1 (make bench)"},
        "machine": "2 CPU cores shared with the test run and other work; embedded Triton 2.51 (python "
        "backend, OpenVINO); headless chromium on the same cores",
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the same cores slows all of it
    }
    write_text(LIVE_RESULTS, json.dumps(result, indent=2) + "\n")


def test_feedback_sent_from_the_page_arrives_in_the_feedback_store(page, gateway, http, tmp_path):
    before = http.get("/v1/models/shelf_segmenter/feedback").json()
    open_model(page, gateway, "shelf_segmenter")
    page.set_input_files("#image-files", str(shelf_png(tmp_path, 3, "c.png")))
    page.click("#images-submit")
    card = page.locator("#image-results article").first
    card.get_by_role("button", name="Wrong").click()
    card.locator(".feedback-status", has_text="feedback stored").wait_for()
    after = http.get("/v1/models/shelf_segmenter/feedback").json()
    assert after["total"] == before["total"] + 1 and after["wrong"] == before["wrong"] + 1
    page.click("#tab-feedback")
    page.wait_for_function(f"document.getElementById('feedback-counts').dataset.total === '{after['total']}'")
    page.screenshot(path=str(DOCS / "web-feedback.png"), full_page=True)


def test_a_bad_file_shows_the_gateways_error_message(page, gateway, http, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    expected = http.post(
        "/v1/models/shelf_segmenter/images",
        params={"format": "json"},
        files={"file": ("notes.png", bad.read_bytes())},
    ).json()["error"]["message"]
    open_model(page, gateway, "shelf_segmenter")
    page.set_input_files("#image-files", str(bad))
    page.click("#images-submit")
    banner = page.get_by_role("alert")
    banner.wait_for()
    assert expected in banner.text_content() and banner.text_content().startswith("415")


def test_monitoring_shows_reports_or_says_what_is_not_available(page, gateway):
    open_model(page, gateway, "shelf_segmenter")
    page.click("#tab-monitoring")
    for section in ("#drift", "#ab", "#retrain"):
        page.wait_for_function(f"document.querySelector('{section}').textContent.trim().length > 0")
    assert "No A/B test is running" in page.locator("#ab").text_content()
    assert page.locator("#metrics-link").get_attribute("href") == "/metrics"
    assert not page.locator("#grafana").is_visible(), "no Grafana link unless PRODSEG_GRAFANA_URL is set"
    page.screenshot(path=str(DOCS / "web-monitoring.png"), full_page=True)


def test_a_batch_job_runs_from_the_page_and_its_csv_downloads(page, gateway, http, tmp_path):
    if http.post("/v1/models/shelf_segmenter/batches").status_code in (404, 405):
        pytest.skip("this gateway has no batch route")
    images = [shelf_png(tmp_path, 20 + i, f"shelf{i}.png") for i in range(3)]
    open_model(page, gateway, "shelf_segmenter")
    page.click("#tab-monitoring")
    page.set_input_files("#batch-files", [str(path) for path in images])
    page.get_by_role("button", name="Run batch").click()
    csv_link = page.locator("#batch-downloads a", has_text="predictions.csv")
    csv_link.wait_for(timeout=60_000)
    assert page.locator("#batch-progress").evaluate("p => p.value") == 1
    with page.expect_download() as download:
        csv_link.click()
    rows = list(csv.DictReader(Path(download.value.path()).read_text().splitlines()))
    assert len(rows) == 3 and all(any("shelf" in str(v) for v in row.values()) for row in rows)


def test_the_page_fits_a_phone_and_works_from_the_keyboard(page, gateway):
    page.set_viewport_size(PHONE)
    open_model(page, gateway, "shelf_segmenter")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.focus("#tab-images")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-video"
    assert page.locator("#page-video").is_visible() and not page.locator("#page-images").is_visible()
    for control in ("model", "video-file", "image-files", "confidence", "key-input"):
        assert page.locator(f"label[for='{control}']").count() == 1, f"#{control} has no label"
    page.screenshot(path=str(DOCS / "web-phone.png"), full_page=True)


def test_live_frames_sent_one_at_a_time_are_each_answered_none_dropped(page, gateway):
    """A page that sends a frame after each answer (as the live page does) gets every frame inferred,
    each answer saying its latency; how long that takes is the benchmarks' business, not a test's."""
    open_model(page, gateway, "shelf_segmenter")
    answers = page.evaluate(
        """async () => {
            const c = new OffscreenCanvas(320, 240); c.getContext('2d').fillRect(0, 0, 320, 240);
            const jpeg = await (await c.convertToBlob({type: 'image/jpeg'})).arrayBuffer();
            const ws = new WebSocket(`ws://${location.host}/v1/models/shelf_segmenter/live`);
            ws.binaryType = 'arraybuffer';
            await new Promise(r => ws.onopen = r);
            const out = [];
            for (let i = 0; i < 5; i++) {
                const answer = new Promise(r => ws.onmessage = e => r(JSON.parse(e.data)));
                ws.send(jpeg);
                const a = await answer;
                out.push([a.task, a.width, a.height, a.latency_ms, a.dropped]);
            }
            ws.close();
            return out;
        }"""
    )
    assert [(task, w, h, dropped) for task, w, h, _, dropped in answers] == [
        ("segmentation", 320, 240, 0)
    ] * 5
    assert all(ms > 0 for _, _, _, ms, _ in answers)


def test_a_burst_of_frames_is_partly_dropped_not_queued_and_every_frame_accounted_for(page, gateway):
    # How many frames of the burst arrive before an answer frees a slot depends on the machine's load;
    # the exact limit (two in flight) is held in tests/gateway/test_live_backpressure.py.
    open_model(page, gateway, "shelf_segmenter")
    answered, dropped = page.evaluate(
        """async () => {
            const c = new OffscreenCanvas(320, 240); c.getContext('2d').fillRect(0, 0, 320, 240);
            const jpeg = await (await c.convertToBlob({type: 'image/jpeg'})).arrayBuffer();
            const ws = new WebSocket(`ws://${location.host}/v1/models/shelf_segmenter/live`);
            ws.binaryType = 'arraybuffer';
            await new Promise(r => ws.onopen = r);
            const answers = [];
            const done = new Promise(r => ws.onmessage = e => {
                answers.push(JSON.parse(e.data));
                if (answers.length + answers.at(-1).dropped === 8) r();
            });
            for (let i = 0; i < 8; i++) ws.send(jpeg);  // far faster than the model
            await done;
            ws.close();
            return [answers.length, answers.at(-1).dropped];
        }"""
    )
    assert answered + dropped == 8 and dropped > 0, f"{answered} answered, {dropped} dropped"
