"""Loaders for the layouts users bring: every bad file or row reported by where and why."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from training.classification.data import (
    Arrays,
    Augment,
    DatasetError,
    image_folder_splits,
    load_csv,
    load_image_folder,
    make_splits,
    normalise_label,
    sample_batch,
)

CLASSES = ("casual_shoes", "handbags", "shirts", "tops", "watches")


def _jpg(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((20, 30, 3), value, np.uint8))
    return path


def test_catalogue_names_map_to_label_names() -> None:
    assert normalise_label(" Casual Shoes ") == "casual_shoes"
    assert normalise_label("Hand-bags") == "hand_bags"
    assert normalise_label("WATCHES") == "watches"


def test_image_folder_keeps_good_images_and_reports_each_bad_file(tmp_path: Path) -> None:
    _jpg(tmp_path / "watches" / "a.jpg")
    _jpg(tmp_path / "Casual Shoes" / "b.jpg")  # catalogue spelling of a class
    _jpg(tmp_path / "sandals" / "c.jpg")  # not a class
    (tmp_path / "handbags").mkdir()
    (tmp_path / "handbags" / "notes.txt").write_text("not an image")
    (tmp_path / "handbags" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "readme.md").write_text("stray file")

    files, report = load_image_folder(tmp_path, CLASSES)

    assert sorted(files.labels) == [0, 4] and report.loaded == 2
    reasons = {Path(entry["where"]).name: entry["reason"] for entry in report.skipped}
    assert reasons["sandals"].startswith("folder names no class")
    assert reasons["notes.txt"].startswith("not an image file")
    assert reasons["broken.jpg"] == "does not decode as an image"
    assert reasons["readme.md"] == "not in a class folder"
    sample = files[0]
    assert sample.image.shape == (20, 30, 3) and sample.image.dtype == np.uint8


def test_image_folder_splits_read_split_folders_and_cut_the_missing_ones(tmp_path: Path) -> None:
    for index in range(10):
        _jpg(tmp_path / "train" / CLASSES[index % 5] / f"{index}.jpg")
    _jpg(tmp_path / "test" / "tops" / "t.jpg")
    splits, reports = image_folder_splits(tmp_path, CLASSES, seed=0, val_fraction=0.2, test_fraction=0.5)
    assert {name: len(split) for name, split in splits.items()} == {"train": 8, "val": 2, "test": 1}
    assert len(reports) == 2


def test_an_empty_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no usable images"):
        load_image_folder(tmp_path / "empty", CLASSES)
    with pytest.raises(DatasetError, match="not a folder"):
        load_image_folder(tmp_path / "missing", CLASSES)


def test_csv_rows_are_checked_and_every_bad_row_reported_by_line(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _jpg(images / "1.jpg")
    _jpg(images / "2.jpg")
    _jpg(images / "3.png")
    (images / "4.jpg").write_bytes(b"not a jpeg")
    rows = [
        "image,label",
        "images/1.jpg,Casual Shoes",  # line 2: good, catalogue spelling
        "images/2,watches",  # line 3: good, id without extension -> 2.jpg
        "images/3.png,Sunglasses",  # line 4: a catalogue class we do not train
        "images/missing.jpg,tops",  # line 5
        "images/4.jpg,tops",  # line 6: does not decode
        "images/1.jpg,handbags",  # line 7: listed twice
        ",shirts",  # line 8: empty image
        "images/3.png,shirts,extra",  # line 9: too many fields
    ]
    csv_path = tmp_path / "styles.csv"
    csv_path.write_text("\n".join(rows) + "\n")

    files, report = load_csv(csv_path, CLASSES)

    assert files.labels == (0, 4) and report.loaded == 2
    reasons = {int(entry["where"].rsplit(":", 1)[1]): entry["reason"] for entry in report.skipped}
    assert sorted(reasons) == [4, 5, 6, 7, 8, 9]
    assert "'Sunglasses' is not a class" in reasons[4]
    assert "not found" in reasons[5]
    assert "does not decode" in reasons[6]
    assert "already listed on line 2" in reasons[7]
    assert "empty 'image'" in reasons[8]
    assert "expected 2 fields" in reasons[9]


def test_a_csv_without_the_columns_is_refused_at_line_1(tmp_path: Path) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("id,articleType\n1,Watches\n")
    with pytest.raises(DatasetError, match=r"bad.csv:1: .*no 'image' column"):
        load_csv(csv_path, CLASSES)
    # The catalogue's own columns work when named.
    _jpg(tmp_path / "1.jpg")
    files, _ = load_csv(csv_path, CLASSES, image_column="id", label_column="articleType")
    assert files.labels == (4,)


def test_procedural_splits_use_distinct_seeds_and_check_the_classes() -> None:
    spec = SimpleNamespace(kind="procedural", generator="products", seed=0, train=5, val=5, test=5)
    splits, report = make_splits(spec, CLASSES, size=32)
    assert report["train_images"] == 5 and report["source"] == "datagen.products"
    assert not np.array_equal(splits["train"][0].image, splits["val"][0].image)
    with pytest.raises(DatasetError, match="engagement generator labels"):
        make_splits(SimpleNamespace(**{**vars(spec), "generator": "engagement"}), CLASSES, size=32)


def test_batches_augment_only_when_asked() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    data = Arrays(images, np.arange(4))
    # Flips only (engagement): every batch image is a source image, mirrored or not.
    batch, targets = sample_batch(data, Augment(hflip=0.5), 32, np.random.default_rng(1))
    assert targets.aux is None  # arrays without auxiliary targets
    for image, label in zip(batch, targets.labels, strict=True):
        assert np.array_equal(image, images[label]) or np.array_equal(image, images[label][:, ::-1])
    # Crops and jitter (returns): same shape and dtype, pixels changed.
    augment = Augment(hflip=0.0, crop=(8, 8), brightness=0.3, contrast=0.3)
    batch, targets = sample_batch(data, augment, 8, np.random.default_rng(2))
    assert batch.shape == (8, 16, 16, 3) and batch.dtype == np.uint8
    pairs = zip(batch, targets.labels, strict=True)
    assert not all(np.array_equal(image, images[label]) for image, label in pairs)
    # Vertical flips and transposes, as the pipeline's augment section allows.
    batch, targets = sample_batch(
        data, Augment(hflip=0.0, vflip=1.0, transpose=1.0), 4, np.random.default_rng(3)
    )
    for image, label in zip(batch, targets.labels, strict=True):
        assert np.array_equal(image, images[label][::-1].transpose(1, 0, 2))
