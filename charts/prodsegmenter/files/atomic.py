"""Atomic file writes: a file appears at its path complete, or not at all.

The one home for write-to-a-partial-then-rename. Readers (Triton, a browser downloading a result,
the next pipeline stage) never see half a file, and a crash leaves at most a hidden ``.partial``.
Standard library only, so the chart's pod-start scripts can use the same code.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path | str, durable: bool = False) -> Iterator[Path]:
    """Yield a hidden partial path beside ``path``; on success rename it over ``path``.

    For writers that open files by name (PyAV, zipfile, OpenCV). On an exception the partial file
    is removed and ``path`` is left as it was. ``durable`` fsyncs the file and its folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    partial = Path(name)
    os.chmod(partial, 0o644)  # mkstemp makes 0600; results are read by other processes and users
    try:
        yield partial
        if durable:
            _fsync(partial)
        os.replace(partial, path)
        if durable:
            _fsync(path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_bytes(path: Path | str, data: bytes, durable: bool = False) -> None:
    with atomic_path(path, durable) as partial:
        partial.write_bytes(data)


def write_text(path: Path | str, text: str, durable: bool = False) -> None:
    write_bytes(path, text.encode(), durable)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
