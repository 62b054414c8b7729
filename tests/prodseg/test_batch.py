"""Batch jobs: exactly-once results through crashes at every step, sharding and merge, bad input,
and the real thing: 500+ images through the embedded Triton, killed with SIGKILL and resumed.

The unit tests drive the real checkpoint, files and row ordering with an in-process stand-in for
Triton's stream (a threshold "model"), so a crash can be placed between any two durable steps.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from clients.results import FrameResult, Segmentation
from prodseg import batch
from prodseg.batch import (
    BatchError,
    BatchSettings,
    ShardsPending,
    merge_shards,
    ordered_rows,
    plan_batch,
    read_input,
    shard_of,
    write_rows,
)
from prodseg.batch_store import CHECKPOINT_FILE, CSV_FILE, JSONL_FILE, Checkpoint, ResultFiles
from prodseg.processes import free_port, start_child, stop_process_group
from prodseg.triton_server import PROJECT_ROOT

MODEL = "shelf_segmenter"  # its contract is all the unit tests need; they never call Triton


# ---- helpers ----------------------------------------------------------------------------------


def write_images(folder: Path, count: int, corrupt: int = 0, size: int = 64) -> list[str]:
    """``count`` small PNGs of a few kinds (flat colours, stripes, noise, gradients) in nested
    folders, plus ``corrupt`` files with image names that do not decode. Returns the relative keys."""
    rng = np.random.default_rng(7)
    keys = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            image = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
        elif kind == 1:
            image = np.zeros((size, size, 3), np.uint8)
            image[:, :: 1 + i % 7] = rng.integers(0, 256, 3)
        elif kind == 2:
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        else:
            ramp = np.linspace(0, 255, size, dtype=np.uint8)
            image = np.dstack([np.tile(ramp, (size, 1))] * 3)
            image[..., i % 3] = 255 - image[..., i % 3]
        key = f"kind{kind}/part{i % 5}/image{i:04d}.png"
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(cv2.imencode(".png", image)[1].tobytes())
        keys.append(key)
    for i in range(corrupt):
        key = f"broken/corrupt{i}.jpg"
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(b"\xff\xd8 not really a jpeg" * (i + 1))
        keys.append(key)
    return sorted(keys)


async def threshold_stream(frames):
    """Stand-in for ``TritonModelClient.stream``: a deterministic 'model' (bright pixels = class 1)."""
    for index, frame in enumerate(frames):
        yield FrameResult(index, Segmentation((frame.mean(axis=2) > 127).astype(np.uint8)))


def run_local(settings: BatchSettings, version: str = "1") -> batch.BatchReport:
    plan = plan_batch(settings)
    return asyncio.run(write_rows(plan, version, ordered_rows(plan, version, threshold_stream)))


def settings_for(images: Path, output: Path, **overrides) -> BatchSettings:
    return BatchSettings(
        **{"model": MODEL, "source": images, "output": output, "commit_every": 5} | overrides
    )


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def without_time(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def assert_each_once(folder: Path, keys: list[str]) -> list[dict[str, str]]:
    rows = csv_rows(folder / CSV_FILE)
    assert [row["file"] for row in rows] == keys  # each image once, in input order
    jsonl = [json.loads(line) for line in (folder / JSONL_FILE).read_text().splitlines()]
    assert [record["file"] for record in jsonl] == keys
    return rows


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = tmp_path / "images"
    return folder, write_images(folder, 21, corrupt=2)


@pytest.fixture
def reference(images, tmp_path: Path) -> list[dict[str, str]]:
    """An uninterrupted run's CSV rows, without the time column."""
    folder, keys = images
    run_local(settings_for(folder, tmp_path / "reference"))
    return without_time(assert_each_once(tmp_path / "reference", keys))


# ---- input ------------------------------------------------------------------------------------


def test_a_folder_is_listed_recursively_sorted_and_only_images(tmp_path: Path):
    keys = write_images(tmp_path, 6, corrupt=1)
    (tmp_path / "kind0" / "notes.txt").write_text("not an image")
    (tmp_path / "kind1" / "UPPER.PNG").write_bytes((tmp_path / keys[0]).read_bytes())
    found = read_input(tmp_path)
    assert list(found.items) == sorted([*keys, "kind1/UPPER.PNG"])
    assert all(path.is_file() for path in found.items.values())


