"""Batch jobs for any model: every image of a folder (or a list file) through Triton exactly once.

``prodseg batch run --model M INPUT OUTPUT`` (``prodseg.batch_cli``) calls :func:`run_batch`:

1. the input is listed (a folder recursively, or a list file of paths), sorted, and this shard's
   part kept: a deterministic, disjoint subset chosen by a hash of each relative path;
2. the output folder's checkpoint (``prodseg.batch_store``) says what is already done; a folder that
   belongs to another model, model version or input set is refused, never mixed;
3. the rest streams to Triton over gRPC with a bounded window of requests in flight, results are
   appended to ``predictions.csv`` / ``predictions.jsonl`` in input order and committed in groups,
   so the fsyncs and the SQLite commit cost little per image;
4. an image that cannot be read or decoded is a ``failed`` row with the reason, not a stopped batch.

``kill -9`` at any moment and the same command again: nothing lost, nothing written twice.
Torch-free: this is serving-side code.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from clients.atomic import write_text
from clients.contract import ContractError, ModelContract
from clients.images import ImageError, decode_image
from clients.labels import LabelMap
from clients.results import Classification, Detections, FrameResult, Prediction, Segmentation
from prodseg.batch_store import (
    CSV_FILE,
    JSONL_FILE,
    Checkpoint,
    DamagedOutput,
    Offsets,
    ResultFiles,
    read_committed,
)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
CSV_COLUMNS = ("file", "model", "version", "status", "label", "confidence", "summary", "error", "time")
SUMMARY_FILE = "summary.json"
SHARD_FOLDER = re.compile(r"^shard-(\d+)$")


class BatchError(Exception):
    """The batch cannot run as asked (bad input, a foreign output folder, no model): exit 2."""


class TritonFailure(RuntimeError):
    """Triton unreachable or failed mid-batch; what was committed stays and the same command resumes."""


# ---- Input ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchInput:
    """The images of a batch: relative key (what the outputs name) -> path, sorted by key."""

    source: Path
    items: dict[str, Path]
    duplicates: int = 0  # repeated lines of a list file (each image is still processed once)

    @property
    def fingerprint(self) -> str:
        """Identifies the input set: the same keys from the same place."""
        digest = hashlib.sha256(str(self.source).encode())
        for key in self.items:
            digest.update(b"\0" + key.encode())
        return digest.hexdigest()


def read_input(source: Path) -> BatchInput:
    """List a folder's images recursively, or the paths of a list file (one per line, ``#`` comments).

    Relative paths in a list file are relative to the list file's folder; a listed path that does
    not exist becomes a failed item, not an error, like an unreadable image.
    """
    source = Path(source).absolute()
    if not source.exists():
        raise BatchError(f"input {source} does not exist")
    if source.is_dir():
        # Checked first: rglob skips folders it may not list, which would look like "no images".
        if not os.access(source, os.R_OK | os.X_OK):
            raise BatchError(f"cannot read input folder {source}: permission denied")
        try:
            paths = [p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        except OSError as error:
            raise BatchError(f"cannot read input folder {source}: {error}") from error
        items = {path.relative_to(source).as_posix(): path for path in paths}
        return BatchInput(source, dict(sorted(items.items())))
    try:
        text = source.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise BatchError(f"cannot read input list {source}: {error}") from error
    items: dict[str, Path] = {}
    duplicates = 0
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry in items:
            duplicates += 1
            continue
        path = Path(entry)
        items[entry] = path if path.is_absolute() else source.parent / path
    return BatchInput(source, dict(sorted(items.items())), duplicates)


def shard_of(key: str, shard_count: int) -> int:
    """The shard that owns an item: a stable hash of its key (same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % shard_count


def shard_folder(output: Path, shard_index: int, shard_count: int) -> Path:
    """Where one shard writes: ``OUTPUT`` itself for an unsharded batch, else ``OUTPUT/shard-<i>``."""
    return Path(output) if shard_count == 1 else Path(output) / f"shard-{shard_index}"


# ---- Planning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSettings:
    model: str
    source: Path
    output: Path
    triton_url: str = "127.0.0.1:8001"
    shard_index: int = 0
    shard_count: int = 1
    max_in_flight: int = 4
    frames_per_request: int = 0  # 0: about REQUEST_BYTES of pixels per request (see frames_per_request_for)
    commit_every: int = 64  # items per checkpoint commit ...
    commit_seconds: float = 1.0  # ... or this long since the last one, whichever comes first
    repository: Path | None = None

    def __post_init__(self) -> None:
        if self.shard_count < 1:
            raise BatchError(f"--shard-count must be >= 1, got {self.shard_count}")
        if not 0 <= self.shard_index < self.shard_count:
            raise BatchError(
                f"--shard-index must be in 0..{self.shard_count - 1} for {self.shard_count} shards, "
                f"got {self.shard_index}"
            )
        if self.max_in_flight < 1 or self.frames_per_request < 0 or self.commit_every < 1:
            raise BatchError("--max-in-flight and the commit size must be >= 1, --frames-per-request >= 0")

    @property
    def folder(self) -> Path:
        return shard_folder(self.output, self.shard_index, self.shard_count)


@dataclass
class BatchPlan:
    """What a run would do: this shard's items, which are done, and the batch's identity."""

    settings: BatchSettings
    contract: ModelContract
    input: BatchInput
    shard_items: dict[str, Path]
    done: dict[str, str]
    meta: dict[str, str]  # the checkpoint's identity, {} for a new batch

    @property
    def todo(self) -> list[tuple[str, Path]]:
        return [(key, path) for key, path in self.shard_items.items() if key not in self.done]

    def counts(self) -> dict[str, int]:
        return {
            "input_images": len(self.input.items),
            "total": len(self.shard_items),
            "done": len(self.done),
            "todo": len(self.shard_items) - len(self.done),
            "failed_so_far": sum(status == "failed" for status in self.done.values()),
        }


def plan_batch(settings: BatchSettings) -> BatchPlan:
    """Read the input and the checkpoint (read-only) and check they belong together. Touches nothing."""
    batch_input = read_input(settings.source)
    try:
        contract = ModelContract.load(settings.model, settings.repository)
    except ContractError as error:
        raise BatchError(f"model {settings.model!r}: {error}") from error
    shard_items = {
        key: path
        for key, path in batch_input.items.items()
        if shard_of(key, settings.shard_count) == settings.shard_index
    }
    folder = settings.folder
    meta: dict[str, str] = {}
    done: dict[str, str] = {}
    if Checkpoint.exists(folder):
        with Checkpoint(folder, read_only=True) as checkpoint:
            meta, done = checkpoint.meta(), checkpoint.done()
    if meta:
        _check_same_batch(meta, settings, batch_input, folder)
    elif (folder / CSV_FILE).exists() or (folder / JSONL_FILE).exists():
        raise BatchError(
            f"{folder} holds {CSV_FILE} or {JSONL_FILE} but no batch checkpoint: "
            "it is not this batch's output; choose an empty or new folder"
        )
    unknown = set(done) - set(shard_items)
    if unknown:  # cannot happen when the fingerprint matched; guards a hand-edited checkpoint
        raise BatchError(f"{folder}: the checkpoint holds {len(unknown)} items that are not in the input")
    return BatchPlan(settings, contract, batch_input, shard_items, done, meta)


def _check_same_batch(meta: dict[str, str], settings: BatchSettings, batch_input: BatchInput, folder: Path):
    expected = {
        "model": settings.model,
        "input": str(batch_input.source),
        "input_fingerprint": batch_input.fingerprint,
        "shard_index": str(settings.shard_index),
        "shard_count": str(settings.shard_count),
    }
    for key, value in expected.items():
        if meta.get(key) != value:
            what = {
                "model": f"model {meta.get('model')!r}, not {settings.model!r}",
                "input": f"input {meta.get('input')}, not {batch_input.source}",
                "input_fingerprint": (
                    f"a different set of {meta.get('total', '?')} images from {meta.get('input')} "
                    "(images were added, removed or renamed since)"
                ),
                "shard_index": f"shard {meta.get('shard_index')}, not {settings.shard_index}",
                "shard_count": f"{meta.get('shard_count')} shards, not {settings.shard_count}",
            }[key]
            raise BatchError(
                f"{folder} belongs to another batch ({what}); results are never mixed: "
                "use a new output folder"
            )


# ---- Rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One image's outcome, as written to both result files."""

    file: str
    model: str
    version: str
    status: str  # "ok" or "failed"
    label: str = ""
    confidence: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    time: str = ""
    result: dict[str, Any] | None = None  # JSONL only: the task's JSON (boxes, probabilities)

    def csv_line(self) -> str:
        buffer = io.StringIO()
        confidence = "" if self.confidence is None else f"{self.confidence:.5f}"
        summary = json.dumps(self.summary, separators=(",", ":"), sort_keys=True) if self.summary else ""
        csv.writer(buffer, lineterminator="\n").writerow(
            [
                self.file,
                self.model,
                self.version,
                self.status,
                self.label,
                confidence,
                summary,
                self.error,
                self.time,
            ]
        )
        return buffer.getvalue()

    def json_line(self) -> str:
        # Shallow on purpose: dataclasses.asdict deep-copies ``result`` (a detector's boxes), which cost
        # more than the inference per image in a profile of the batch job.
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        if record["confidence"] is not None:
            record["confidence"] = round(record["confidence"], 5)
        if record["result"] is None:
            del record["result"]
        return json.dumps(record, separators=(",", ":")) + "\n"


def csv_header() -> str:
    return ",".join(CSV_COLUMNS) + "\n"


def prediction_row(key: str, model: str, version: str, prediction: Prediction, labels: LabelMap) -> Row:
    """Label or summary and confidence per task: the class for a classifier, the count and classes
    of a detector, the class shares of a segmenter (its label is the largest class). The prediction
    is in the image's pixels (boxes in the JSONL too)."""
    now = _now()
    if isinstance(prediction, Classification):
        top3 = {labels.names[i]: round(p, 5) for i, p in prediction.top(3)}
        return Row(
            key, model, version, "ok", labels.names[prediction.class_id], prediction.confidence,
            {"top3": top3}, time=now, result=prediction.to_json(labels),
        )  # fmt: skip
    if isinstance(prediction, Detections):
        summary = prediction.summary(labels)
        summary["per_class"] = {name: n for name, n in summary["per_class"].items() if n}
        top = max(summary["per_class"], key=summary["per_class"].get) if len(prediction) else ""
        confidence = float(prediction.confidence.max()) if len(prediction) else None
        return Row(
            key, model, version, "ok", top, confidence, summary, time=now, result=prediction.to_json(labels)
        )
    if isinstance(prediction, Segmentation):
        summary = prediction.summary(labels)
        shares = summary["class_shares"]
        top = max(shares, key=shares.get)
        return Row(key, model, version, "ok", top, None, summary, time=now)
    raise TypeError(f"not a prediction: {type(prediction).__name__}")


def failed_row(key: str, model: str, version: str, reason: str) -> Row:
    return Row(key, model, version, "failed", error=reason, time=_now())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# ---- Running ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchReport:
    model: str
    version: str
    folder: str
    shard_index: int
    total: int
    done_before: int  # committed by earlier (interrupted) runs
    processed: int  # ok in this run
    failed: int  # failed in this run
    done_total: int  # committed over all runs
    seconds: float

    @property
    def complete(self) -> bool:
        return self.done_total == self.total

    @property
    def images_per_s(self) -> float:
        return (self.processed + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"complete": self.complete, "images_per_s": round(self.images_per_s, 2)}


ProgressCallback = Callable[[int], None]  # called with the number of items just finished


async def run_batch(plan: BatchPlan, on_progress: ProgressCallback | None = None) -> BatchReport:
    """Process ``plan.todo`` against Triton, committing as it goes; returns what this run did."""
    from clients.triton_client import InferenceError, TritonModelClient

    settings, contract = plan.settings, plan.contract
    if plan.meta and not plan.todo:  # all committed (maybe killed before its summary): no Triton needed
        return await write_rows(plan, plan.meta["version"], _no_rows())
    frames_per_request = frames_per_request_for(contract, settings.frames_per_request)
    client = TritonModelClient(settings.triton_url, contract, settings.max_in_flight, frames_per_request)
    try:
        version = await _pick_version(client, plan)
        client.version = version
        return await write_rows(plan, version, ordered_rows(plan, version, client.stream), on_progress)
    except InferenceError as error:
        raise TritonFailure(f"{error}; the finished images are saved: rerun to resume") from error
    finally:
        await client.close()


async def _no_rows() -> AsyncIterator[Row]:
    return
    yield


async def write_rows(
    plan: BatchPlan, version: str, rows: AsyncIterator[Row], on_progress: ProgressCallback | None = None
) -> BatchReport:
    """Append ``rows`` (this shard's to-do items, in order) to the output folder, checkpointed.

    Whatever stops the rows (a Triton failure) first commits the rows already made; whatever stops
    the process (``kill -9``) loses at most the uncommitted ones, which the next run makes again.
    """
    settings = plan.settings
    started = time.perf_counter()
    folder = settings.folder
    folder.mkdir(parents=True, exist_ok=True)
    with Checkpoint(folder) as checkpoint:
        if not checkpoint.meta():
            checkpoint.start(_new_meta(plan, version))
        try:
            files = ResultFiles(folder, checkpoint.offsets())
        except DamagedOutput as error:
            raise BatchError(str(error)) from error
        committer = _Committer(checkpoint, files, settings.commit_every, settings.commit_seconds)
        try:
            if checkpoint.offsets().csv_bytes == 0:
                checkpoint.commit([], files.append(csv_header(), ""))
            iterator = aiter(rows)
            while True:
                try:
                    row = await anext(iterator)
                except StopAsyncIteration:
                    break
                except Exception:
                    committer.flush()  # the rows made before the source failed are kept
                    raise
                committer.add(row)
                if on_progress:
                    on_progress(1)
            committer.flush()
        finally:
            files.close()
        done = checkpoint.done()
    report = BatchReport(
        model=settings.model,
        version=version,
        folder=str(folder),
        shard_index=settings.shard_index,
        total=len(plan.shard_items),
        done_before=len(plan.done),
        processed=committer.ok,
        failed=committer.failed,
        done_total=len(done),
        seconds=time.perf_counter() - started,
    )
    write_text(folder / SUMMARY_FILE, json.dumps(_summary(report, done), indent=2) + "\n", durable=True)
    return report


# Each request costs about the same fixed time in gRPC and the python backend whatever its size:
# small images (a 64 px classifier) travel many to a request, large ones few. A batch job has no
# latency to protect, so requests are large: ~3.2 MB of pixels (shelf 4, crack 10, detector 8 per
# request) ran the batch job at 0.95, 1.2 and 0.89 of the bare engine where 1.5 MB (2, 4, 3) ran it
# at 0.85, 0.88 and 0.78 (benchmarks/results/batch.json, 2026-12-01).
REQUEST_BYTES = 3_200_000


def frames_per_request_for(contract: ModelContract, requested: int = 0) -> int:
    """Images per request: ``requested`` (0 = about ``REQUEST_BYTES`` of pixels), within max_batch_size."""
    if requested == 0:
        requested = max(1, REQUEST_BYTES // (contract.height * contract.width * 3))
    return max(1, min(requested, contract.max_batch_size))


async def _pick_version(client, plan: BatchPlan) -> str:
    """The version a new batch runs with (the newest Triton serves), or the one a resumed batch began with."""
    model, url = plan.settings.model, plan.settings.triton_url
    try:
        served = await client.served_versions()
    except Exception as error:  # noqa: BLE001 - any transport failure means the same thing here
        raise TritonFailure(f"cannot reach Triton at {url}: {error}; retry when it is up") from error
    if not served:  # Triton down or still loading: worth a retry (exit 1), unlike bad input (exit 2)
        raise TritonFailure(
            f"model {model!r} is not ready on Triton at {url} (or Triton is down); retry later"
        )
    pinned = plan.meta.get("version")
    if pinned is None:
        return served[-1]
    if pinned not in served:
        raise BatchError(
            f"{plan.settings.folder} was started with {model} version {pinned}, which Triton no longer "
            f"serves (serving {', '.join(served)}); results of two versions are never mixed: "
            "serve that version again or use a new output folder"
        )
    return pinned


def _new_meta(plan: BatchPlan, version: str) -> dict[str, str]:
    settings = plan.settings
    return {
        "model": settings.model,
        "version": version,
        "task": plan.contract.task.value,
        "input": str(plan.input.source),
        "input_fingerprint": plan.input.fingerprint,
        "input_images": str(len(plan.input.items)),
        "shard_index": str(settings.shard_index),
        "shard_count": str(settings.shard_count),
        "total": str(len(plan.shard_items)),
        "created": _now(),
    }


def _summary(report: BatchReport, done: dict[str, str]) -> dict[str, Any]:
    return report.to_dict() | {
        "ok_total": sum(s == "ok" for s in done.values()),
        "failed_total": sum(s == "failed" for s in done.values()),
    }


class _Committer:
    """Buffers rows and commits them in groups: files appended and fsynced, then one transaction."""

    def __init__(self, checkpoint: Checkpoint, files: ResultFiles, every: int, seconds: float) -> None:
        self.checkpoint, self.files = checkpoint, files
        self.every, self.seconds = every, seconds
        self.pending: list[Row] = []
        self.last_commit = time.monotonic()
        self.ok = self.failed = 0

    def add(self, row: Row) -> None:
        self.pending.append(row)
        if len(self.pending) >= self.every or time.monotonic() - self.last_commit >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            offsets: Offsets = self.files.append(
                "".join(row.csv_line() for row in self.pending),
                "".join(row.json_line() for row in self.pending),
            )
            self.checkpoint.commit([(row.file, row.status) for row in self.pending], offsets)
            self.ok += sum(row.status == "ok" for row in self.pending)
            self.failed += sum(row.status == "failed" for row in self.pending)
            self.pending = []
        self.last_commit = time.monotonic()


FrameStream = Callable[[Iterator[np.ndarray]], AsyncIterator[FrameResult]]


async def ordered_rows(plan: BatchPlan, version: str, stream: FrameStream) -> AsyncIterator[Row]:
    """Rows of ``plan.todo`` in input order: the images that decode go through ``stream`` (Triton's
    ``TritonModelClient.stream``: results in order, frame_index counting from 0), the ones that do
    not become failed rows in their place."""
    todo = plan.todo
    model, labels = plan.settings.model, plan.contract.labels
    failures: dict[int, str] = {}  # position in todo -> reason it could not be read
    positions: list[int] = []  # frame index -> position in todo

    def frames() -> Iterator[np.ndarray]:
        for position, (_, path) in enumerate(todo):
            try:
                frame = decode_image(path.read_bytes())
            except (OSError, ImageError) as error:
                failures[position] = _reason(error)
                continue
            positions.append(position)
            yield frame

    next_position = 0

    def failed_before(position: int) -> Iterator[Row]:
        nonlocal next_position
        while next_position < position:
            key = todo[next_position][0]
            yield failed_row(key, model, version, failures[next_position])
            next_position += 1

    async for result in stream(frames()):
        position = positions[result.frame_index]
        for row in failed_before(position):
            yield row
        yield prediction_row(todo[position][0], model, version, result.prediction, labels)
        next_position = position + 1
    for row in failed_before(len(todo)):
        yield row


def _reason(error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, ImageError):
        return f"{error.code}: {error}"
    return f"unreadable: {error}"


# ---- Merging shards -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeReport:
    shards: int
    rows: int
    ok: int
    failed: int
    model: str
    version: str


class ShardsPending(BatchError):
    """Some shards are missing or unfinished; the message names them."""


def merge_shards(output: Path) -> MergeReport:
    """Join ``OUTPUT/shard-<i>/`` results into ``OUTPUT/predictions.{csv,jsonl}``, sorted by file.

    Refuses shards of different models, versions or inputs (``BatchError``), and missing or
    unfinished shards (``ShardsPending``): the merged files claim the whole input, once. Merging
    again gives the same files, so every shard may try it when it finishes: the last one succeeds.
    """
    output = Path(output)
    if not output.is_dir():  # no shard has started (or the input had no images)
        raise ShardsPending(f"output folder {output} does not exist")
    folders = {
        int(m.group(1)): p for p in output.iterdir() if p.is_dir() and (m := SHARD_FOLDER.match(p.name))
    }
    metas, offsets, unfinished = {}, {}, []
    for index, folder in sorted(folders.items()):
        # A shard's summary.json says "complete" only after its writer closed the checkpoint: a
        # running shard's SQLite file (maybe on another node's network mount) is never opened here.
        if not _summary_says_complete(folder):
            unfinished.append(f"shard-{index}")
            continue
        with Checkpoint(folder, read_only=True) as checkpoint:
            meta, done, committed = checkpoint.meta(), checkpoint.done(), checkpoint.offsets()
        if not meta or len(done) != int(meta["total"]):
            raise BatchError(f"{folder}: summary.json says complete but the checkpoint disagrees")
        metas[index], offsets[index] = meta, committed
    if not folders:
        raise ShardsPending(f"{output} holds no shard-<i> folders to merge")
    if not metas:
        raise ShardsPending(f"{output}: no shard has finished yet ({', '.join(unfinished)})")
    first = metas[min(metas)]
    for index, meta in metas.items():
        for key in ("model", "version", "input", "input_fingerprint", "shard_count"):
            if meta[key] != first[key]:
                raise BatchError(
                    f"shard-{index} differs from shard-{min(metas)} in {key} "
                    f"({meta[key]!r} vs {first[key]!r}): shards of different batches are never merged"
                )
    count = int(first["shard_count"])
    extra = sorted(set(metas) - set(range(count)))
    if extra:
        raise BatchError(f"{output}: {count} shards expected, found shard folders {extra} beyond them")
    missing = sorted(set(range(count)) - set(folders))
    if missing or unfinished:
        raise ShardsPending(
            f"{output}: of {count} shards, missing {missing}, not finished {unfinished}: "
            "run those shards first"
        )

    csv_rows: list[list[str]] = []
    json_lines: list[tuple[str, str]] = []
    for index in sorted(metas):
        folder = folders[index]
        csv_text = read_committed(folder, CSV_FILE, offsets[index].csv_bytes)
        csv_rows.extend(list(csv.reader(io.StringIO(csv_text)))[1:])
        for line in read_committed(folder, JSONL_FILE, offsets[index].jsonl_bytes).splitlines():
            json_lines.append((json.loads(line)["file"], line))
    files = [row[0] for row in csv_rows]
    if len(set(files)) != len(files) or len(files) != int(first["input_images"]):
        raise BatchError(
            f"shards hold {len(files)} rows ({len(set(files))} distinct) for {first['input_images']} images"
        )
    csv_rows.sort(key=lambda row: row[0])
    json_lines.sort()
    buffer = io.StringIO()
    buffer.write(csv_header())
    csv.writer(buffer, lineterminator="\n").writerows(csv_rows)
    write_text(output / CSV_FILE, buffer.getvalue(), durable=True)
    write_text(output / JSONL_FILE, "".join(line + "\n" for _, line in json_lines), durable=True)
    failed = sum(row[3] == "failed" for row in csv_rows)
    report = MergeReport(
        count, len(csv_rows), len(csv_rows) - failed, failed, first["model"], first["version"]
    )
    write_text(output / SUMMARY_FILE, json.dumps(asdict(report), indent=2) + "\n", durable=True)
    return report


def _summary_says_complete(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / SUMMARY_FILE).read_text()).get("complete"))
    except (OSError, ValueError):
        return False


