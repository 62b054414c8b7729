"""YOLO txt and Pascal VOC loaders: good rows load, every bad row or file is reported by name and reason."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datagen.faces import CLASSES, write_yolo_dataset
from training.detection.data import Sample, augment, load_voc, load_yolo, random_crop, resize_sample


def _image(path: Path, height: int = 100, width: int = 200) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 128, np.uint8))


@pytest.fixture
def yolo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "yolo"
    (root / "labels").mkdir(parents=True)
    (root / "data.yaml").write_text("names: [with_mask, without_mask, mask_weared_incorrect]\n")
    _image(root / "images" / "good.jpg")
    (root / "labels" / "good.txt").write_text("0 0.5 0.5 0.2 0.4\n2 0.25 0.25 0.1 0.1\n")
    _image(root / "images" / "mixed.png")
    (root / "labels" / "mixed.txt").write_text(
        "1 0.5 0.5 0.2 0.2\n"  # good
        "1 0.5 0.5 0.2\n"  # 4 values
        "x 0.5 0.5 0.2 0.2\n"  # not a number
        "7 0.5 0.5 0.2 0.2\n"  # class not in names
        "0 1.5 0.5 0.2 0.2\n"  # not normalised
        "0 0.5 0.5 0.0 0.2\n"  # zero width
    )
    _image(root / "images" / "background.jpg")  # no label file: an image without faces
    (root / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    return root


def test_yolo_loads_good_rows_and_reports_each_bad_one(yolo_dir: Path) -> None:
    report = load_yolo(yolo_dir, CLASSES)
    by_name = {image.path.name: image for image in report.images}
    assert sorted(by_name) == ["background.jpg", "good.jpg", "mixed.png"]
    good = by_name["good.jpg"]
    np.testing.assert_allclose(good.boxes[0], [80, 30, 120, 70])  # cx .5 cy .5 w .2 h .4 of 200x100
    assert good.class_ids.tolist() == [0, 2]  # mask_weared_incorrect is mask_worn_incorrectly
    assert by_name["mixed.png"].class_ids.tolist() == [1]
    assert report.backgrounds == 1
    reasons = dict(report.skipped)
    assert reasons["orphan.txt"] == "label file without an image of the same stem"
    assert reasons["broken.jpg"] == "not a readable image"
    assert "expected 5 values" in reasons["mixed.txt:2"]
    assert "not numbers" in reasons["mixed.txt:3"]
    assert "class 7 is not in data.yaml names" in reasons["mixed.txt:4"]
    assert "normalised to 0..1" in reasons["mixed.txt:5"]
    assert "zero width or height" in reasons["mixed.txt:6"]
    assert len(report.skipped) == 7


def test_yolo_refuses_class_names_the_model_does_not_have(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "data.yaml").write_text("names: {0: helmet}\n")
    with pytest.raises(ValueError, match="helmet not among the model's classes"):
        load_yolo(tmp_path, CLASSES)
    (tmp_path / "data.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="no data.yaml"):
        load_yolo(tmp_path, CLASSES)


def test_generated_yolo_dataset_round_trips(tmp_path: Path) -> None:
    root = write_yolo_dataset(tmp_path / "faces", 4, height=128, width=160)
    report = load_yolo(root, CLASSES)
    assert len(report.images) == 4 and not report.skipped
    from datagen.faces import render_faces, scene_seed

    scene = render_faces(scene_seed("train", 0), 128, 160)
    np.testing.assert_allclose(report.images[0].boxes, scene.boxes, atol=0.01)


def _voc(root: Path, stem: str, objects: str, filename: str | None = None) -> None:
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    name = filename if filename is not None else f"{stem}.png"
    size = "<size><width>200</width><height>100</height></size>"
    xml = f"<annotation><filename>{name}</filename>{size}{objects}</annotation>"
    (root / "Annotations" / f"{stem}.xml").write_text(xml)


def _object(name: str, box: tuple) -> str:
    x1, y1, x2, y2 = box
    corners = f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
    return f"<object><name>{name}</name><bndbox>{corners}</bndbox></object>"


def test_voc_loads_good_objects_and_reports_each_bad_one(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    _image(root / "JPEGImages" / "a.png")
    _voc(
        root,
        "a",
        _object("with_mask", (10, 10, 50, 60))
        + _object("mask_weared_incorrect", (60, 10, 90, 40))  # the Kaggle set's spelling
        + _object("helmet", (10, 10, 20, 20))
        + _object("without_mask", (50, 10, 40, 20))
        + _object("without_mask", (150, 10, 260, 40))
        + "<object><name>with_mask</name></object>",
    )
    _voc(root, "missing", _object("with_mask", (1, 1, 5, 5)))
    (root / "Annotations" / "bad.xml").write_text("<annotation><filename>")
    _image(root / "JPEGImages" / "b.png")
    _voc(root, "b", "")  # no objects: a background image
    report = load_voc(root, CLASSES)
    by_name = {image.path.name: image for image in report.images}
    assert sorted(by_name) == ["a.png", "b.png"]
    np.testing.assert_allclose(by_name["a.png"].boxes, [[10, 10, 50, 60], [60, 10, 90, 40]])
    assert by_name["a.png"].class_ids.tolist() == [0, 2]
    assert report.backgrounds == 1
    reasons = dict(report.skipped)
    assert "not valid XML" in reasons["bad.xml"]
    assert "not found" in reasons["missing.xml"]
    assert "'helmet' is not among" in reasons["a.xml:object 3"]
    assert "empty box" in reasons["a.xml:object 4"]
    assert "outside the 200x100 image" in reasons["a.xml:object 5"]
    assert reasons["a.xml:object 6"] == "no bndbox"


def test_flip_zoom_and_crop_move_boxes_with_the_pixels() -> None:
    image = np.zeros((64, 96, 3), np.uint8)
    image[10:30, 20:40] = 255  # a white square where the box is
    sample = Sample(image, np.array([[20, 10, 40, 30]], np.float32), np.array([1]))
    rng = np.random.default_rng(0)
    for _ in range(20):
        moved = random_crop(augment(sample, rng), rng, 32, 64)
        for x1, y1, x2, y2 in moved.boxes:
            inside = moved.image[int(y1 + 2) : int(y2 - 1), int(x1 + 2) : int(x2 - 1)]
            assert inside.size == 0 or inside.mean() > 200
        assert moved.image.shape == (32, 64, 3) and moved.class_ids.tolist() in ([1], [])


def test_resize_scales_boxes_to_the_model_input() -> None:
    sample = Sample(
        np.zeros((100, 200, 3), np.uint8), np.array([[20, 10, 40, 30]], np.float32), np.array([0])
    )
    resized = resize_sample(sample, 50, 50)
    assert resized.image.shape == (50, 50, 3)
    np.testing.assert_allclose(resized.boxes, [[5, 5, 10, 15]])
