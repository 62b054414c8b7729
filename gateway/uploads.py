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

    state = _PartState(field)
    partial = destination.with_name(f".{destination.name}.partial")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "wb") as sink:
        state.sink = sink
        parser = MultipartParser(params[b"boundary"], state.callbacks())
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                if state.size > max_bytes:
                    raise ApiError(413, "upload_too_large", f"upload exceeds the limit of {max_bytes} bytes")
            parser.finalize()
        except ApiError:
            partial.unlink(missing_ok=True)
            raise
        except Exception as error:  # malformed multipart body
            partial.unlink(missing_ok=True)
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {error}") from error
    if not state.found:
        partial.unlink(missing_ok=True)
        raise ApiError(400, "missing_file", f"no part named '{field}' in the form")
    if state.size == 0:
        partial.unlink(missing_ok=True)
        raise ApiError(400, "empty_upload", "the uploaded file is empty")
    os.replace(partial, destination)
    return StoredUpload(destination, state.filename, state.size)


class _PartState:
    """Collects the headers of each part and writes only the wanted part's bytes."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.sink = None
        self.size = 0
        self.found = False
        self.filename = ""
        self._writing = False
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
        self._writing = options.get(b"name") == self.field.encode() and not self.found
        if self._writing:
            self.found = True
            self.filename = options.get(b"filename", b"").decode(errors="replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writing:
            self.sink.write(data[start:end])
            self.size += end - start

    def _part_end(self) -> None:
        self._writing = False
