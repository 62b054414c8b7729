"""Datasets: procedural splits are deterministic and disjoint, folders round-trip and reject bad files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from clients.contract import default_repository
from clients.labels import LabelMap
from clients.masks import encode_mask_png
from datagen.shelves import render_scene, scene_seed
from training.datasets import (
    DatasetError,
    DataSpec,
    FolderDataset,
    ProceduralDataset,
    Sample,
    build_splits,
    write_folder_dataset,
)

H, W = 64, 96


def write_pairs(root: Path, names: list[str], shape: tuple[int, int] = (8, 12), class_id: int = 1) -> None:
    """A folder dataset of flat images and masks, fast to write and read."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for name in names:
        cv2.imwrite(str(root / "images" / f"{name}.png"), np.full((*shape, 3), 100, np.uint8))
        (root / "masks" / f"{name}.png").write_bytes(encode_mask_png(np.full(shape, class_id, np.uint8)))


def test_procedural_samples_are_deterministic_and_match_the_generator(labels: LabelMap) -> None:
    dataset = ProceduralDataset("train", 2, seed=3, height=H, width=W, labels=labels)
    first, again = dataset[1], ProceduralDataset("train", 2, seed=3, height=H, width=W, labels=labels)[1]
    assert len(dataset) == 2 and dataset.num_classes == len(labels)
    assert first.name == "000001" and first.image.shape == (H, W, 3)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.mask, again.mask)
    assert not np.array_equal(first.image, dataset[0].image)
    # Train scenes are the ones the spine's default model trained on (scene_seed(seed, i)).
    scene = render_scene(scene_seed(3, 1), H, W, labels)
    assert np.array_equal(first.image, scene.image) and np.array_equal(first.mask, scene.mask)
    with pytest.raises(IndexError):
        dataset[2]


def test_procedural_splits_share_no_scene(labels: LabelMap) -> None:
    splits = build_splits(DataSpec(generator="shelves", train=500, val=200, test=200, seed=5), H, W, labels)
    seeds = {name: set(getattr(splits, name).scene_seeds()) for name in ("train", "val", "test")}
    assert [len(s) for s in seeds.values()] == [500, 200, 200]
    assert not seeds["train"] & seeds["val"] and not seeds["train"] & seeds["test"]
    assert not seeds["val"] & seeds["test"]
    assert not np.array_equal(splits.val[0].image, splits.test[0].image)
    other = build_splits(DataSpec(generator="shelves", train=500, val=200, test=200, seed=6), H, W, labels)
    assert not seeds["test"] & set(other.test.scene_seeds()), "another seed gives another test set"


