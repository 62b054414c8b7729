"""The face-mask generator: deterministic, exact boxes, all three wear states, disjoint identities."""

from __future__ import annotations

import numpy as np
import pytest

from datagen.faces import CLASSES, IDENTITY_POOLS, identity, render_faces, scene_seed, write_yolo_dataset


@pytest.fixture(scope="module")
def scenes():
    return [render_faces(scene_seed("train", i)) for i in range(24)]


def test_same_seed_same_scene_and_different_seeds_differ(scenes) -> None:
    again = render_faces(scene_seed("train", 0))
    assert np.array_equal(again.image, scenes[0].image)
    assert np.array_equal(again.boxes, scenes[0].boxes)
    assert not np.array_equal(scenes[0].image, scenes[1].image)


def test_boxes_are_inside_the_image_and_classes_are_the_three_states(scenes) -> None:
    for scene in scenes:
        height, width = scene.image.shape[:2]
        assert scene.image.dtype == np.uint8 and scene.image.shape == (320, 416, 3)
        assert len(scene.boxes) == len(scene.class_ids)
        if len(scene.boxes):
            assert (scene.boxes[:, 2] > scene.boxes[:, 0]).all() and (
                scene.boxes[:, 3] > scene.boxes[:, 1]
            ).all()
            assert scene.boxes[:, [0, 2]].min() >= 0 and scene.boxes[:, [0, 2]].max() <= width
            assert scene.boxes[:, [1, 3]].min() >= 0 and scene.boxes[:, [1, 3]].max() <= height
    seen = np.concatenate([s.class_ids for s in scenes])
    assert set(seen.tolist()) == set(range(len(CLASSES)))


def test_faces_span_small_and_large_sizes(scenes) -> None:
    heights = np.concatenate([s.boxes[:, 3] - s.boxes[:, 1] for s in scenes])
    assert heights.min() < 24 and heights.max() > 80


def test_a_labelled_face_is_painted_where_its_box_is() -> None:
    # Same seed, same layout: the face region is not the bare backdrop (bodies never cover faces).
    scene = render_faces(scene_seed("test", 3), split="test")
    for x1, y1, x2, y2 in scene.boxes.astype(int):
        patch = scene.image[max(y1, 0) : y2, max(x1, 0) : x2].reshape(-1, 3).astype(float)
        assert patch.std(0).max() > 5  # eyes, nose, mask or mouth: not a flat area


def test_identity_pools_are_disjoint_and_identities_are_stable() -> None:
    pools = list(IDENTITY_POOLS.values())
    for i, a in enumerate(pools):
        for b in pools[i + 1 :]:
            assert not set(a) & set(b)
    assert identity(5) == identity(5) and identity(5) != identity(6)


def test_splits_never_share_a_scene_seed() -> None:
    seeds = {split: {scene_seed(split, i) for i in range(1000)} for split in ("train", "val", "test")}
    assert not seeds["train"] & seeds["test"] and not seeds["train"] & seeds["val"]


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        render_faces(0, split="holdout")
    with pytest.raises(ValueError, match="at least 32x32"):
        render_faces(0, 16, 16)


def test_write_yolo_dataset_writes_the_public_layout(tmp_path) -> None:
    root = write_yolo_dataset(tmp_path / "faces", 3, split="val", height=128, width=160)
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"val_0000{i}.jpg" for i in range(3)]
    assert "names:" in (root / "data.yaml").read_text()
    for label in (root / "labels").glob("*.txt"):
        for row in label.read_text().splitlines():
            values = row.split()
            assert len(values) == 5 and int(values[0]) in range(3)
            assert all(0 <= float(v) <= 1 for v in values[1:])
