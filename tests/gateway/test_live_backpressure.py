"""The live socket's back-pressure with its timing held by the test, against the real Triton.

A burst that arrives while ``MAX_IN_FLIGHT`` frames are being inferred is dropped, not queued. Through a
browser (tests/web/test_pages.py) how many frames of a burst land before an answer frees a slot depends
on the machine's load; here the socket hands the gateway the whole burst at once (as a socket whose
buffer already holds it), so the count is exact.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from clients.wire import encode_jpeg
from datagen.shelves import render_scene
from gateway.models import ModelCatalog
from gateway.settings import GatewaySettings
from gateway.web import MAX_IN_FLIGHT, _serve_frames

pytestmark = pytest.mark.triton

BURST = 8


class BurstSocket:
    """The browser's end of the live socket: each burst of frames is received without a pause between
    them; the next burst (or the close) waits until every frame of the last one is accounted for, as
    answered or as counted dropped by the server."""

    def __init__(self, bursts: list[list[bytes]]) -> None:
        self.bursts = bursts
        self.answers: list[dict] = []
        self.pending: list[bytes] = []
        self.sent = 0  # frames handed over so far
        self.settled = asyncio.Event()

    async def receive(self) -> dict:
        if not self.pending:
            await asyncio.wait_for(self.settled.wait(), timeout=60)
            if not self.bursts:
                return {"type": "websocket.disconnect"}
            self.pending, self.settled = self.bursts.pop(0), asyncio.Event()
            self.sent += len(self.pending)
        return {"type": "websocket.receive", "bytes": self.pending.pop(0)}

    async def send_text(self, text: str) -> None:
        self.answers.append(json.loads(text))
        if len(self.answers) + self.answers[-1]["dropped"] == self.sent and not self.pending:
            self.settled.set()


def shelf_jpeg(seed: int) -> bytes:
    return encode_jpeg(render_scene(seed, 384, 640).image)  # what a camera at the model's size sends


async def serve(triton_url: str, data_dir, socket: BurstSocket) -> None:
    catalog = ModelCatalog(GatewaySettings(triton_grpc_url=triton_url, data_dir=data_dir))
    catalog.open_clients()
    try:
        socket.settled.set()  # the first burst goes at once
        await _serve_frames(socket, catalog.get("shelf_segmenter"), on_result=None)
    finally:
        await catalog.close()


def test_a_burst_is_inferred_two_at_a_time_the_rest_dropped_then_frames_flow_again(triton, tmp_path):
    burst = [shelf_jpeg(300 + i) for i in range(BURST)]
    socket = BurstSocket([burst, [shelf_jpeg(400)]])
    # On a thread of its own: after a browser test, Playwright's event loop still runs on this one.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, serve(triton.grpc_url, tmp_path / "data", socket)).result(timeout=120)

    first, after = socket.answers[:MAX_IN_FLIGHT], socket.answers[MAX_IN_FLIGHT:]
    assert len(first) == MAX_IN_FLIGHT == 2 and len(after) == 1, socket.answers
    assert all(a["task"] == "segmentation" and a["mask_rle"] and "error" not in a for a in socket.answers)
    assert [a["dropped"] for a in first] == [BURST - MAX_IN_FLIGHT] * MAX_IN_FLIGHT  # counted, not queued
    assert after[0]["dropped"] == BURST - MAX_IN_FLIGHT  # the next frame is inferred: no lasting stall