def test_a_list_file_resolves_relative_paths_and_counts_repeats_once(tmp_path: Path):
    keys = write_images(tmp_path / "data", 3)
    listing = tmp_path / "list.txt"
    absolute = tmp_path / "data" / keys[2]
    listing.write_text(
        f"# nightly returns\ndata/{keys[0]}\n\ndata/{keys[1]}\ndata/{keys[0]}\n{absolute}\nmissing.png\n"
    )
    found = read_input(listing)
    assert found.duplicates == 1
    assert set(found.items) == {f"data/{keys[0]}", f"data/{keys[1]}", str(absolute), "missing.png"}
    assert found.items[f"data/{keys[0]}"] == tmp_path / "data" / keys[0]


def test_unreadable_images_and_missing_listed_files_are_failed_rows_with_reasons(tmp_path: Path):
    keys = write_images(tmp_path / "data", 4, corrupt=1)
    (tmp_path / "data" / "empty.png").write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([*(f"data/{k}" for k in keys), "data/empty.png", "data/gone.png"]) + "\n")
    run_local(settings_for(listing, tmp_path / "out"))
    rows = {row["file"]: row for row in csv_rows(tmp_path / "out" / CSV_FILE)}
    assert len(rows) == 7
    assert rows["data/gone.png"]["status"] == "failed" and rows["data/gone.png"]["error"] == "file not found"
    assert rows["data/empty.png"]["error"] == "not_an_image: the image is empty"
    assert rows["data/broken/corrupt0.jpg"]["error"].startswith("not_an_image")
    ok = [row for row in rows.values() if row["status"] == "ok"]
    assert len(ok) == 4 and all(
        row["error"] == "" and row["label"] in ("background", "product") for row in ok
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["ok_total"], summary["failed_total"], summary["complete"]) == (4, 3, True)


def test_rows_carry_each_task_s_label_or_summary_and_confidence():
    from clients.contract import ModelContract
    from clients.results import Classification, Detections

    labels = ModelContract.load("returns_classifier").labels
    row = batch.prediction_row(
        "a.png", "m", "3", Classification(np.array([0.1, 0.6, 0.1, 0.15, 0.05])), labels
    )
    assert (row.label, row.confidence, row.summary) == (
        "handbags", 0.6, {"top3": {"handbags": 0.6, "tops": 0.15, "casual_shoes": 0.1}}
    )  # fmt: skip
    assert json.loads(row.json_line())["result"]["probabilities"]["watches"] == 0.05

    labels = ModelContract.load("mask_detector").labels
    boxes = Detections(
        np.array([[1, 2, 30, 40], [5, 5, 9, 9], [0, 0, 4, 4]], np.float32),
        np.array([0.9, 0.4, 0.7], np.float32),
        np.array([1, 1, 0], np.int32),
    )
    row = batch.prediction_row("b.png", "m", "3", boxes, labels)
    assert row.label == labels.names[1] and row.confidence == pytest.approx(0.9)
    assert row.summary == {"count": 3, "per_class": {labels.names[0]: 1, labels.names[1]: 2}}
    assert len(json.loads(row.json_line())["result"]["detections"]) == 3
    empty = batch.prediction_row("c.png", "m", "3", Detections.empty(), labels)
    assert (empty.label, empty.confidence, empty.summary["count"]) == ("", None, 0)

    labels = ModelContract.load(MODEL).labels
    mask = np.zeros((4, 10), np.uint8)
    mask[:, :3] = 1
    row = batch.prediction_row("d.png", "m", "3", Segmentation(mask), labels)
    assert row.label == "background" and row.confidence is None
    assert row.summary["class_shares"] == {
        "background": 0.7,
        "product": 0.3,
        "shelf_edge": 0.0,
        "price_tag": 0.0,
    }
    assert next(csv.reader([row.csv_line()]))[:6] == ["d.png", "m", "3", "ok", "background", ""]


def test_requests_carry_many_small_images_or_few_large_ones():
    from clients.contract import ModelContract

    shelf, classifier = ModelContract.load(MODEL), ModelContract.load("returns_classifier")
    large = batch.frames_per_request_for(shelf)  # 384x640: a few per request
    small = batch.frames_per_request_for(classifier)  # 64-128 px: many per request, within the batch limit
    assert 2 <= large < small and large * shelf.height * shelf.width * 3 <= batch.REQUEST_BYTES
    assert 16 <= small <= classifier.max_batch_size
    assert batch.frames_per_request_for(classifier, 500) == classifier.max_batch_size
    assert batch.frames_per_request_for(shelf, 3) == 3


