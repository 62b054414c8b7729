"""SKU-110K annotations: valid rows parse, each kind of bad row is skipped with its line and reason."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from clients.labels import LabelMap
from datagen.shelves import render_scene, scene_seed
from training.datasets import DatasetError
from training.sku110k import COLUMNS, Box, read_annotations, write_sku110k_from_synth


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """``a.jpg`` is 100x80 (width x height), ``b.png`` 40x30."""
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), np.zeros((80, 100, 3), np.uint8))
    cv2.imwrite(str(folder / "b.png"), np.zeros((30, 40, 3), np.uint8))
    return folder


def write_csv(folder: Path, lines: list[str]) -> Path:
    path = folder / "annotations.csv"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_valid_rows_are_parsed_per_image(tmp_path: Path, images: Path) -> None:
    csv_path = write_csv(
        tmp_path,
        [
            "a.jpg,10,20,30,40,object,100,80",
            "b.png,0,0,40,30,object,40,30",  # the whole image: touching the border is inside
            "a.jpg,1.6,2,50.2,79,object,100,80",  # fractional pixels round
        ],
    )
    annotations = read_annotations(csv_path, images)
    assert annotations.boxes == {
        "a.jpg": [Box(10, 20, 30, 40), Box(2, 2, 50, 79)],
        "b.png": [Box(0, 0, 40, 30)],
    }
    assert annotations.skipped == [] and annotations.missing_images == []
    report = annotations.report()
    assert (report["rows"], report["valid_rows"], report["images"], report["skipped_rows"]) == (3, 3, 2, 0)


def test_each_bad_row_is_skipped_with_its_line_and_reason(tmp_path: Path, images: Path) -> None:
    csv_path = write_csv(
        tmp_path,
        [
            "a.jpg,10,20,30,40,object,100,80",
            "a.jpg,10,20,30,40,object,100",
            "a.jpg,10,twenty,30,40,object,100,80",
            "a.jpg,30,20,30,40,object,100,80",
            "a.jpg,10,40,30,20,object,100,80",
            "a.jpg,90,20,101,40,object,100,80",
            "a.jpg,-1,20,30,40,object,100,80",
            "nope.jpg,10,20,30,40,object,100,80",
            "b.png,1,1,5,5,object,100,80",
            "../a.jpg,10,20,30,40,object,100,80",
            "notes.txt,10,20,30,40,object,100,80",
            "a.jpg,10,20,30,40,object,0,80",
            "nope.jpg,1,2,3,4,object,100,80",
            "b.png,1,1,5,5,object,40,30",
        ],
    )
    annotations = read_annotations(csv_path, images)
    assert annotations.boxes == {"a.jpg": [Box(10, 20, 30, 40)], "b.png": [Box(1, 1, 5, 5)]}
    assert [(row.line, row.kind) for row in annotations.skipped] == [
        (2, "field count"),
        (3, "not a number"),
        (4, "empty box"),
        (5, "empty box"),
        (6, "outside image"),
        (7, "outside image"),
        (8, "missing image"),
        (9, "size mismatch"),
        (10, "bad image name"),
        (11, "bad image name"),
        (12, "bad image size"),
        (13, "missing image"),
    ]
    reasons = {row.line: row.reason for row in annotations.skipped}
    assert reasons[2] == "expected 8 fields (" + ",".join(COLUMNS) + "), got 7"
    assert reasons[3] == "y1 is 'twenty', not a number"
    assert reasons[6] == "box (90,20)-(101,40) reaches outside the 100x80 image"
    assert reasons[9] == "the CSV says b.png is 100x80 but the file is 40x30"
    assert annotations.missing_images == ["nope.jpg"]
    report = json.loads(json.dumps(annotations.report()))  # JSON-able
    assert report["skipped_by_kind"]["missing image"] == 2 and report["skipped_rows"] == 12
    assert report["skipped"][0] == {"line": 2, "kind": "field count", "reason": reasons[2]}


def test_a_header_is_tolerated(tmp_path: Path, images: Path) -> None:
    csv_path = write_csv(tmp_path, [",".join(COLUMNS), "a.jpg,10,20,30,40,object,100,80"])
    annotations = read_annotations(csv_path, images)
    assert annotations.boxes == {"a.jpg": [Box(10, 20, 30, 40)]} and annotations.skipped == []


def test_unreadable_empty_or_all_bad_csv_is_an_error_naming_it(tmp_path: Path, images: Path) -> None:
    with pytest.raises(DatasetError, match=r"missing\.csv: no such annotations CSV"):
        read_annotations(tmp_path / "missing.csv", images)
    empty = write_csv(tmp_path, [])
    with pytest.raises(DatasetError, match=r"annotations\.csv: no annotation rows"):
        read_annotations(empty, images)
    write_csv(tmp_path, [",".join(COLUMNS)])
    with pytest.raises(DatasetError, match="no annotation rows"):
        read_annotations(empty, images)
    write_csv(tmp_path, ["a.jpg,1,2", "nope.jpg,10,20,30,40,object,100,80"])
    with pytest.raises(
        DatasetError, match=r"none of its 2 rows is valid \(field count x1, missing image x1\)"
    ):
        read_annotations(empty, images)
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match=r"binary\.csv: cannot read"):
        read_annotations(tmp_path / "binary.csv", images)


def test_image_size_is_the_decoded_one_for_exif_rotated_jpegs(tmp_path: Path, images: Path) -> None:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40x30, shown turned a quarter: 30x40, as OpenCV decodes it
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(images / "turned.jpg", exif=exif.tobytes())
    assert cv2.imread(str(images / "turned.jpg")).shape[:2] == (40, 30)
    csv_path = write_csv(tmp_path, ["turned.jpg,0,0,30,40,object,30,40", "turned.jpg,0,0,40,30,object,40,30"])
    annotations = read_annotations(csv_path, images)
    assert annotations.boxes == {"turned.jpg": [Box(0, 0, 30, 40)]}
    assert [(row.line, row.kind) for row in annotations.skipped] == [(2, "size mismatch")]


def test_a_corrupt_image_is_skipped_as_unreadable(tmp_path: Path, images: Path) -> None:
    (images / "c.jpg").write_bytes(b"not a jpeg")
    csv_path = write_csv(tmp_path, ["a.jpg,10,20,30,40,object,100,80", "c.jpg,1,1,5,5,object,10,10"])
    (skipped,) = read_annotations(csv_path, images).skipped
    assert (skipped.line, skipped.kind) == (2, "unreadable image")


def test_synth_boxes_cover_the_products(sku_dir: Path, labels: LabelMap) -> None:
    annotations = read_annotations(sku_dir / "annotations.csv", sku_dir / "images")
    assert annotations.skipped == [] and sorted(annotations.boxes) == [
        "000000.jpg",
        "000001.jpg",
        "000002.jpg",
    ]
    assert not (sku_dir / "annotations.csv").read_text().startswith("image_name"), "official files: no header"
    product = labels.index("product")
    for index in range(3):
        region = render_scene(scene_seed(0, index), 96, 160, labels).mask == product
        covered = np.zeros_like(region)
        for box in annotations.boxes[f"{index:06d}.jpg"]:
            assert region[box.y1 : box.y2, box.x1 : box.x2].any()
            covered[box.y1 : box.y2, box.x1 : box.x2] = True
        assert covered[region].mean() > 0.98, "only slivers below the minimum box area go without a box"
        assert cv2.imread(str(sku_dir / "images" / f"{index:06d}.jpg")).shape == (96, 160, 3)
    with pytest.raises(DatasetError, match="not empty"):
        write_sku110k_from_synth(sku_dir, count=1, seed=0, height=96, width=160)


def test_ingest_command_reports_skipped_rows(tmp_path: Path, images: Path, prodseg) -> None:
    csv_path = write_csv(tmp_path, ["a.jpg,10,20,30,40,object,100,80", "a.jpg,10,20,30"])
    result = prodseg("ingest", str(csv_path), str(images), "--report", str(tmp_path / "report.json"))
    assert result.returncode == 0, result.stderr
    assert "2 rows: 1 valid boxes on 1 images, 1 skipped" in result.stderr
    assert "line 2: expected 8 fields" in result.stderr
    assert json.loads((tmp_path / "report.json").read_text())["skipped"][0]["line"] == 2

    result = prodseg("ingest", str(tmp_path / "nope.csv"), str(images))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.csv'}: no such annotations CSV"
    assert "Traceback" not in result.stderr
