"""Temporal reuse (clients.temporal): motion, propagation, keyframe choice; then on the real Triton."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from clients.evaluation import ConfusionMatrix
from clients.live import stream_live
from clients.masks import read_mask_archive
from clients.pipeline import process_video
from clients.results import Classification, Detections, FrameResult, Segmentation
from clients.temporal import (
    MAX_INTERVAL_LIMIT,
    Direction,
    FrameView,
    KeyframePlanner,
    KeyframeReuse,
    LiveReuse,
    MotionEstimator,
    MotionModel,
    ReuseSettings,
    composed_backward,
    covered,
    propagate,
    propagate_between,
)
from clients.triton_client import TritonModelClient
from clients.video import frames, probe
from datagen.shelves import render_pan_frames, render_scene

HEIGHT, WIDTH = 192, 320
AUTO = ReuseSettings("auto")


def shelf(seed: int = 3) -> np.ndarray:
    return render_scene(seed, HEIGHT, WIDTH).image


def warp(image: np.ndarray, matrix: np.ndarray, nearest: bool = False) -> np.ndarray:
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(
        image, matrix, (image.shape[1], image.shape[0]), flags=flags, borderMode=cv2.BORDER_REFLECT
    )


def estimate(model: MotionModel, before: np.ndarray, after: np.ndarray):
    return MotionEstimator(model).estimate(FrameView.of(before), FrameView.of(after))


# ---- motion -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(MotionModel))
def test_a_known_translation_is_recovered(model):
    moved = np.array([[1, 0, -17.0], [0, 1, 6.0]])
    motion = estimate(model, shelf(), warp(shelf(), moved))
    np.testing.assert_allclose(motion.matrix, moved, atol=0.7)
    assert motion.mismatch < 0.1
    assert motion.uncovered == pytest.approx(1 - (WIDTH - 17) * (HEIGHT - 6) / (WIDTH * HEIGHT), abs=0.02)


def test_a_known_rotation_and_zoom_is_recovered_by_the_similarity_model():
    moved = cv2.getRotationMatrix2D((WIDTH / 2, HEIGHT / 2), 4.0, 1.06)
    motion = estimate(MotionModel.SIMILARITY, shelf(), warp(shelf(), moved))
    np.testing.assert_allclose(motion.matrix[:, :2], moved[:, :2], atol=0.01)
    np.testing.assert_allclose(motion.matrix[:, 2], moved[:, 2], atol=1.5)
    assert motion.mismatch < 0.1


def test_the_translation_model_reports_a_rotation_as_mismatch():
    moved = cv2.getRotationMatrix2D((WIDTH / 2, HEIGHT / 2), 8.0, 1.0)
    motion = estimate(MotionModel.TRANSLATION, shelf(), warp(shelf(), moved))
    assert motion.mismatch > AUTO.tolerance * 0.15  # the planner will infer this frame


def test_a_scene_cut_forces_a_keyframe():
    planner = KeyframePlanner(AUTO, Direction.LIVE)
    planner.adopt(planner.plan(shelf(3)))
    assert not planner.plan(shelf(3)).keyframe  # the same view: carried
    cut = planner.plan(shelf(4))  # another shelf altogether
    assert cut.keyframe and cut.reason in {"scene_change", "mismatch"}
    dark = planner.plan((shelf(3) * 0.2).astype(np.uint8))  # the lights went out
    assert dark.keyframe and dark.reason in {"scene_change", "mismatch"}


# ---- propagation --------------------------------------------------------------------------------------


def pan(num_frames: int, speed: float):
    return list(render_pan_frames(5, num_frames, HEIGHT, WIDTH, pixels_per_frame=speed))


def test_a_propagated_mask_is_the_keyframe_mask_warped_and_matches_the_true_mask():
    scenes = pan(6, 6.0)
    key, later = scenes[0], scenes[5]
    motion = estimate(MotionModel.TRANSLATION, key.image, later.image)
    propagated = propagate(Segmentation(key.mask), motion, HEIGHT, WIDTH)
    expected = cv2.warpAffine(
        key.mask, motion.matrix, (WIDTH, HEIGHT), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE
    )
    np.testing.assert_array_equal(propagated.mask, expected)
    seen = covered(motion, HEIGHT, WIDTH)
    assert (propagated.mask[seen] == later.mask[seen]).mean() > 0.995  # the pan moves masks exactly
    assert 1 - seen.mean() == pytest.approx(motion.uncovered, abs=0.01)  # what came into view
    assert motion.uncovered > 0.05


def test_boxes_move_with_the_frame_and_leave_it_and_a_label_is_carried():
    motion = estimate(MotionModel.TRANSLATION, shelf(), warp(shelf(), np.array([[1, 0, -40.0], [0, 1, 0]])))
    boxes = Detections(
        np.array([[100, 50, 140, 90], [5, 5, 30, 30]], np.float32),
        np.array([0.9, 0.8], np.float32),
        np.array([1, 2]),
    )
    moved = propagate(boxes, motion, HEIGHT, WIDTH)
    assert len(moved) == 1  # the second box left the view
    np.testing.assert_allclose(moved.xyxy[0], [60, 50, 100, 90], atol=1.0)
    assert moved.class_id.tolist() == [1] and moved.confidence.tolist() == pytest.approx([0.9])
    label = Classification(np.array([0.2, 0.8], np.float32))
    assert propagate(label, motion, HEIGHT, WIDTH) is label


def test_the_motion_back_from_a_later_frame_is_composed_from_both_frames_motions():
    scenes = pan(9, 6.0)
    views = [FrameView.of(scene.image) for scene in scenes]
    estimator = MotionEstimator()
    follower, following = estimator.estimate(views[0], views[3]), estimator.estimate(views[0], views[8])
    composed = composed_backward(follower, following, HEIGHT, WIDTH)
    direct = estimator.estimate(views[8], views[3])
    np.testing.assert_allclose(composed.matrix, direct.matrix, atol=0.5)
    assert composed.uncovered == pytest.approx(direct.uncovered, abs=0.03)
    assert composed.mismatch == max(follower.mismatch, following.mismatch)


def test_what_came_into_view_is_filled_from_the_next_keyframe():
    scenes = pan(9, 8.0)
    before, middle, after = scenes[0], scenes[4], scenes[8]
    forward = estimate(MotionModel.TRANSLATION, before.image, middle.image)
    backward = estimate(MotionModel.TRANSLATION, after.image, middle.image)
    only_forward = propagate(Segmentation(before.mask), forward, HEIGHT, WIDTH)
    both = propagate_between(
        Segmentation(before.mask), forward, Segmentation(after.mask), backward, HEIGHT, WIDTH
    )
    assert (both.mask == middle.mask).mean() > 0.995
    assert (both.mask == middle.mask).mean() > (only_forward.mask == middle.mask).mean() + 0.01
    # A model whose class ids reach 255 gets the same answer (255 also marks holes internally).
    relabel = np.arange(256, dtype=np.uint8)
    relabel[[1, 255]] = [255, 1]
    same = propagate_between(
        Segmentation(relabel[before.mask]),
        forward,
        Segmentation(relabel[after.mask]),
        backward,
        HEIGHT,
        WIDTH,
    )
    np.testing.assert_array_equal(same.mask, relabel[both.mask])


def test_boxes_that_came_into_view_come_from_the_next_keyframe():
    forward = estimate(MotionModel.TRANSLATION, shelf(), warp(shelf(), np.array([[1, 0, -40.0], [0, 1, 0]])))
    backward = estimate(MotionModel.TRANSLATION, shelf(), warp(shelf(), np.array([[1, 0, 40.0], [0, 1, 0]])))
    previous = Detections(
        np.array([[100, 50, 140, 90]], np.float32), np.array([0.9], np.float32), np.array([1])
    )
    following = Detections(  # the first box again (moved on by 40 more), and one that came into view
        np.array([[20, 50, 60, 90], [270, 10, 300, 40]], np.float32),
        np.array([0.9, 0.7], np.float32),
        np.array([1, 2]),
    )
    between = propagate_between(previous, forward, following, backward, HEIGHT, WIDTH)
    assert between.class_id.tolist() == [1, 2]  # the box both saw once, the new one added
    np.testing.assert_allclose(between.xyxy, [[60, 50, 100, 90], [310, 10, 320, 40]], atol=1.0)


# ---- keyframe choice ----------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", list(Direction))
def test_max_interval_is_never_exceeded(direction):
    still = shelf()  # nothing moves: only max_interval calls for keyframes
    planner = KeyframePlanner(ReuseSettings("auto", max_interval=4), direction)
    keyframes = []
    for _ in range(13):
        plan = planner.plan(still)
        if plan.keyframe:
            planner.adopt(plan)
            keyframes.append(plan.index)
    assert keyframes == [0, 4, 8, 12]


def test_fast_motion_calls_for_keyframes_sooner_live_than_in_a_job():
    scenes = pan(30, 12.0)

    def keyframes(direction: Direction) -> int:
        planner = KeyframePlanner(ReuseSettings("auto", max_interval=30), direction)
        count = 0
        for scene in scenes:
            plan = planner.plan(scene.image)
            if plan.keyframe:
                planner.adopt(plan)
                count += 1
        return count

    live, job = keyframes(Direction.LIVE), keyframes(Direction.JOB)
    assert live > job > 1


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"mode": "sometimes"}, "mode"),
        ({"mode": "auto", "max_interval": 0}, "max_interval"),
        ({"mode": "auto", "max_interval": MAX_INTERVAL_LIMIT + 1}, "max_interval"),
        ({"mode": "auto", "max_interval": 2.5}, "max_interval"),
        ({"mode": "auto", "tolerance": 0}, "tolerance"),
        ({"mode": "auto", "motion": "perspective"}, "motion"),
        ({"mode": "auto", "lookahead": -1}, "lookahead"),
        ({"mode": "auto", "lookahead": MAX_INTERVAL_LIMIT}, "lookahead"),
        ({"mode": "auto", "lookahead": 1.5}, "lookahead"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(values, field):
    with pytest.raises(ValueError, match=field):
        ReuseSettings(**values)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"reuse": "sometimes"}, "reuse"),
        ({"reuse": "auto", "max_interval": "many"}, "max_interval"),
        ({"reuse": "auto", "tolerance": "-1"}, "tolerance"),
        ({"tolerance": "9"}, "tolerance"),  # checked even with reuse off
        ({"reuse": "auto", "lookahead": "soon"}, "lookahead"),
    ],
)
def test_bad_text_options_are_refused_naming_the_option(options, field):
    with pytest.raises(ValueError, match=field):
        ReuseSettings.from_options(options)


def test_text_options_give_the_settings():
    settings = ReuseSettings.from_options({"reuse": "auto", "max_interval": "5", "tolerance": "1.5"})
    assert settings == ReuseSettings("auto", 5, 1.5) and settings.enabled
    assert ReuseSettings.from_options({"reuse": "auto", "lookahead": "4"}).lookahead == 4
    assert not ReuseSettings.from_options({}).enabled
    assert not ReuseSettings.from_options({"max_interval": "4"}).enabled  # a knob alone does nothing


# ---- a video job's wrapper, with a model that answers the ground truth ---------------------------------


class GroundTruthModel:
    """Answers each frame with its true mask: what propagation gives can be compared exactly."""

    def __init__(self, scenes) -> None:
        self.truth = {id(scene.image): scene.mask for scene in scenes}
        self.frames_seen = 0

    async def stream(self, frames):
        async for frame in frames:
            self.frames_seen += 1
            yield FrameResult(0, Segmentation(self.truth[id(frame)]), {"infer": 0.0})


async def run_reuse(reuse: KeyframeReuse, images) -> list[FrameResult]:
    async def source():
        for image in images:
            yield image

    return [result async for result in reuse.stream(source())]


def test_a_job_gets_one_result_per_frame_in_order_and_infers_keyframes_only():
    scenes = pan(40, 6.0)
    model = GroundTruthModel(scenes)
    reuse = KeyframeReuse(model, ReuseSettings("auto", max_interval=6))
    results = asyncio.run(run_reuse(reuse, [scene.image for scene in scenes]))
    assert [r.frame_index for r in results] == list(range(40))
    inferred = [r.frame_index for r in results if r.source == "inferred"]
    assert len(inferred) == model.frames_seen == reuse.stats.keyframes
    assert max(np.diff(inferred)) <= 6 and len(inferred) <= 40 / 3
    for result, scene in zip(results, scenes, strict=True):
        assert (result.mask == scene.mask).mean() > 0.99, result.frame_index
    assert reuse.stats.to_dict()["engine_calls"] == len(inferred)


def test_a_failing_source_fails_the_job_instead_of_hanging():
    scenes = pan(12, 6.0)

    async def broken():
        for scene in scenes[:7]:
            yield scene.image
        raise ValueError("decoding failed part-way")

    async def run():
        reuse = KeyframeReuse(GroundTruthModel(scenes), ReuseSettings("auto", max_interval=3))
        return [result async for result in reuse.stream(broken())]

    with pytest.raises(ValueError, match="part-way"):
        asyncio.run(asyncio.wait_for(run(), timeout=30))


def test_live_reuse_propagates_from_the_keyframe_and_forgets_a_failed_one():
    scenes = pan(8, 4.0)

    async def run():
        reuse = LiveReuse(ReuseSettings("auto", max_interval=2))  # frames 0 and 2 are keyframes

        async def answer(mask):
            return FrameResult(0, Segmentation(mask))

        async def failing():
            raise RuntimeError("Triton refused")

        first = await reuse.plan(scenes[0].image)
        await reuse.adopt(first, answer(scenes[0].mask))
        second = await reuse.plan(scenes[1].image)
        carried = await reuse.propagated(second)
        third = await reuse.plan(scenes[2].image)
        assert third.keyframe and third.reason == "max_interval"
        third_future = reuse.adopt(third, failing())
        with pytest.raises(RuntimeError):
            await third_future
        after_failure = await reuse.plan(scenes[3].image)
        return first, second, carried, after_failure

    first, second, carried, after_failure = asyncio.run(run())
    assert first.keyframe and not second.keyframe
    assert carried.source == "propagated" and carried.frame_index == 1
    assert (carried.mask == scenes[1].mask).mean() > 0.97
    assert after_failure.keyframe  # the failed keyframe is forgotten: infer again


async def answer_with(mask: np.ndarray, index: int = 0) -> FrameResult:
    return FrameResult(index, Segmentation(mask))


async def live_with_ground_truth(settings: ReuseSettings, scenes) -> tuple[list[FrameResult], LiveReuse]:
    """Each frame planned as it arrives; keyframes answered with their true mask; results in order."""
    reuse = LiveReuse(settings)
    results = []
    for scene in scenes:
        plan = await reuse.plan(scene.image)
        if plan.keyframe:
            results.append(reuse.adopt(plan, answer_with(scene.mask, plan.index)))
            await results[-1]
        else:
            results.append(reuse.propagated(plan))
    reuse.close()
    return list(await asyncio.gather(*results)), reuse


def agreement(results: list[FrameResult], scenes) -> float:
    return float(np.mean([(r.mask == s.mask).mean() for r, s in zip(results, scenes, strict=True)]))


def test_live_lookahead_fills_what_came_into_view_from_the_next_keyframe_with_fewer_keyframes():
    scenes = pan(21, 12.0)  # 3.75 % of the frame comes into view per frame

    forwards, forwards_reuse = asyncio.run(live_with_ground_truth(AUTO, scenes))
    ahead, ahead_reuse = asyncio.run(live_with_ground_truth(ReuseSettings("auto", lookahead=4), scenes))

    keyframes = [r.frame_index for r in ahead if r.source == "inferred"]
    assert keyframes[0] == 0 and max(np.diff(keyframes)) <= 5  # at most lookahead + 1 apart
    assert ahead_reuse.stats.keyframes < forwards_reuse.stats.keyframes
    assert [r.frame_index for r in ahead] == list(range(len(scenes)))
    # What came into view since the keyframe is taken from the next one, not guessed from the edge.
    assert agreement(ahead, scenes) > max(0.985, agreement(forwards, scenes))


def test_a_live_lookahead_result_waits_for_the_next_keyframe_and_close_releases_the_last():
    scenes = pan(8, 4.0)

    async def run():
        reuse = LiveReuse(ReuseSettings("auto", max_interval=3, lookahead=2))  # keyframes 0, 3, 6
        first = await reuse.plan(scenes[0].image)
        await reuse.adopt(first, answer_with(scenes[0].mask))
        waiting = reuse.propagated(await reuse.plan(scenes[1].image))
        await asyncio.sleep(0.05)
        held = not waiting.done()  # its keyframe's result is in, the next keyframe's is not
        plans = [await reuse.plan(scene.image) for scene in scenes[2:4]]
        assert not plans[0].keyframe and plans[1].keyframe
        reuse.propagated(plans[0])
        await reuse.adopt(plans[1], answer_with(scenes[3].mask))
        released = await asyncio.wait_for(waiting, timeout=5)
        last = reuse.propagated(await reuse.plan(scenes[4].image))
        await asyncio.sleep(0.05)
        held_at_end = not last.done()
        reuse.close()  # the stream ends: carried forwards only
        return held, released, held_at_end, await asyncio.wait_for(last, timeout=5)

    held, released, held_at_end, last = asyncio.run(run())
    assert held and held_at_end
    assert released.source == last.source == "propagated" and released.frame_index == 1
    assert (released.mask == scenes[1].mask).mean() > 0.99
    assert last.frame_index == 4


# ---- on the real Triton ---------------------------------------------------------------------------------


def mean_iou(masks, truth_path: Path, num_classes: int) -> float:
    matrix = ConfusionMatrix(num_classes)
    for predicted, truth in zip(masks, read_mask_archive(truth_path), strict=True):
        matrix.update(predicted, truth)
    return matrix.miou()


@pytest.mark.triton
def test_a_video_job_with_reuse_has_every_frame_fewer_engine_calls_and_about_the_same_miou(
    triton, shelf_video, contract, tmp_path
):
    async def run(reuse: ReuseSettings, out: Path):
        async with TritonModelClient(triton.grpc_url, contract, max_in_flight=2) as client:
            return await process_video(shelf_video.video, out, client, chunk_size=5, reuse=reuse)

    every, reused = tmp_path / "every", tmp_path / "reused"
    every_stats = asyncio.run(run(ReuseSettings(), every))
    reused_stats = asyncio.run(run(ReuseSettings("auto", max_interval=6), reused))

    assert every_stats.engine_calls == every_stats.frames == shelf_video.frames  # off: every frame inferred
    assert reused_stats.frames == shelf_video.frames
    assert reused_stats.engine_calls <= shelf_video.frames / 3
    assert reused_stats.reuse["engine_calls"] == reused_stats.engine_calls
    assert probe(reused / "overlay.mp4").frames == shelf_video.frames
    assert sum(1 for _ in frames(reused / "overlay.mp4")) == shelf_video.frames
    timeline = [json.loads(line) for line in (reused / "timeline.jsonl").read_text().splitlines()]
    assert [row["frame"] for row in timeline] == list(range(shelf_video.frames))
    assert sum(row["source"] == "inferred" for row in timeline) == reused_stats.engine_calls
    masks = list(read_mask_archive(reused / "masks.zip"))
    assert len(masks) == shelf_video.frames
    every_miou = mean_iou(read_mask_archive(every / "masks.zip"), shelf_video.masks, contract.num_classes)
    reused_miou = mean_iou(masks, shelf_video.masks, contract.num_classes)
    assert abs(reused_miou - every_miou) < 0.02, (every_miou, reused_miou)


@pytest.mark.triton
@pytest.mark.parametrize("reuse", [AUTO, ReuseSettings("auto", lookahead=4)], ids=["forwards", "lookahead"])
def test_a_live_stream_with_reuse_answers_every_frame_with_fewer_engine_calls(
    triton, shelf_video, contract, reuse
):
    answered: list[FrameResult] = []

    async def run():
        async with TritonModelClient(triton.grpc_url, contract) as client:
            return await stream_live(
                client,
                frames(shelf_video.video),
                fps=1000,
                window=1,
                on_result=lambda frame, result, latency: answered.append(result),
                paced=False,
                reuse=reuse,
            )

    stats = asyncio.run(run())
    assert stats.failed == 0
    assert stats.completed == stats.captured - stats.dropped == len(answered)
    assert stats.sent + stats.propagated == stats.completed
    assert 0 < stats.sent < stats.captured / 2
    assert sum(r.source == "propagated" for r in answered) == stats.propagated
    assert stats.to_dict()["engine_calls"] == stats.sent and stats.reuse["engine_calls"] == stats.sent
