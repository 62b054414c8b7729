"""The load of ``python -m loadtest.rollout``: the usual camera and upload users (``locustfile.py``),
plus a time-stamped record of every request and dropped frame, so the run can be cut into before,
during and after the rollout."""

from __future__ import annotations

import json
import time
from pathlib import Path

from locust import events

# Locust runs the user and shape classes it finds in this module: the project's own.
from loadtest.locustfile import RECORDER, CameraUser, StepShape, UploadUser  # noqa: F401

EVENTS: list[list] = []  # [finished at (wall clock), request type, name, latency ms, error or ""]


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--events-file", default="out/rollout/events.json")


@events.request.add_listener
def _record(request_type, name, response_time, exception=None, **_) -> None:
    EVENTS.append([time.time(), request_type, name, round(response_time, 2), str(exception or "")[:300]])


@events.test_stop.add_listener
def _write(environment, **_) -> None:
    path = Path(environment.parsed_options.events_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"requests": EVENTS, "drops": RECORDER.drop_times}))
