"""The Monitoring page against the real gateway's reports, in a real headless chromium: the drift
panel shows the verdict and per-feature tests that GET /v1/models/{m}/drift returns, keeps their
history over time, and a running A/B test is shown as GET /v1/models/{m}/ab reports it."""

from __future__ import annotations

import time

import cv2
import httpx
import numpy as np
import pytest

pytest.importorskip("playwright", reason="pip install playwright==1.65.2 pytest-playwright==0.10.0")

from playwright.sync_api import expect  # noqa: E402

from tests.web.test_pages import DOCS, open_model  # noqa: E402

pytestmark = [pytest.mark.triton, pytest.mark.slow]
MODEL = "shelf_segmenter"
WINDOW = 30  # the drift_gateway fixture's PRODSEG_DRIFT_WINDOW


def send_shelves(client: httpx.Client, seeds: range, darken: float = 1.0) -> None:
    """Shelf scenes at the reference's size (640x384), one client id each (so the A/B split varies)."""
    from datagen.shelves import render_scene

    for seed in seeds:
        image = (render_scene(seed, 384, 640).image * darken).astype(np.uint8)
        png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
        response = client.post(
            f"/v1/models/{MODEL}/images", files={"file": ("s.png", png)}, headers={"X-Client-Id": f"c{seed}"}
        )
        assert response.status_code == 200, response.text


def settled_report(client: httpx.Client, timeout_s: float = 60) -> dict:
    """The drift report once every image sent so far is in the window: nothing queued, then two more
    evaluations (the worker adds what it took from the queue before it evaluates again)."""
    deadline = time.monotonic() + timeout_s
    while client.get(f"/v1/models/{MODEL}/drift").json()["queued"] and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = {client.get(f"/v1/models/{MODEL}/drift").json()["evaluated_at"]}
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        seen.add(client.get(f"/v1/models/{MODEL}/drift").json()["evaluated_at"])
    assert len(seen) == 3, "the drift monitor stopped evaluating"
    return client.get(f"/v1/models/{MODEL}/drift").json()


SHOWN_FEATURES = """() => Object.fromEntries(
  [...document.querySelectorAll('#drift-features tbody tr')].map(tr => {
    const cells = [...tr.cells].map(td => td.textContent);
    return [cells[0], {test: cells[1], statistic: cells[2], p_value_corrected: cells[4], drifted: cells[5]}];
}))"""


def assert_the_panel_shows(page, report: dict) -> None:
    """Verdict, window size and every feature's test, statistic, corrected p-value and flag as shown
    (numbers rounded to 3 significant digits on the page) equal the report's."""
    expect(page.locator("#drift")).to_have_attribute("data-verdict", report["status"])
    verdict = {"ok": "no drift", "drift": "DRIFT"}[report["status"]]
    expect(page.locator("#drift-verdict")).to_have_text(f"Verdict: {verdict}")
    assert f"{report['samples']} of {WINDOW}" in page.locator("#drift").text_content()
    shown = page.evaluate(SHOWN_FEATURES)
    assert set(shown) == set(report["features"]), "the page lists exactly the report's features"
    for name, result in report["features"].items():
        row = shown[name]
        assert row["test"] == result["test"], name
        assert float(row["statistic"]) == pytest.approx(result["statistic"], rel=0.01, abs=1e-12), name
        corrected = float(row["p_value_corrected"])
        assert corrected == pytest.approx(result["p_value_corrected"], rel=0.01, abs=1e-300), name
        assert row["drifted"] == ("yes" if result["drifted"] else "no"), name
    drifted = page.locator("#drift-features tr.drifted td:first-child").all_text_contents()
    assert sorted(drifted) == sorted(report["drifted_features"])


def test_the_drift_panel_shows_the_gateways_report_its_history_and_the_ab_test(page, drift_gateway):
    with httpx.Client(base_url=drift_gateway.url, timeout=60) as client:
        versions = next(m for m in client.get("/v1/models").json()["models"] if m["name"] == MODEL)
        first, second = (str(v) for v in versions["versions"]["ready"][-2:])
        started = client.put(f"/v1/models/{MODEL}/ab", json={"weights": {first: 50, second: 50}})
        assert started.status_code == 200, started.text

        # Undrifted scenes fill the window: the page shows whatever verdict the gateway reached.
        send_shelves(client, range(5000, 5000 + WINDOW))
        undrifted = settled_report(client)
        assert undrifted["samples"] == WINDOW and undrifted["status"] in ("ok", "drift")
        open_model(page, drift_gateway, MODEL)
        page.click("#tab-monitoring")
        assert_the_panel_shows(page, undrifted)

        ab = client.get(f"/v1/models/{MODEL}/ab").json()
        rows = page.locator("#ab-versions tbody tr").evaluate_all(
            "rows => rows.map(r => [...r.cells].slice(0, 4).map(c => c.textContent))"
        )
        assert rows == [
            [version, f"{ab['weights'][version]}%", str(v["requests"]), str(v["errors"])]
            for version, v in ab["versions"].items()
        ]
        assert sum(v["requests"] for v in ab["versions"].values()) == WINDOW
        assert page.locator("#ab-tests tbody tr").count() == 3

        # Darkened scenes replace the window: the gateway says drift, and so does the page.
        send_shelves(client, range(6000, 6000 + WINDOW), darken=0.25)
        drifted = settled_report(client)
        assert drifted["status"] == "drift", "a window of images at a quarter of the light must drift"
        page.click("#monitoring-refresh")
        assert_the_panel_shows(page, drifted)
        assert "brightness" in drifted["drifted_features"]

        # History: the gateway's recent verdicts, both among them, are what the page plots.
        history = client.get(f"/v1/models/{MODEL}/drift").json()["history"]
    times = [point["evaluated_at"] for point in history]
    assert times == sorted(times)
    statuses = [point["status"] for point in history]
    assert undrifted["status"] in statuses and statuses[-1] == "drift"
    assert history[-1]["drifted"] == len(drifted["drifted_features"])
    plotted = int(page.locator("#drift-plot").get_attribute("data-points"))
    assert 2 <= plotted <= len(history)  # the page's copy was fetched just before this one
    assert page.locator("#drift-plot canvas").count() >= 1, "the history is drawn"
    page.locator("#page-monitoring h3").first.evaluate("h => h.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(DOCS / "web-drift.png"))
