"""Corrections drawn on a result in a real headless chromium: boxes drawn with the mouse (and typed
from the keyboard) on a detector's result, a mask painted over a segmenter's prediction; each is
checked in the file the gateway's feedback store wrote (the training data it becomes)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

pytest.importorskip("playwright", reason="pip install playwright==1.65.2 pytest-playwright==0.10.0")

from playwright.sync_api import expect  # noqa: E402

from tests.web.test_pages import DOCS, open_model, shelf_png, submit_images  # noqa: E402

pytestmark = pytest.mark.triton

DETECTOR_LABELS = ["with_mask", "without_mask", "mask_worn_incorrectly"]  # mask_detector's label map


def to_screen(canvas, x: float, y: float) -> tuple[float, float]:
    """Image pixels -> page coordinates of the (scaled) canvas, as a mouse would point at them."""
    box = canvas.bounding_box()
    width, height = canvas.evaluate("c => [c.width, c.height]")
    return box["x"] + x * box["width"] / width, box["y"] + y * box["height"] / height


def drag(page, canvas, start: tuple[float, float], end: tuple[float, float], steps: int = 12) -> None:
    canvas.scroll_into_view_if_needed()
    page.mouse.move(*to_screen(canvas, *start))
    page.mouse.down()
    page.mouse.move(*to_screen(canvas, *end), steps=steps)
    page.mouse.up()


def stored_feedback(gateway, model: str, card) -> tuple[str, dict]:
    """The id of the entry the page just stored, and its index record."""
    card.locator(".feedback-status", has_text="feedback stored").wait_for()
    entry = card.locator("form.feedback").get_attribute("data-feedback-id")
    index = gateway.data_dir / "feedback" / model / "index.jsonl"
    records = [json.loads(line) for line in index.read_text().splitlines()]
    return entry, next(r for r in records if r["id"] == entry)


def label_file(gateway, entry: str) -> Path:
    from tests.web.task_models import DETECTOR

    return gateway.data_dir / "feedback" / DETECTOR / "labels" / f"{entry}.txt"


def yolo_boxes(path: Path, width: int, height: int) -> list[tuple[int, list[float]]]:
    """A YOLO label file back in image pixels: (class id, [x1, y1, x2, y2])."""
    boxes = []
    for line in path.read_text().split("\n"):
        if line.strip():
            class_id, cx, cy, w, h = line.split()
            cx, cy, w, h = float(cx) * width, float(cy) * height, float(w) * width, float(h) * height
            boxes.append((int(class_id), [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    return boxes


def test_a_box_drawn_with_the_mouse_becomes_a_yolo_label(page, task_gateway, tmp_path):
    from tests.web.task_models import BOXES, DETECTOR

    width, height = 416, 320  # the model's own size: the fixed boxes are in these pixels
    open_model(page, task_gateway, DETECTOR)
    submit_images(page, [shelf_png(tmp_path, 7, "faces.png", (height, width))])
    card = page.locator("#image-results article").first
    card.get_by_text("Draw boxes on the image").click()
    canvas = card.locator("canvas")
    expect(canvas).to_have_attribute("data-editing", "boxes")  # the toggle event comes a task later
    edited = canvas.get_attribute("data-edited-boxes")
    assert edited == str(len(BOXES)), "the editor starts from the prediction"

    card.get_by_role("button", name="Delete box 2").click()  # the second predicted box is wrong...
    card.get_by_label("Class of new boxes").select_option("mask_worn_incorrectly")
    drawn = [250.0, 40.0, 390.0, 130.0]  # ...and a face it missed is drawn by mouse, right to left
    drag(page, canvas, (drawn[2], drawn[3]), (drawn[0], drawn[1]))
    assert canvas.get_attribute("data-edited-boxes") == "2"
    typed = [float(card.get_by_label(f"Box 2 {name}").input_value()) for name in ("x1", "y1", "x2", "y2")]
    assert typed == pytest.approx(drawn, abs=2), "the drawn box is listed in image pixels"
    card.get_by_role("button", name="Send boxes").click()

    entry, record = stored_feedback(task_gateway, DETECTOR, card)
    assert record["kind"] == "correction" and record["verdict"] == "wrong"
    labels = yolo_boxes(label_file(task_gateway, entry), width, height)
    (kept_box, kept_class, _) = BOXES[0]
    worn = DETECTOR_LABELS.index("mask_worn_incorrectly")
    assert [class_id for class_id, _ in labels] == [kept_class, worn]
    assert labels[0][1] == pytest.approx(kept_box, abs=0.05), "the kept prediction is stored as it was"
    assert labels[1][1] == pytest.approx(drawn, abs=2), "the drawn box is stored within 2 px"
    canvas.evaluate("c => c.scrollIntoView({block: 'start'})")  # the image and its editor, at 1280x800
    page.screenshot(path=str(DOCS / "web-corrections-boxes.png"))


def test_boxes_can_be_added_and_typed_from_the_keyboard(page, task_gateway, tmp_path):
    from tests.web.task_models import DETECTOR

    width, height = 416, 320
    open_model(page, task_gateway, DETECTOR)
    submit_images(page, [shelf_png(tmp_path, 8, "keys.png", (height, width))])
    card = page.locator("#image-results article").first
    card.locator("summary").focus()
    page.keyboard.press("Enter")  # opens the editor
    for number in (2, 1):  # delete both predicted boxes
        card.get_by_role("button", name=f"Delete box {number}").focus()
        page.keyboard.press("Enter")
    card.get_by_role("button", name="Add a box").focus()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Box 1 x1"
    for value in ("10", "20", "110", "90"):  # x1, y1, x2, y2: typed, Tab to the next field
        page.keyboard.press("Control+a")
        page.keyboard.type(value)
        page.keyboard.press("Tab")
    page.keyboard.press("ArrowDown")  # the class select has focus: the next class
    card.get_by_role("button", name="Send boxes").focus()
    page.keyboard.press("Enter")

    entry, _ = stored_feedback(task_gateway, DETECTOR, card)
    labels = yolo_boxes(label_file(task_gateway, entry), width, height)
    assert len(labels) == 1
    assert labels[0][0] == 1 and labels[0][1] == pytest.approx([10, 20, 110, 90], abs=0.01)


def test_a_mask_painted_over_the_prediction_is_stored_with_the_prediction_elsewhere(page, gateway, tmp_path):
    model = "shelf_segmenter"
    image = shelf_png(tmp_path, 9, "paint.png", (300, 420))
    predicted = cv2.imdecode(
        np.frombuffer(
            httpx.post(
                f"{gateway.url}/v1/models/{model}/images",
                params={"format": "png"},
                files={"file": ("paint.png", image.read_bytes())},
                timeout=60,
            ).content,
            np.uint8,
        ),
        cv2.IMREAD_UNCHANGED,
    )
    assert predicted.shape == (300, 420)
    price_tag = 3  # shelf_segmenter's label map: background, product, shelf_edge, price_tag

    open_model(page, gateway, model)
    submit_images(page, [image])
    card = page.locator("#image-results article").first
    card.get_by_text("Paint a corrected mask").click()
    canvas = card.locator("canvas")
    expect(canvas).to_have_attribute("data-editing", "mask")
    card.get_by_label("Brush class").select_option("price_tag")
    card.get_by_label("Brush size").fill("20")  # diameter in image pixels
    y, x_from, x_to = 150.0, 100.0, 300.0
    drag(page, canvas, (x_from, y), (x_to, y), steps=20)
    # The keyboard's brush starts where the mouse left it: 8 steps of 5 px down, then Space paints.
    canvas.focus()
    for _ in range(8):
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Space")
    card.get_by_role("button", name="Send painted mask").click()

    entry, record = stored_feedback(gateway, model, card)
    assert record["kind"] == "correction"
    mask_file = gateway.data_dir / "feedback" / model / "masks" / f"{entry}.png"
    stored = cv2.imread(str(mask_file), cv2.IMREAD_UNCHANGED)
    assert stored.shape == predicted.shape, "the painted mask has the image's size"
    # The stroke: within ~6 px of the line from (100, 150) to (300, 150), with 2 px for the mouse's
    # mapping through the scaled canvas; outside ~14 px of it, the painting left the prediction alone.
    rows, columns = np.mgrid[0:300, 0:420]
    along = np.clip(columns, x_from, x_to)
    distance = np.hypot(columns - along, rows - y)
    assert (stored[distance <= 6] == price_tag).all(), "the painted stroke is not price_tag everywhere"
    # The keyboard's stamp: a disc around (300, 190) (the mouse's end, 40 px down), give or take the
    # mouse's 2 px.
    stamp = np.hypot(columns - x_to, rows - (y + 40))
    assert (stored[stamp <= 6] == price_tag).all(), "Space did not paint at the keyboard's brush"
    outside = (distance > 14) & (stamp > 14)
    assert (stored[outside] == predicted[outside]).all(), "away from the strokes, the prediction changed"
    assert (predicted[distance <= 6] != price_tag).any(), (
        "the stroke changed nothing: a test that cannot fail"
    )
    canvas.evaluate("c => c.scrollIntoView({block: 'start'})")  # the image and its editor, at 1280x800
    page.screenshot(path=str(DOCS / "web-corrections-mask.png"))