# ---- crash between any two durable steps --------------------------------------------------------


class Crash(BaseException):
    """The process dies here: nothing after this line runs (BaseException: no handler catches it)."""


def crash_at(monkeypatch, step: str, call: int) -> None:
    """Make the ``call``-th occurrence of ``step`` kill the 'process'."""
    calls = {"n": 0}

    def due() -> bool:
        calls["n"] += 1
        return calls["n"] == call

    original_start, original_commit, original_append = Checkpoint.start, Checkpoint.commit, ResultFiles.append

    def start(self, meta):
        if step == "before start" and due():
            raise Crash
        original_start(self, meta)
        if step == "after start" and due():
            raise Crash

    def commit(self, items, offsets):
        if step == "before commit" and due():  # files appended and fsynced, checkpoint not yet moved
            raise Crash
        original_commit(self, items, offsets)
        if step == "after commit" and due():
            raise Crash

    def append(self, csv_text, jsonl_text):
        if step == "half-written row" and due():  # a torn write: part of the CSV, none of the JSONL
            original_append(self, csv_text[: len(csv_text) // 2 + 1], "")
            raise Crash
        return original_append(self, csv_text, jsonl_text)

    monkeypatch.setattr(Checkpoint, "start", start)
    monkeypatch.setattr(Checkpoint, "commit", commit)
    monkeypatch.setattr(ResultFiles, "append", append)


# Every durable step, at the first (the CSV header), second and a later occurrence.
CRASHES = [("before start", 1), ("after start", 1)] + [
    (step, call) for step in ("half-written row", "before commit", "after commit") for call in (1, 2, 4)
]


@pytest.mark.parametrize(("step", "call"), CRASHES)
def test_a_crash_at_any_step_then_the_same_command_gives_each_image_once(
    step, call, images, reference, tmp_path, monkeypatch
):
    folder, keys = images
    settings = settings_for(folder, tmp_path / "out")
    with monkeypatch.context() as patch, pytest.raises(Crash):
        crash_at(patch, step, call)
        run_local(settings)
    report = run_local(settings)  # the same command again
    assert report.complete and report.done_total == len(keys)
    assert without_time(assert_each_once(tmp_path / "out", keys)) == reference
    with Checkpoint(tmp_path / "out", read_only=True) as checkpoint:
        assert sorted(checkpoint.done()) == keys


def test_several_crashes_in_a_row_still_give_each_image_once(images, reference, tmp_path, monkeypatch):
    folder, keys = images
    settings = settings_for(folder, tmp_path / "out")
    for step, call in [
        ("before commit", 2),
        ("half-written row", 2),
        ("after commit", 3),
        ("before commit", 1),
    ]:
        with monkeypatch.context() as patch, pytest.raises(Crash):
            crash_at(patch, step, call)
            run_local(settings)
    run_local(settings)
    assert without_time(assert_each_once(tmp_path / "out", keys)) == reference


def test_a_finished_batch_run_again_does_nothing(images, tmp_path):
    folder, keys = images
    settings = settings_for(folder, tmp_path / "out")
    run_local(settings)
    before = (tmp_path / "out" / CSV_FILE).read_bytes()
    report = run_local(settings)
    assert (report.processed, report.failed, report.done_before) == (0, 0, len(keys))
    assert (tmp_path / "out" / CSV_FILE).read_bytes() == before


def test_killed_after_the_last_commit_the_rerun_writes_the_summary_without_triton(
    images, tmp_path, monkeypatch
):
    folder, keys = images
    settings = settings_for(folder, tmp_path / "out")

    def dies(*args, **kwargs):
        raise Crash

    with monkeypatch.context() as patch, pytest.raises(Crash):
        patch.setattr(batch, "write_text", dies)
        run_local(settings)
    assert not (tmp_path / "out" / "summary.json").exists()
    code, output = cli("run", "--model", MODEL, "--triton", "127.0.0.1:9", str(folder), str(tmp_path / "out"))
    assert code == 0 and "nothing to do" in output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["complete"] and summary["done_total"] == len(keys) and summary["processed"] == 0


def test_a_failure_of_the_prediction_source_keeps_the_rows_made_before_it(images, reference, tmp_path):
    folder, keys = images
    settings = settings_for(folder, tmp_path / "out", commit_every=1000, commit_seconds=1000)

    async def dies_after_seven(frames):
        async for result in threshold_stream(frames):
            if result.frame_index == 7:
                raise ConnectionError("Triton went away")
            yield result

    plan = plan_batch(settings)
    with pytest.raises(ConnectionError):
        asyncio.run(write_rows(plan, "1", ordered_rows(plan, "1", dies_after_seven)))
    with Checkpoint(tmp_path / "out", read_only=True) as checkpoint:
        assert len(checkpoint.done()) >= 7  # committed although no commit group had filled
    run_local(settings)
    assert without_time(assert_each_once(tmp_path / "out", keys)) == reference


# ---- sharding and merge -------------------------------------------------------------------------


def test_shards_are_disjoint_complete_and_stable():
    keys = [f"folder{i % 7}/image{i}.png" for i in range(300)]
    owners = {key: shard_of(key, 4) for key in keys}
    assert owners == {key: shard_of(key, 4) for key in keys}
    assert set(owners.values()) == {0, 1, 2, 3}
    assert all(40 <= list(owners.values()).count(s) <= 110 for s in range(4))
    # Pinned: a changed hash would hand a resumed shard's items to another shard.
    assert [shard_of("kind0/part0/image0000.png", n) for n in (2, 3, 4, 7)] == [0, 2, 0, 1]
    assert [shard_of("a.jpg", n) for n in (2, 3, 4, 7)] == [0, 1, 2, 4]


def test_merged_shards_equal_an_unsharded_run(images, reference, tmp_path):
    folder, keys = images
    output = tmp_path / "sharded"
    owned = []
    for index in range(3):
        report = run_local(settings_for(folder, output, shard_index=index, shard_count=3))
        assert report.complete
        owned.append(set(csv_row["file"] for csv_row in csv_rows(output / f"shard-{index}" / CSV_FILE)))
    assert set.union(*owned) == set(keys) and sum(map(len, owned)) == len(keys)
    result = merge_shards(output)
    assert (result.shards, result.rows, result.failed) == (3, len(keys), 2)
    assert without_time(assert_each_once(output, keys)) == reference


def test_merge_refuses_missing_unfinished_and_foreign_shards(images, tmp_path, monkeypatch):
    folder, _ = images
    output = tmp_path / "sharded"
    for index in (0, 1):
        run_local(settings_for(folder, output, shard_index=index, shard_count=3))
    with pytest.raises(ShardsPending, match=r"missing \[2\]"):
        merge_shards(output)

    with monkeypatch.context() as patch, pytest.raises(Crash):
        crash_at(patch, "after commit", 2)
        run_local(settings_for(folder, output, shard_index=2, shard_count=3))
    with pytest.raises(ShardsPending, match=r"not finished \['shard-2'\]"):
        merge_shards(output)
    code, message = cli("merge", "--if-complete", str(output))
    assert code == 0 and "not merging yet" in message and not (output / CSV_FILE).exists()
    assert cli("merge", str(output))[0] == 2
    run_local(settings_for(folder, output, shard_index=2, shard_count=3))
    assert merge_shards(output).rows == 23

    other_model = tmp_path / "other-model"
    for index in (0, 1):
        model = MODEL if index == 0 else "crack_segmenter"
        run_local(settings_for(folder, other_model, model=model, shard_index=index, shard_count=2))
    with pytest.raises(BatchError, match="differs from shard-0 in model"):
        merge_shards(other_model)

    other_input = tmp_path / "other-input"
    write_images(tmp_path / "more", 5)
    run_local(settings_for(folder, other_input, shard_index=0, shard_count=2))
    run_local(settings_for(tmp_path / "more", other_input, shard_index=1, shard_count=2))
    with pytest.raises(BatchError, match="differs from shard-0 in input"):
        merge_shards(other_input)
    with pytest.raises(BatchError, match="no shard-<i> folders"):
        merge_shards(folder)


# ---- bad input, through the command line ----------------------------------------------------


def cli(*args: str) -> tuple[int, str]:
    from prodseg.cli import app

    result = CliRunner().invoke(app, ["batch", *args])
    return result.exit_code, result.output


def test_no_images_is_a_clear_message_exit_0_and_no_work(tmp_path: Path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
    code, output = cli("run", "--model", MODEL, str(tmp_path / "empty"), str(tmp_path / "out"))
    assert code == 0 and "No images" in output and "nothing to do" in output
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty.txt").write_text("# nothing listed\n")
    assert cli("run", "--model", MODEL, str(tmp_path / "empty.txt"), str(tmp_path / "out"))[0] == 0


def test_a_missing_or_unreadable_input_is_exit_2_naming_the_path(tmp_path: Path):
    code, output = cli("run", "--model", MODEL, str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert code == 2 and "nowhere" in output and "does not exist" in output
    binary = tmp_path / "list.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, output = cli("run", "--model", MODEL, str(binary), str(tmp_path / "out"))
    assert code == 2 and "cannot read input list" in output and "list.txt" in output
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_or_a_bad_shard_is_exit_2(images, tmp_path):
    folder, _ = images
    code, output = cli("run", "--model", "no_such_model", str(folder), str(tmp_path / "out"))
    assert code == 2 and "no_such_model" in output
    code, output = cli(
        "run", "--model", MODEL, "--shard-index", "3", "--shard-count", "3", str(folder), str(tmp_path / "o")
    )
    assert code == 2 and "--shard-index must be in 0..2" in output


def test_resuming_an_output_of_another_model_or_input_is_refused(images, tmp_path):
    folder, _ = images
    run_local(settings_for(folder, tmp_path / "out"))
    before = (tmp_path / "out" / CSV_FILE).read_bytes()
    code, output = cli("run", "--model", "crack_segmenter", str(folder), str(tmp_path / "out"))
    assert code == 2 and "belongs to another batch" in output and "model 'shelf_segmenter'" in output
    (folder / "new.png").write_bytes((folder / "kind0/part0/image0000.png").read_bytes())
    code, output = cli("run", "--model", MODEL, str(folder), str(tmp_path / "out"))
    assert code == 2 and "different set of 23 images" in output
    code, output = cli("run", "--model", MODEL, str(tmp_path), str(tmp_path / "out"))
    assert code == 2 and "belongs to another batch" in output
    assert (tmp_path / "out" / CSV_FILE).read_bytes() == before  # never mixed, never touched


def test_triton_unreachable_is_exit_1_worth_a_retry_and_writes_nothing(images, tmp_path):
    folder, _ = images
    code, output = cli("run", "--model", MODEL, "--triton", "127.0.0.1:9", str(folder), str(tmp_path / "out"))
    assert code == 1 and "127.0.0.1:9" in output and "retry" in output
    assert not (tmp_path / "out").exists()


def test_an_output_folder_with_results_but_no_checkpoint_is_refused(images, tmp_path):
    folder, _ = images
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / CSV_FILE).write_text("someone else's results\n")
    code, output = cli("run", "--model", MODEL, str(folder), str(tmp_path / "out"))
    assert code == 2 and "no batch checkpoint" in output


def test_results_cut_short_by_something_else_are_refused_not_papered_over(images, tmp_path):
    folder, _ = images
    settings = settings_for(folder, tmp_path / "out")
    run_local(settings)
    (tmp_path / "out" / JSONL_FILE).write_text("")
    (tmp_path / "out" / "summary.json").unlink()
    with pytest.raises(BatchError, match="predictions.jsonl has 0 bytes but the checkpoint committed"):
        run_local(settings)


def test_dry_run_counts_the_work_and_touches_nothing(images, tmp_path, monkeypatch):
    folder, keys = images
    code, output = cli("run", "--dry-run", "--model", MODEL, str(folder), str(tmp_path / "out"))
    assert code == 0 and json.loads(output.strip().splitlines()[-1])["todo"] == len(keys)
    assert not (tmp_path / "out").exists()

    with monkeypatch.context() as patch, pytest.raises(Crash):
        crash_at(patch, "before commit", 3)  # done: the header and one group of 5
        run_local(settings_for(folder, tmp_path / "out"))
    files = sorted((tmp_path / "out").iterdir())
    snapshot = {path.name: path.read_bytes() for path in files if path.name != CHECKPOINT_FILE + "-shm"}
    code, output = cli("run", "--dry-run", "--model", MODEL, str(folder), str(tmp_path / "out"))
    counts = json.loads(output.strip().splitlines()[-1])
    assert code == 0 and (counts["total"], counts["done"], counts["todo"]) == (len(keys), 5, len(keys) - 5)
    after = {p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir()) if p.name in snapshot}
    assert after == snapshot  # the uncommitted rows are still there: only a real run cuts them


def test_merge_command_reports_refusals_as_exit_2(tmp_path: Path):
    code, output = cli("merge", str(tmp_path))
    assert code == 2 and "no shard-<i> folders" in output


# ---- the real thing: Triton, SIGKILL, resume ----------------------------------------------------


def kill_test_model(triton) -> str:
    """The shelf segmenter: slow enough per image that each kill lands mid-batch (the 64 px classifier
    finished all 522 images before the kill at 400 on an idle machine)."""
    assert MODEL in triton.models
    return MODEL


def batch_command(model: str, triton, images: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "prodseg.cli", "batch", "run", "--model", model,
        "--triton", triton.grpc_url, str(images), str(output), *extra,
    ]  # fmt: skip


def committed_count(folder: Path) -> int:
    try:
        with sqlite3.connect(f"file:{folder / CHECKPOINT_FILE}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM items").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.triton
@pytest.mark.slow
def test_killed_with_sigkill_at_several_points_then_resumed_matches_an_uninterrupted_run(triton, tmp_path):
    model = kill_test_model(triton)
    images = tmp_path / "images"
    keys = write_images(images, 516, corrupt=6)
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))

    uninterrupted = tmp_path / "uninterrupted"
    subprocess.run(batch_command(model, triton, images, uninterrupted), check=True, env=env, timeout=600)
    reference = assert_each_once(uninterrupted, keys)

    output = tmp_path / "killed"
    kills = []
    # Kill at growing progress, and once at a moment not tied to a commit (mid-group, mid-request).
    # Kill at growing progress: right after a commit, and (the last one) 0.37 s after one, with
    # rows buffered, requests in flight and maybe a write under way.
    for target, delay in ((1, 0), (90, 0), (200, 0), (330, 0), (400, 0.37)):
        process = subprocess.Popen(
            batch_command(model, triton, images, output), env=env, stderr=subprocess.DEVNULL
        )
        started = time.monotonic()
        while process.poll() is None and time.monotonic() - started < 300:
            if committed_count(output) >= target:
                time.sleep(delay)
                break
            time.sleep(0.01)
        assert process.poll() is None, f"the batch finished before the kill at {target}"
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills.append(committed_count(output))
    assert kills == sorted(kills) and kills[-1] < len(keys)

    final = subprocess.run(
        batch_command(model, triton, images, output), env=env, timeout=600, capture_output=True, text=True
    )
    assert final.returncode == 0, final.stderr
    rows = assert_each_once(output, keys)
    assert without_time(rows) == without_time(reference)
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 6 and all(row["error"].startswith("not_an_image") for row in failed)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["ok_total"] == 516 and summary["failed_total"] == 6
    print(f"\n{model}: {len(keys)} images, committed at the kills: {kills}, each once after resume")