def test_folder_round_trip_is_exact_and_atomic(tmp_path: Path, labels: LabelMap) -> None:
    source = ProceduralDataset("val", 3, seed=0, height=H, width=W, labels=labels)
    write_folder_dataset(source, tmp_path / "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "no staging directory left behind"
    folder = FolderDataset(tmp_path / "data", labels)
    assert len(folder) == 3 and folder.names == ["000000", "000001", "000002"]
    for index in range(3):
        written, original = folder[index], source[index]
        assert written.name == original.name
        assert np.array_equal(written.image, original.image) and np.array_equal(written.mask, original.mask)
    with pytest.raises(DatasetError, match="not empty"):
        write_folder_dataset(source, tmp_path / "data")


def test_a_failed_write_leaves_nothing(tmp_path: Path, labels: LabelMap) -> None:
    class Broken:
        num_classes = len(labels)

        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int) -> Sample:
            if index == 1:
                raise RuntimeError("disk on fire")
            return Sample(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8), "a")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_folder_dataset(Broken(), tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def test_unknown_class_ids_name_the_mask(tmp_path: Path, labels: LabelMap) -> None:
    write_pairs(tmp_path, ["good"])
    write_pairs(tmp_path, ["bad"], class_id=len(labels) + 3)
    dataset = FolderDataset(tmp_path, labels)
    assert dataset[dataset.names.index("good")].mask.max() == 1
    with pytest.raises(DatasetError, match=rf"masks/bad\.png: class ids \[{len(labels) + 3}\]"):
        dataset[dataset.names.index("bad")]


def test_mask_of_another_size_names_the_mask(tmp_path: Path, labels: LabelMap) -> None:
    write_pairs(tmp_path, ["a"])
    (tmp_path / "masks" / "a.png").write_bytes(encode_mask_png(np.zeros((5, 5), np.uint8)))
    with pytest.raises(DatasetError, match=r"masks/a\.png: mask is 5x5 but a\.png is 12x8"):
        FolderDataset(tmp_path, labels)[0]


def test_unpaired_files_are_named(tmp_path: Path, labels: LabelMap) -> None:
    write_pairs(tmp_path, ["a", "b"])
    (tmp_path / "masks" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"no mask for 1 image\(s\): b\.png"):
        FolderDataset(tmp_path, labels)
    (tmp_path / "images" / "b.png").unlink()
    (tmp_path / "masks" / "c.png").write_bytes(encode_mask_png(np.zeros((8, 12), np.uint8)))
    with pytest.raises(DatasetError, match=r"no image for 1 mask\(s\): c\.png"):
        FolderDataset(tmp_path, labels)
    with pytest.raises(DatasetError, match="images is not a directory"):
        FolderDataset(tmp_path / "nowhere", labels)


def test_folder_splits_are_deterministic_disjoint_and_complete(tmp_path: Path, labels: LabelMap) -> None:
    names = [f"img{i:02d}" for i in range(10)]
    write_pairs(tmp_path, names)
    spec = DataSpec.from_dict(
        {"kind": "folder", "root": str(tmp_path), "val_fraction": 0.2, "test_fraction": 0.2}
    )
    assert spec.root == tmp_path
    splits = build_splits(spec, H, W, labels)
    parts = [splits.train.names, splits.val.names, splits.test.names]
    assert [len(p) for p in parts] == [6, 2, 2]
    assert sorted(sum(parts, [])) == names
    assert build_splits(spec, H, W, labels).val.names == splits.val.names
    reseeded = DataSpec.from_dict({"kind": "folder", "root": str(tmp_path), "seed": 1, "val_fraction": 0.2})
    assert build_splits(reseeded, H, W, labels).val.names != splits.val.names
    assert splits.train[0].image.shape == (8, 12, 3), "folder images keep their size"


def test_dataspec_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    assert DataSpec.from_dict({"generator": "cracks"}) == DataSpec(generator="cracks")
    with pytest.raises(ValueError, match="must be a mapping, got NoneType"):
        DataSpec.from_dict(None)  # an empty `data:` section in YAML
    with pytest.raises(ValueError, match=r"unknown data key\(s\) \['trian'\]"):
        DataSpec.from_dict({"trian": 10})
    bad = [
        ({}, "data.generator must be one of"),  # procedural data names its generator: no default
        ({"kind": "sqlite"}, "data.kind"),
        ({"kind": "folder"}, "data.root is required"),
        ({"root": str(tmp_path)}, "only used when data.kind is 'folder'"),
        ({"generator": "shelves", "train": 0}, "data.train must be an integer >= 1"),
        ({"generator": "shelves", "val": 2.5}, "data.val must be an integer"),
        ({"kind": "folder", "root": "x", "generator": "cracks"}, "only used when data.kind is 'procedural'"),
        ({"kind": "folder", "root": 5}, "data.root must be a path"),
        (
            {"kind": "folder", "root": "x", "val_fraction": 1.5},
            r"data.val_fraction must be a number in \[0, 1\)",
        ),
        ({"kind": "folder", "root": "x", "val_fraction": 0.5, "test_fraction": 0.5}, "leave images"),
    ]
    for data, message in bad:
        with pytest.raises(ValueError, match=message):
            DataSpec.from_dict(data)


def test_sample_checks_its_arrays() -> None:
    with pytest.raises(ValueError, match="x: image must be RGB uint8"):
        Sample(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), "x")
    with pytest.raises(ValueError, match="x: mask must be uint8"):
        Sample(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8), "x")


def test_dotfiles_are_ignored(tmp_path: Path, labels: LabelMap) -> None:
    """Staging files of an interrupted writer and OS litter are not part of the dataset."""
    write_pairs(tmp_path, ["a"])
    (tmp_path / "masks" / ".b.png.123.partial").write_bytes(b"half a mask")
    (tmp_path / "images" / "._a.jpg").write_bytes(b"macOS resource fork")
    assert FolderDataset(tmp_path, labels).names == ["a"]


def write_binary_pairs(root: Path) -> None:
    """A crack dataset in the public layout: two good pairs (0/255 PNG, 0/1 PNG) and bad ones."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image = np.full((8, 12, 3), 120, np.uint8)
    mask = np.zeros((8, 12), np.uint8)
    mask[3, 2:10] = 1
    for name, values in (("good255", mask * 255), ("good01", mask)):
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), image)
        cv2.imwrite(str(root / "masks" / f"{name}.png"), values)
    cv2.imwrite(str(root / "images" / "grey.png"), image)
    cv2.imwrite(str(root / "masks" / "grey.png"), mask * 128)  # not binary
    cv2.imwrite(str(root / "images" / "lonely.png"), image)  # no mask


def test_binary_folders_skip_bad_pairs_and_report_them(tmp_path: Path) -> None:
    write_binary_pairs(tmp_path)
    labels = LabelMap.from_file(default_repository() / "crack_segmenter" / "labels.txt")
    spec = DataSpec.from_dict(
        {
            "kind": "folder",
            "root": str(tmp_path),
            "mask_format": "binary",
            "val_fraction": 0,
            "test_fraction": 0,
        }
    )
    splits = build_splits(spec, H, W, labels)
    assert splits.train.names == ["good01", "good255"] and len(splits.val) == len(splits.test) == 0
    assert {tuple(skip.values()) for skip in splits.skipped} == {
        ("images/grey.png", "mask grey.png is not binary: values [128] besides 0/1 or 0/255"),
        ("images/lonely.png", "no mask with this stem in masks/"),
    }
    for sample in (splits.train[0], splits.train[1]):
        assert sample.mask.dtype == np.uint8 and set(np.unique(sample.mask)) == {0, 1}
    with pytest.raises(DatasetError, match="mask_format binary needs 2 classes"):
        build_splits(spec, H, W, LabelMap.from_file(default_repository() / "shelf_segmenter" / "labels.txt"))
