"""Streaming multipart uploads straight to disk, with the size limit enforced while bytes arrive.

Starlette's ``request.form()`` would spool the whole body before we could check its size; parsing the
stream ourselves lets a too-large upload be refused without storing it, and a video never sits in
memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import ApiError


@dataclass(frozen=True)
class StoredUpload:
    path: Path
    filename: str
    size: int


async def receive_file(
    request: Request, destination: Path, max_bytes: int, field: str = "file"
) -> StoredUpload:
    """Write the multipart part named ``field`` to ``destination``; raise ``ApiError`` on bad input."""
    return (await receive_files(request, destination.parent, max_bytes, 1, field, [destination.name]))[0]


async def receive_files(
    request: Request,
    directory: Path,
    max_bytes: int,
    max_files: int,
    field: str = "file",
    names: list[str] | None = None,
) -> list[StoredUpload]:
    """Write every part named ``field`` (up to ``max_files``) to its own file in ``directory``.

    ``max_bytes`` bounds the whole body. Files are named ``names[i]`` or ``upload-<i>``; each appears
    only once complete. Raises ``ApiError`` for a body that is not multipart, too large, malformed,
    without the field, with too many files, or with an empty file.
    """
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(
            415, "not_multipart", f"send the file as multipart/form-data in a part named '{field}'"
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise ApiError(
            413, "upload_too_large", f"upload of {int(declared)} bytes exceeds the limit of {max_bytes}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    state = _PartState(field, directory, max_files, names or [])
    parser = MultipartParser(params[b"boundary"], state.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if state.total > max_bytes:
                raise ApiError(413, "upload_too_large", f"upload exceeds the limit of {max_bytes} bytes")
        parser.finalize()
    except ApiError:
        state.discard()
        raise
    except Exception as error:  # malformed multipart body
        state.discard()
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {error}") from error
    finally:
        state.close()
    if not state.stored:
        state.discard()
        raise ApiError(400, "missing_file", f"no part named '{field}' in the form")
    empty = [upload.filename or f"#{i + 1}" for i, upload in enumerate(state.stored) if upload.size == 0]
    if empty:
        state.discard()
        raise ApiError(400, "empty_upload", f"uploaded file {empty[0]} is empty")
    for upload in state.stored:
        os.replace(_partial(upload.path), upload.path)
    return state.stored


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


class _PartState:
    """Collects the headers of each part and writes the wanted parts' bytes, one file each."""

    def __init__(self, field: str, directory: Path, max_files: int, names: list[str]) -> None:
        self.field, self.directory, self.max_files, self.names = field, directory, max_files, names
        self.stored: list[StoredUpload] = []
        self.total = 0
        self._sink = None
        self._size = 0
        self._filename = ""
        self._header_field = b""
        self._header_value = b""
        self._disposition = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._add("_header_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._add("_header_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _add(self, attribute: str, data: bytes) -> None:
        setattr(self, attribute, getattr(self, attribute) + data)

    def _part_begin(self) -> None:
        self._disposition = b""

    def _header_end(self) -> None:
        if self._header_field.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != self.field.encode():
            return
        index = len(self.stored)
        if index >= self.max_files:
            raise ApiError(413, "too_many_files", f"at most {self.max_files} files per request")
        name = self.names[index] if index < len(self.names) else f"upload-{index}"
        self._filename = options.get(b"filename", b"").decode(errors="replace")
        self._size = 0
        self._sink = open(_partial(self.directory / name), "wb")  # noqa: SIM115 - closed in _part_end
        self.stored.append(StoredUpload(self.directory / name, self._filename, 0))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self.total += end - start
        if self._sink is not None:
            self._sink.write(data[start:end])
            self._size += end - start

    def _part_end(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
            last = self.stored[-1]
            self.stored[-1] = StoredUpload(last.path, last.filename, self._size)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def discard(self) -> None:
        self.close()
        for upload in self.stored:
            _partial(upload.path).unlink(missing_ok=True)
            upload.path.unlink(missing_ok=True)