@pytest.mark.triton
def test_metrics_are_pushed_to_a_pushgateway_after_a_batch(triton, tmp_path):
    binary = PROJECT_ROOT / ".tools" / "bin" / "pushgateway"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} missing: run `make tools`")
    port = free_port()
    gateway = start_child(
        [str(binary), f"--web.listen-address=127.0.0.1:{port}"], tmp_path / "pushgateway.log"
    )
    try:
        deadline = time.monotonic() + 20
        while not _http_ok(f"http://127.0.0.1:{port}/-/ready") and time.monotonic() < deadline:
            time.sleep(0.1)
        model = kill_test_model(triton)
        images = tmp_path / "images"
        write_images(images, 12, corrupt=1)
        result = subprocess.run(
            batch_command(model, triton, images, tmp_path / "out"),
            env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), PRODSEG_PUSHGATEWAY_URL=f"127.0.0.1:{port}"),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            scraped = response.read().decode()
    finally:
        stop_process_group(gateway, 5)
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        sample.name: sample
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name.startswith("prodseg_batch_")
    }
    labels = {"job": "prodseg_batch", "model": model, "shard": "0", "instance": ""}
    assert samples["prodseg_batch_images_processed"].labels == labels
    assert samples["prodseg_batch_images_processed"].value == 12
    assert samples["prodseg_batch_images_failed"].value == 1
    assert samples["prodseg_batch_images_done"].value == samples["prodseg_batch_images_total"].value == 13
    assert samples["prodseg_batch_duration_seconds"].value > 0
    assert abs(samples["prodseg_batch_last_success_timestamp_seconds"].value - time.time()) < 300


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False
