"""The durable state of one batch output folder: a SQLite checkpoint and the two result files.

Exactly-once under ``kill -9`` at any moment rests on one rule: result rows are appended to
``predictions.csv`` / ``predictions.jsonl`` and fsynced *before* the SQLite transaction that marks
their items done and records the files' new byte lengths. So the committed state always describes a
prefix of each file that is complete and matches the done items. On the next start the files are cut
back to those committed lengths: rows written after the last commit (a crash between fsync and
commit) disappear and their items run again. SQLite runs in WAL mode with ``synchronous=FULL``, so a
commit that returned survives a power cut, not just a killed process.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_FILE = "checkpoint.sqlite"
CSV_FILE = "predictions.csv"
JSONL_FILE = "predictions.jsonl"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed'))
);
CREATE TABLE IF NOT EXISTS offsets (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    csv_bytes INTEGER NOT NULL,
    jsonl_bytes INTEGER NOT NULL
);
"""


class DamagedOutput(RuntimeError):
    """A result file is shorter than the checkpoint says: something else changed the folder."""


@dataclass(frozen=True)
class Offsets:
    """Committed byte lengths of the two result files."""

    csv_bytes: int = 0
    jsonl_bytes: int = 0


class Checkpoint:
    """Which items of a batch are done, the batch's identity (``meta``) and the files' committed lengths."""

    def __init__(self, folder: Path, read_only: bool = False) -> None:
        self.path = Path(folder) / CHECKPOINT_FILE
        self.read_only = read_only
        if read_only:
            # mode=ro never writes; a WAL left by a killed writer is still read (its -shm is rebuilt
            # in memory), so a dry run or a merge sees exactly what was committed.
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)  # explicit BEGIN/COMMIT below
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @staticmethod
    def exists(folder: Path) -> bool:
        return (Path(folder) / CHECKPOINT_FILE).is_file()

    def close(self) -> None:
        self._db.close()  # the last connection folds the WAL back into the database file

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def meta(self) -> dict[str, str]:
        """The batch's identity; empty before the first commit (or when the schema is not there yet)."""
        try:
            return dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError:
            return {}

    def start(self, meta: dict[str, str]) -> None:
        """Record a new batch's identity with both files empty, in one transaction."""
        with self._transaction():
            self._db.execute("DELETE FROM meta")
            self._db.execute("DELETE FROM items")
            self._db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))
            self._db.execute("INSERT OR REPLACE INTO offsets (id, csv_bytes, jsonl_bytes) VALUES (1, 0, 0)")

    def offsets(self) -> Offsets:
        try:
            row = self._db.execute("SELECT csv_bytes, jsonl_bytes FROM offsets WHERE id = 1").fetchone()
        except sqlite3.OperationalError:
            return Offsets()
        return Offsets(*row) if row else Offsets()

    def done(self) -> dict[str, str]:
        """Done items: key -> status ('ok' or 'failed')."""
        try:
            return dict(self._db.execute("SELECT key, status FROM items").fetchall())
        except sqlite3.OperationalError:
            return {}

    def commit(self, items: Iterable[tuple[str, str]], offsets: Offsets) -> None:
        """Mark ``(key, status)`` items done and move the committed file lengths, atomically.

        A key done twice is a bug upstream (it would mean a row written twice): the primary key
        refuses it and the transaction rolls back.
        """
        with self._transaction():
            self._db.executemany("INSERT INTO items (key, status) VALUES (?, ?)", list(items))
            self._db.execute(
                "UPDATE offsets SET csv_bytes = ?, jsonl_bytes = ? WHERE id = 1",
                (offsets.csv_bytes, offsets.jsonl_bytes),
            )

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


class ResultFiles:
    """``predictions.csv`` and ``predictions.jsonl`` of one output folder, appended in step."""

    def __init__(self, folder: Path, committed: Offsets) -> None:
        folder = Path(folder)
        self._csv = _open_at(folder / CSV_FILE, committed.csv_bytes)
        self._jsonl = _open_at(folder / JSONL_FILE, committed.jsonl_bytes)

    def append(self, csv_text: str, jsonl_text: str) -> Offsets:
        """Append both texts, fsync both files and return their new lengths (what to commit next)."""
        for handle, text in ((self._csv, csv_text), (self._jsonl, jsonl_text)):
            handle.write(text.encode())
            handle.flush()
            os.fsync(handle.fileno())
        return Offsets(self._csv.tell(), self._jsonl.tell())

    def close(self) -> None:
        self._csv.close()
        self._jsonl.close()


def _open_at(path: Path, committed_bytes: int):
    """Open ``path`` for appending after its committed prefix: anything written later is cut off."""
    handle = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115 - closed by ResultFiles.close
    size = handle.seek(0, os.SEEK_END)
    if size < committed_bytes:
        handle.close()
        raise DamagedOutput(
            f"{path} has {size} bytes but the checkpoint committed {committed_bytes}: "
            "the file was changed by something else; start again in a new output folder"
        )
    if size > committed_bytes:
        handle.truncate(committed_bytes)
        os.fsync(handle.fileno())
    handle.seek(committed_bytes)
    return handle


def read_committed(folder: Path, name: str, committed_bytes: int) -> str:
    """The committed prefix of one result file (what a reader may trust while a batch runs)."""
    with open(Path(folder) / name, "rb") as handle:
        return handle.read(committed_bytes).decode()
