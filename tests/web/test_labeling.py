"""The "To label" panel in a real headless chromium: the active-learning queue of the picked model,
completed from the page with a verdict or a class label, against the real embedded stack."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

pytest.importorskip("playwright", reason="pip install playwright==1.65.2 pytest-playwright==0.10.0")

from tests.gateway.test_active_learning import (  # noqa: E402
    CLASSIFIER,
    SHELF,
    encoded,
    flat_image,
    queued,
    start_labeling_gateway,
)

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def labeling_gateway(triton, tmp_path_factory):
    """A gateway whose caps leave room for every sample and which watches every classifier class."""
    process = start_labeling_gateway(triton, tmp_path_factory.mktemp("labeling-page"))
    yield process
    process.stop()


def open_feedback_page(page, gateway, model: str) -> None:
    page.goto(f"{gateway.url}/ui/?model={model}")
    page.wait_for_function(f"document.getElementById('model').value === {json.dumps(model)}")
    page.click("#tab-feedback")


def feedback_records(gateway, model: str) -> list[dict]:
    index = gateway.data_dir / "feedback" / model / "index.jsonl"
    return [json.loads(line) for line in index.read_text().splitlines()] if index.exists() else []


def test_an_uploaded_image_worth_labelling_is_listed_and_completed_with_a_verdict(page, labeling_gateway):
    with httpx.Client(base_url=labeling_gateway.url, timeout=60) as http:
        http.post(f"/v1/models/{SHELF}/images", files={"file": ("grey-card.png", flat_image())})
        (item,) = queued(http, SHELF)
    open_feedback_page(page, labeling_gateway, SHELF)
    entry = page.locator(f'#labeling-list li[data-id="{item["id"]}"]')
    entry.wait_for()
    assert "low confidence" in entry.locator(".labeling-reason").inner_text()
    thumbnail = entry.locator("img")
    page.wait_for_function("img => img.complete && img.naturalWidth === 200", arg=thumbnail.element_handle())
    assert "grey-card.png" in thumbnail.get_attribute("alt")

    # by keyboard: pick the item, choose "Wrong", complete
    entry.locator("button").focus()
    page.keyboard.press("Enter")
    assert page.locator("#labeling-form").is_visible()
    assert entry.locator("button").get_attribute("aria-pressed") == "true"
    assert page.locator("#labeling-label-row").is_hidden()  # a segmenter takes a verdict here
    page.focus("#labeling-wrong")
    page.keyboard.press("Space")
    page.focus("#labeling-submit")
    page.keyboard.press("Enter")
    entry.wait_for(state="detached")
    assert "Labelled grey-card.png" in page.locator("#labeling-status").inner_text()
    assert page.locator("#labeling-form").is_hidden()

    (record,) = [
        r for r in feedback_records(labeling_gateway, SHELF) if r.get("to_label", {}).get("id") == item["id"]
    ]
    assert (record["kind"], record["verdict"]) == ("verdict", "wrong")
    with httpx.Client(base_url=labeling_gateway.url, timeout=60) as http:
        assert queued(http, SHELF) == []


def test_a_classifier_item_is_completed_with_the_right_class(page, labeling_gateway):
    with httpx.Client(base_url=labeling_gateway.url, timeout=60) as http:
        photo = ("returned.jpg", encoded(np.full((64, 64, 3), 200, np.uint8), ".jpg"), "image/jpeg")
        http.post(f"/v1/models/{CLASSIFIER}/images", files={"file": photo})
        (item,) = queued(http, CLASSIFIER)
    open_feedback_page(page, labeling_gateway, CLASSIFIER)
    entry = page.locator(f'#labeling-list li[data-id="{item["id"]}"]')
    entry.locator("button").click()
    assert "watched class" in page.locator("#labeling-picked").inner_text()
    page.select_option("#labeling-label", "handbags")
    page.click("#labeling-submit")
    entry.wait_for(state="detached")
    (record,) = [
        r
        for r in feedback_records(labeling_gateway, CLASSIFIER)
        if r.get("to_label", {}).get("id") == item["id"]
    ]
    assert (record["kind"], record["target"]) == ("correction", {"label": "handbags"})
    assert (
        labeling_gateway.data_dir / "feedback" / CLASSIFIER / "handbags" / f"{record['id']}.png"
    ).is_file()
