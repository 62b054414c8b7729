"""The async gRPC client and the video pipeline, straight to the real embedded Triton."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from clients.evaluation import ConfusionMatrix
from clients.masks import read_mask_archive
from clients.pipeline import process_video
from clients.triton_client import InferenceError, TritonModelClient
from clients.video import frames, probe
from tests.conftest import MIOU_FLOOR

pytestmark = pytest.mark.triton


@pytest.mark.parametrize(("max_in_flight", "frames_per_request"), [(1, 1), (3, 4)])
def test_video_through_grpc_matches_ground_truth(
    triton, shelf_video, contract, tmp_path, max_in_flight, frames_per_request
):
    overlay, masks = tmp_path / "overlay.mp4", tmp_path / "masks.zip"
    progress: list[int] = []

    async def run():
        async with TritonModelClient(triton.grpc_url, contract, max_in_flight, frames_per_request) as client:
            return await process_video(
                shelf_video.video, tmp_path, client, chunk_size=5, on_progress=progress.append
            )

    stats = asyncio.run(run())
    assert stats.frames == shelf_video.frames
    assert progress[-1] == shelf_video.frames and progress == sorted(progress)
    assert probe(overlay).frames == shelf_video.frames
    assert sum(1 for _ in frames(overlay)) == shelf_video.frames
    matrix = ConfusionMatrix(contract.num_classes)
    for predicted, truth in zip(read_mask_archive(masks), read_mask_archive(shelf_video.masks), strict=True):
        matrix.update(predicted, truth)
    assert matrix.miou() > MIOU_FLOOR
    timeline = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    assert [row["frame"] for row in timeline] == list(range(shelf_video.frames))
    assert set(timeline[0]["class_shares"]) == set(contract.labels.names)


def test_results_come_back_in_order_with_timings(triton, contract):
    from datagen.shelves import render_scene

    scenes = [render_scene(seed, contract.height, contract.width) for seed in range(6)]

    async def run():
        async with TritonModelClient(triton.grpc_url, contract, max_in_flight=3) as client:
            return [result async for result in client.stream(scene.image for scene in scenes)]

    results = asyncio.run(run())
    assert [r.frame_index for r in results] == list(range(6))
    for result, scene in zip(results, scenes, strict=True):
        assert (result.mask == scene.mask).mean() > 0.8  # each mask belongs to its own frame
        assert set(result.timings) == {"preprocess", "infer", "postprocess"}


def test_wrong_dtype_is_an_inference_error_with_tritons_reason(triton, contract):
    async def run():
        async with TritonModelClient(triton.grpc_url, contract) as client:
            await client.infer(np.zeros((1, contract.height, contract.width, 3), np.float32))

    with pytest.raises(InferenceError, match="data-type is 'FP32'"):
        asyncio.run(run())


def test_frames_per_request_cannot_exceed_the_models_batch(contract):
    with pytest.raises(ValueError, match="max_batch_size"):
        TritonModelClient("127.0.0.1:1", contract, frames_per_request=contract.max_batch_size + 1)
