"""The crack generator (exact masks, negatives, surfaces) and the loader of the public folder layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datagen.cracks import SURFACES, read_crack_folder, render_crack, sample_seed, write_crack_folder


def test_samples_are_deterministic_binary_and_sized() -> None:
    first, again = render_crack(7, 96, 128), render_crack(7, 96, 128)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.mask, again.mask)
    assert first.image.shape == (96, 128, 3) and first.image.dtype == np.uint8
    assert first.mask.shape == (96, 128) and set(np.unique(first.mask)) <= {0, 1}
    assert not np.array_equal(render_crack(8, 96, 128).image, first.image)


def test_cracks_are_thin_dark_and_labelled_exactly_where_drawn() -> None:
    samples = [render_crack(sample_seed(0, i), 160, 160, negative_fraction=0.0) for i in range(12)]
    shares = [s.mask.mean() for s in samples]
    assert all(0 < share < 0.15 for share in shares)  # every sample has a crack, and cracks are thin
    for sample in samples:
        grey = sample.image.mean(axis=2)
        # The groove is darker than the surface around it (shaded before lighting and noise).
        assert grey[sample.mask == 1].mean() < grey[sample.mask == 0].mean()


def test_negatives_have_no_crack_pixels() -> None:
    negatives = [render_crack(sample_seed(1, i), 64, 64, negative_fraction=1.0) for i in range(4)]
    assert all(sample.mask.max() == 0 for sample in negatives)
    mixed = [render_crack(sample_seed(2, i), 64, 64).mask.max() for i in range(40)]
    assert 0 < mixed.count(0) < 20  # about a fifth are negatives by default


@pytest.mark.parametrize("surface", SURFACES)
def test_every_surface_renders(surface: str) -> None:
    sample = render_crack(3, 64, 96, surface=surface)
    assert sample.surface == surface and sample.image.std() > 2  # textured, not flat


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="at least 32x32"):
        render_crack(0, 16, 64)
    with pytest.raises(ValueError, match="negative_fraction is a probability"):
        render_crack(0, 64, 64, negative_fraction=2)
    with pytest.raises(ValueError, match="unknown surface 'glass'"):
        render_crack(0, 64, 64, surface="glass")


def test_written_folders_read_back_exactly(tmp_path: Path) -> None:
    write_crack_folder(tmp_path, count=3, seed=4, height=48, width=64)
    folder = read_crack_folder(tmp_path)
    assert folder.names == ["000000", "000001", "000002"] and folder.skipped == []
    expected = render_crack(sample_seed(4, 1), 48, 64)
    sample = folder.read("000001")
    assert np.array_equal(sample.image, expected.image) and np.array_equal(sample.mask, expected.mask)
    assert not list(tmp_path.rglob(".*"))  # written atomically: no partial files left


# ------------------------------------------------------------------------------------------ loader


def write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Good pairs in every accepted form, and one bad pair or file of each kind."""
    image = np.full((8, 12, 3), 120, np.uint8)
    mask = np.zeros((8, 12), np.uint8)
    mask[2:4, 1:11] = 1
    good = {
        "png255": (".png", ".png", mask * 255),
        "png01": (".png", ".png", mask),
        "jpg": (".jpg", ".jpg", mask * 255),  # a lossy JPEG mask: thresholded
        "upper": (".JPEG", ".png", mask * 255),
    }
    for stem, (image_suffix, mask_suffix, values) in good.items():
        write(tmp_path / "images" / f"{stem}{image_suffix}", image)
        write(tmp_path / "masks" / f"{stem}{mask_suffix}", values)
    write(tmp_path / "images" / "nomask.png", image)
    write(tmp_path / "masks" / "noimage.png", mask)
    write(tmp_path / "images" / "grey.png", image)
    write(tmp_path / "masks" / "grey.png", mask * 100)
    write(tmp_path / "images" / "small.png", image)
    write(tmp_path / "masks" / "small.png", mask[:4] * 255)
    write(tmp_path / "images" / "colour.png", image)
    write(tmp_path / "masks" / "colour.png", np.dstack([mask * 255, mask * 0, mask * 0]))
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    write(tmp_path / "masks" / "broken.png", mask)
    write(tmp_path / "images" / "twice.png", image)
    write(tmp_path / "images" / "twice.jpg", image)
    write(tmp_path / "masks" / "twice.png", mask)
    (tmp_path / "images" / "notes.txt").write_text("labelled by hand")
    (tmp_path / "images" / ".DS_Store").write_bytes(b"")  # hidden: ignored, not reported
    return tmp_path


def test_loader_keeps_good_pairs_and_reports_each_bad_file_with_its_reason(dataset: Path) -> None:
    folder = read_crack_folder(dataset)
    assert folder.names == ["jpg", "png01", "png255", "upper"]
    for name in folder.names:
        sample = folder.read(name)
        assert sample.mask.shape == (8, 12) and set(np.unique(sample.mask)) == {0, 1}
        assert sample.mask[2:4, 1:11].all() and sample.mask.sum() == 20
    reasons = {skip.file: skip.reason for skip in folder.skipped}
    assert reasons == {
        "images/nomask.png": "no mask with this stem in masks/",
        "masks/noimage.png": "no image with this stem in images/",
        "images/grey.png": "mask grey.png is not binary: values [100] besides 0/1 or 0/255",
        "images/small.png": "mask small.png is 12x4 but the image is 12x8",
        "images/colour.png": "mask colour.png has colour: expected one channel of 0/255 or 0/1",
        "images/broken.png": "broken.png does not decode as an image",
        "images/twice.jpg": "twice.jpg, twice.png in images/ share the stem 'twice'",
        "images/twice.png": "twice.jpg, twice.png in images/ share the stem 'twice'",
        "masks/twice.png": "no image with this stem in images/",
        "images/notes.txt": "not an image file (.png, .jpg, .jpeg)",
    }
    assert folder.report()["pairs"] == 4 and len(folder.report()["skipped"]) == len(reasons)


def test_loader_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="images is not a directory"):
        read_crack_folder(tmp_path)
    write(tmp_path / "images" / "a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match=r"no usable image/mask pair \(images/a.png: no mask"):
        read_crack_folder(tmp_path)