# ---- Metrics --------------------------------------------------------------------------------------

PUSH_JOB = "prodseg_batch"


def push_metrics(url: str, report: BatchReport) -> None:
    """Push this run's metrics to a Prometheus Pushgateway, grouped by job, model and shard.

    ``pushadd`` replaces only the metrics it sends: an unfinished run leaves the group's last success
    time as it was, so an alert on its age sees the batch that never completed.
    """
    from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

    registry = CollectorRegistry()

    def gauge(name: str, help_text: str, value: float) -> None:
        Gauge(name, help_text, registry=registry).set(value)

    gauge("prodseg_batch_images_processed", "Images predicted by the last run", report.processed)
    gauge("prodseg_batch_images_failed", "Images the last run could not read or decode", report.failed)
    gauge("prodseg_batch_images_total", "Images this shard owns", report.total)
    gauge("prodseg_batch_images_done", "Images of this shard done, over all runs", report.done_total)
    gauge("prodseg_batch_duration_seconds", "Wall time of the last run", report.seconds)
    gauge("prodseg_batch_images_per_second", "Throughput of the last run", report.images_per_s)
    if report.complete:
        gauge("prodseg_batch_last_success_timestamp_seconds", "When the batch last completed", time.time())
    grouping = {"model": report.model, "shard": str(report.shard_index)}
    pushadd_to_gateway(url, job=PUSH_JOB, registry=registry, grouping_key=grouping, timeout=10)
