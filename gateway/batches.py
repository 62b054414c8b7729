"""Batch uploads: a zip of images, or several images, turned into the input folder of a batch job.

The zip is read defensively: only image files are taken, names are flattened to safe ones (no
absolute paths or ``..``), and the number of files and their uncompressed size are bounded before
anything is written, so a zip bomb is refused without filling the disk.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

from gateway.errors import ApiError
from gateway.uploads import StoredUpload

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def build_input(uploads: list[StoredUpload], folder: Path, max_files: int, max_bytes: int) -> int:
    """Fill ``folder`` with the batch's images; returns their number (``ApiError`` 413/415/422)."""
    folder.mkdir(parents=True, exist_ok=True)
    names: set[str] = set()

    def place(name: str) -> Path:
        stem, suffix = Path(name).stem, Path(name).suffix.lower()
        candidate = f"{_UNSAFE.sub('_', stem)[:80] or 'image'}{suffix}"
        counter = 1
        while candidate in names:
            counter += 1
            candidate = f"{_UNSAFE.sub('_', stem)[:80]}-{counter}{suffix}"
        names.add(candidate)
        return folder / candidate

    if len(uploads) == 1 and zipfile.is_zipfile(uploads[0].path):
        with zipfile.ZipFile(uploads[0].path) as archive:
            members = [
                m
                for m in archive.infolist()
                if not m.is_dir() and Path(m.filename).suffix.lower() in IMAGE_SUFFIXES
            ]
            if len(members) > max_files:
                raise ApiError(
                    413, "too_many_files", f"the zip holds {len(members)} images; at most {max_files}"
                )
            if sum(m.file_size for m in members) > max_bytes:
                raise ApiError(
                    413, "upload_too_large", f"the zip's images exceed {max_bytes} bytes uncompressed"
                )
            for member in members:
                with archive.open(member) as source, open(place(Path(member.filename).name), "wb") as target:
                    shutil.copyfileobj(source, target)
        count = len(members)
    else:
        for upload in uploads:
            shutil.move(upload.path, place(upload.filename or upload.path.name))
        count = len(uploads)
    if count == 0:
        raise ApiError(422, "no_images", "the batch holds no image (PNG, JPEG, BMP, WebP) to process")
    return count
