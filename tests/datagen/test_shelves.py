"""The shelf generator: deterministic, every class present, masks exact, videos and datasets readable."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from clients.contract import ModelContract
from clients.labels import Label, LabelMap
from clients.masks import read_mask_archive
from clients.video import frames
from datagen.shelves import (
    SHELF_MODEL,
    Scene,
    render_pan_frames,
    render_scene,
    render_shelf,
    scene_seed,
    write_dataset,
    write_pan_video,
)

LABELS = ModelContract.load(SHELF_MODEL).labels
BACKGROUND, PRODUCT, SHELF_EDGE, PRICE_TAG = (
    LABELS.index(name) for name in ("background", "product", "shelf_edge", "price_tag")
)
SEEDS = range(6)


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [render_scene(seed) for seed in SEEDS]


def test_same_seed_same_scene_and_different_seeds_differ(scenes: list[Scene]) -> None:
    again = render_scene(SEEDS[0])
    assert np.array_equal(again.image, scenes[0].image)
    assert np.array_equal(again.mask, scenes[0].mask)
    assert not np.array_equal(scenes[0].image, scenes[1].image)
    assert not np.array_equal(scenes[0].mask, scenes[1].mask)


def test_scenes_have_the_model_shape_and_types(scenes: list[Scene]) -> None:
    for scene in scenes:
        assert scene.image.shape == (384, 640, 3) and scene.image.dtype == np.uint8
        assert scene.mask.shape == (384, 640) and scene.mask.dtype == np.uint8


def test_every_class_appears_in_plausible_proportions(scenes: list[Scene]) -> None:
    fractions = np.array([np.bincount(s.mask.ravel(), minlength=len(LABELS)) / s.mask.size for s in scenes])
    assert (fractions > 0).all(), f"a class is missing from some scene: {fractions}"
    assert ((fractions[:, PRODUCT] > 0.2) & (fractions[:, PRODUCT] < 0.75)).all(), fractions[:, PRODUCT]
    assert ((fractions[:, SHELF_EDGE] > 0.03) & (fractions[:, SHELF_EDGE] < 0.25)).all(), fractions[
        :, SHELF_EDGE
    ]
    assert ((fractions[:, PRICE_TAG] > 0.002) & (fractions[:, PRICE_TAG] < 0.08)).all(), fractions[
        :, PRICE_TAG
    ]
    assert 0.005 < fractions[:, PRICE_TAG].mean() < 0.05


def test_price_tags_sit_on_shelf_edges(scenes: list[Scene]) -> None:
    for scene in scenes:
        edges = (scene.mask == SHELF_EDGE).astype(np.uint8)
        near_edge = cv2.dilate(edges, np.ones((2 * 24 + 1, 1), np.uint8)).astype(
            bool
        )  # same column, ±24 rows
        tags = scene.mask == PRICE_TAG
        assert near_edge[tags].all(), "a price tag floats away from every shelf edge"
        hung = tags[1:] & (scene.mask[:-1] == SHELF_EDGE)  # edge pixel right above a tag pixel
        assert hung.sum() >= 0.5 * tags.any(axis=0).sum(), "price tags should hang from edge strips"


def test_products_stand_on_shelf_edges(scenes: list[Scene]) -> None:
    """Below each product pixel, past the rest of the product, is the shelf (or the frame's bottom)."""
    for scene in scenes:
        mask = scene.mask
        support = np.full(mask.shape[1], SHELF_EDGE, np.uint8)  # the frame's bottom counts as support
        supported = products = 0
        for row in mask[::-1]:
            is_product = row == PRODUCT
            supported += np.isin(support[is_product], [SHELF_EDGE, PRICE_TAG]).sum()
            products += is_product.sum()
            support = np.where(is_product, support, row)
        assert supported / products > 0.95, "products should stand on shelves"
        edge_over_product = (mask[:-1] == SHELF_EDGE) & (mask[1:] == PRODUCT)
        assert not edge_over_product.any(), "products must leave headroom under the shelf above"


def test_class_ids_come_from_the_label_map() -> None:
    reordered = LabelMap(
        tuple(Label(i, label.name, label.color) for i, label in enumerate(LABELS.labels[::-1]))
    )
    default, flipped = render_scene(7), render_scene(7, labels=reordered)
    assert np.array_equal(flipped.mask, len(LABELS) - 1 - default.mask)
    assert np.array_equal(flipped.image, default.image)


def test_render_shelf_is_long_and_deterministic() -> None:
    shelf = render_shelf(3, 384, 2000)
    assert shelf.image.shape == (384, 2000, 3) and shelf.mask.shape == (384, 2000)
    assert np.array_equal(shelf.mask, render_shelf(3, 384, 2000).mask)
    assert set(np.unique(shelf.mask)) == {BACKGROUND, PRODUCT, SHELF_EDGE, PRICE_TAG}


def test_pan_frames_move_along_the_shelf() -> None:
    pan = list(render_pan_frames(11, 6, pixels_per_frame=6.0))
    assert len(pan) == 6
    assert all(s.image.shape == (384, 640, 3) and s.mask.shape == (384, 640) for s in pan)
    for before, after in zip(pan, pan[1:], strict=False):
        dx, dy = _best_shift(before.mask, after.mask)
        assert dx == 6 and abs(dy) <= 1
        overlap_before, overlap_after = _overlap(before.image, after.image, dx, dy)
        brightness_step = overlap_after.mean() - overlap_before.mean()
        assert abs(brightness_step) < 2.0, "lighting should drift smoothly, not jump between frames"
        assert not np.array_equal(overlap_before, overlap_after), "sensor noise is fresh every frame"


def test_pan_frames_with_fractional_speed() -> None:
    pan = list(render_pan_frames(12, 5, height=192, width=320, pixels_per_frame=2.5))
    shifts = [_best_shift(a.mask, b.mask)[0] for a, b in zip(pan, pan[1:], strict=False)]
    assert set(shifts) <= {2, 3} and sum(shifts) == 10


def test_write_pan_video_round_trips(tmp_path) -> None:
    video, masks = tmp_path / "pan.mp4", tmp_path / "pan_masks.zip"
    write_pan_video(video, masks, seed=5, num_frames=8, height=192, width=320)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pan.mp4", "pan_masks.zip"]  # no partial files
    rendered = list(render_pan_frames(5, 8, height=192, width=320))
    decoded, archived = list(frames(video)), list(read_mask_archive(masks))
    assert len(decoded) == len(archived) == 8
    for t, (frame, mask) in enumerate(zip(decoded, archived, strict=True)):
        assert frame.shape == (192, 320, 3)
        assert np.array_equal(mask, rendered[t].mask)
        # H.264 drops sensor noise and fine print, so compare the pictures at a coarser scale.
        error = _blurry_difference(frame, rendered[t].image)
        assert error < 6, f"frame {t} decodes {error:.1f} grey levels away from what was rendered"
        if t:
            assert error < _blurry_difference(frame, rendered[t - 1].image) / 3, "frames out of order"


def test_write_dataset_saves_rgb_images_and_masks(tmp_path) -> None:
    write_dataset(tmp_path, count=2, seed=9, height=96, width=160)
    for index in range(2):
        expected = render_scene(scene_seed(9, index), 96, 160)
        image = cv2.cvtColor(cv2.imread(str(tmp_path / "images" / f"{index:06d}.png")), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(tmp_path / "masks" / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(image, expected.image)
        assert np.array_equal(mask, expected.mask)


def test_scene_seed_is_deterministic_and_separates_sets() -> None:
    assert scene_seed(1, 0) == scene_seed(1, 0)
    train = {scene_seed(1, i) for i in range(1000)}
    val = {scene_seed(2, i) for i in range(1000)}
    assert len(train) == 1000 and not train & val


def test_scene_rejects_mismatched_or_invalid_masks() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(ValueError, match="mask"):
        Scene(image, np.zeros((4, 7), np.uint8))
    with pytest.raises(ValueError, match="mask"):
        Scene(image, np.zeros((4, 6), np.int32))
    with pytest.raises(ValueError, match="class id"):
        Scene(image, np.full((4, 6), len(LABELS), np.uint8))
    with pytest.raises(ValueError, match="image"):
        Scene(np.zeros((4, 6), np.uint8), np.zeros((4, 6), np.uint8))


def _blurry_difference(a: np.ndarray, b: np.ndarray) -> float:
    blur = [cv2.GaussianBlur(image, (0, 0), 1.5).astype(np.int16) for image in (a, b)]
    return float(np.abs(blur[0] - blur[1]).mean())


def _best_shift(before: np.ndarray, after: np.ndarray, max_dx: int = 12, max_dy: int = 3) -> tuple[int, int]:
    """The (dx, dy) camera move between two masks: the shift where their overlap agrees exactly."""
    for dx in range(max_dx + 1):
        for dy in range(-max_dy, max_dy + 1):
            a, b = _overlap(before, after, dx, dy)
            if np.array_equal(a, b):
                return dx, dy
    raise AssertionError("consecutive frames do not overlap")


def _overlap(before: np.ndarray, after: np.ndarray, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    """The common region when the camera moved ``dx`` right and ``dy`` down between the frames."""
    height, width = before.shape[:2]
    a = before[max(dy, 0) : height + min(dy, 0), dx:]
    b = after[max(-dy, 0) : height + min(-dy, 0), : width - dx]
    return a.astype(np.float32), b.astype(np.float32)
