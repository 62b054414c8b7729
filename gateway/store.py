"""The gateway's durable store: one SQLite file on the data volume, one row per job, plus named state
(the A/B tests running, for example) and the active-learning "to label" queue.

Every state change of a job is written here before it is reported, so a gateway restart loses no
job: queued ones start again, running ones start again from their upload (outputs are written
atomically, so nothing half-written is ever visible) or fail with a stated reason, and finished ones
stay downloadable until their retention ends. One gateway replica writes its own file (the chart gives
each pod its own data volume).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,          -- the job's fields as JSON
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL          -- JSON
);
CREATE TABLE IF NOT EXISTS to_label (  -- the active-learning queue (gateway/active_learning.py)
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    created_at REAL NOT NULL,
    body TEXT NOT NULL,          -- the item's fields as JSON
    completed_at REAL,           -- NULL while the item waits for its label
    feedback_id TEXT             -- the feedback entry that labelled it
);
CREATE INDEX IF NOT EXISTS to_label_open ON to_label (model, completed_at, created_at)
"""


class GatewayStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the event loop and worker threads, serialised by a lock.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a job reported as saved survives a power cut
        # Job progress is saved every half second: the write-ahead log is checkpointed every 64 pages
        # (256 KB, not SQLite's default 1000, ~4 MB) and cut back to that size after each checkpoint,
        # so it stays small instead of growing for many minutes before its first reset (soak test).
        self._db.execute("PRAGMA wal_autocheckpoint=64")
        self._db.execute("PRAGMA journal_size_limit=262144")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def save(self, record: Any) -> None:
        """Insert or replace a dataclass record (``Job``), atomically."""
        body = json.dumps(asdict(record), default=str)
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, body, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                (record.id, body, time.time()),
            )

    def load(self, record_type: type) -> list[Any]:
        """Every stored record, oldest first, rebuilt as ``record_type``; unknown fields are ignored."""
        names = {f.name for f in fields(record_type)}
        with self._lock:
            rows = self._db.execute("SELECT body FROM jobs ORDER BY rowid").fetchall()
        records = []
        for (body,) in rows:
            values = {k: v for k, v in json.loads(body).items() if k in names}
            records.append(record_type.from_stored(values))
        return records

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def put_state(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key``; ``None`` removes it."""
        with self._lock:
            if value is None:
                self._db.execute("DELETE FROM state WHERE key = ?", (key,))
            else:
                self._db.execute(
                    "INSERT INTO state (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, json.dumps(value)),
                )

    def state(self, prefix: str = "") -> dict[str, Any]:
        """Every stored value whose key starts with ``prefix``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM state WHERE key LIKE ? || '%'", (prefix,)
            ).fetchall()
        return {key: json.loads(value) for key, value in rows}

    # ---- the "to label" queue: open items are those with no completed_at --------------------------

    def add_to_label(self, item_id: str, model: str, created_at: float, body: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO to_label (id, model, created_at, body) VALUES (?, ?, ?, ?)",
                (item_id, model, created_at, json.dumps(body)),
            )

    def count_to_label(self, model: str) -> int:
        """Open items of a model."""
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM to_label WHERE model = ? AND completed_at IS NULL", (model,)
            ).fetchone()
        return count

    def to_label_items(self, model: str, limit: int) -> list[dict[str, Any]]:
        """Open items of a model, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body, completed_at, feedback_id FROM to_label "
                "WHERE model = ? AND completed_at IS NULL ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (model, limit),
            ).fetchall()
        return [_to_label_row(*row) for row in rows]

    def to_label_item(self, model: str, item_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body, completed_at, feedback_id FROM to_label WHERE model = ? AND id = ?",
                (model, item_id),
            ).fetchone()
        return None if row is None else _to_label_row(*row)

    def complete_to_label(self, item_id: str, completed_at: float) -> bool:
        """Mark an open item labelled; False when it was not open (someone else completed it)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE to_label SET completed_at = ? WHERE id = ? AND completed_at IS NULL",
                (completed_at, item_id),
            )
        return cursor.rowcount == 1

    def reopen_to_label(self, item_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE to_label SET completed_at = NULL, feedback_id = NULL WHERE id = ?", (item_id,)
            )

    def set_to_label_feedback(self, item_id: str, feedback_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE to_label SET feedback_id = ? WHERE id = ?", (feedback_id, item_id))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _to_label_row(body: str, completed_at: float | None, feedback_id: str | None) -> dict[str, Any]:
    return json.loads(body) | {"completed_at": completed_at, "feedback_id": feedback_id}
