"""The load of ``python -m loadtest.soak``: the usual camera and upload users (``locustfile.py``;
the soak paces uploads with its ``--upload-every-s``), and cumulative counters appended to
``--progress-file`` every ``--progress-seconds`` (one JSON line each), so the soak can plot request
rates and errors over time and still has figures if Locust dies half-way."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import gevent
from locust import events

# Locust runs the user and shape classes it finds in this module: the project's own.
from loadtest.locustfile import RECORDER, CameraUser, StepShape, UploadUser  # noqa: F401

CAMERA_REQUEST = "grpc"  # the request type camera frames report (locustfile.CameraUser)
JOB_REQUEST = "job"  # an upload's job followed to completion (locustfile.UploadUser)
KEPT_ERROR_MESSAGES = 20  # distinct messages kept in each line; the counts above are complete


class Counters:
    def __init__(self) -> None:
        self.camera_frames = 0
        self.camera_failures = 0
        self.http_requests = 0
        self.http_errors = 0
        self.upload_jobs = 0
        self.upload_job_failures = 0
        self.errors: Counter[str] = Counter()

    def record(self, request_type: str, name: str, exception: BaseException | None) -> None:
        if request_type == CAMERA_REQUEST:
            self.camera_frames += 1
            self.camera_failures += exception is not None
        elif request_type == JOB_REQUEST:
            self.upload_jobs += 1
            self.upload_job_failures += exception is not None
        else:  # the gateway's HTTP routes (POST the video, GET the job, DELETE it)
            self.http_requests += 1
            self.http_errors += exception is not None
        if exception is not None:
            self.errors[f"{request_type} {name}: {str(exception)[:200]}"] += 1


COUNTERS = Counters()


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--progress-file", default="out/soak/progress.jsonl")
    parser.add_argument("--progress-seconds", type=float, default=2.0)


@events.request.add_listener
def _count(request_type, name, exception=None, **_) -> None:
    COUNTERS.record(request_type, name, exception)


def progress_line(environment) -> dict:
    runner = environment.runner
    return {
        "time": time.time(),
        "users": runner.user_count if runner else 0,
        "camera_frames": COUNTERS.camera_frames,
        "camera_failures": COUNTERS.camera_failures,
        "dropped_frames": len(RECORDER.drop_times),
        "http_requests": COUNTERS.http_requests,
        "http_errors": COUNTERS.http_errors,
        "upload_jobs": COUNTERS.upload_jobs,
        "upload_job_failures": COUNTERS.upload_job_failures,
        # Exceptions a task raised outside a reported request (a bad JSON body, say): failures too.
        "user_exceptions": sum(row["count"] for row in runner.exceptions.values()) if runner else 0,
        "errors": dict(COUNTERS.errors.most_common(KEPT_ERROR_MESSAGES)),
    }


def _append(environment) -> None:
    path = Path(environment.parsed_options.progress_file)
    with open(path, "a") as file:
        file.write(json.dumps(progress_line(environment)) + "\n")


def _write_forever(environment) -> None:
    while True:
        _append(environment)
        gevent.sleep(environment.parsed_options.progress_seconds)


WRITER: list[gevent.Greenlet] = []


@events.test_start.add_listener
def _start(environment, **_) -> None:
    Path(environment.parsed_options.progress_file).parent.mkdir(parents=True, exist_ok=True)
    WRITER.append(gevent.spawn(_write_forever, environment))


@events.test_stop.add_listener
def _stop(environment, **_) -> None:
    for writer in WRITER:
        writer.kill(block=False)
    _append(environment)  # the final counts, after every user stopped
