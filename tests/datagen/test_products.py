"""The product-photo generator: deterministic, every class drawn, classes told apart by shape."""

from __future__ import annotations

import numpy as np
import pytest

from datagen.products import (
    PRODUCT_CLASSES,
    Placement,
    background,
    draw_product,
    iter_products,
    render_product,
    render_products,
    write_image_folder,
)


def test_an_image_is_a_pure_function_of_its_seed() -> None:
    first, again, other = render_product(7), render_product(7), render_product(8)
    assert np.array_equal(first.image, again.image) and first.label == again.label
    assert not np.array_equal(first.image, other.image)


@pytest.mark.parametrize("category", PRODUCT_CLASSES)
def test_every_category_renders_at_the_requested_size(category: str) -> None:
    sample = render_product(3, category, height=96, width=160)
    assert sample.image.shape == (96, 160, 3) and sample.image.dtype == np.uint8
    assert sample.class_name == category
    assert sample.image.std() > 5  # something was drawn, not a flat canvas


def test_unknown_categories_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'sandals'.*casual_shoes"):
        render_product(0, "sandals")
    with pytest.raises(ValueError, match="index 5"):
        render_product(0, 5)


def test_datasets_are_balanced_and_stacked() -> None:
    images, labels = render_products(10, seed=0, height=64, width=64)
    assert images.shape == (10, 64, 64, 3) and labels.tolist() == [0, 1, 2, 3, 4] * 2
    assert [s.label for s in iter_products(5, seed=1, height=32, width=32)] == [0, 1, 2, 3, 4]


def _silhouette(category: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    canvas = background(rng, 200, 200, clutter=0)
    return draw_product(rng, canvas, category, Placement(100, 100, 80), saturation=0.5) > 127


def _extent(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.max() - xs.min()), int(ys.max() - ys.min())


@pytest.mark.parametrize("seed", range(4))
def test_classes_differ_by_shape_the_way_real_items_do(seed: int) -> None:
    """Upright and unrotated: shoes are wide and flat, watches tall and narrow (a strap through a
    case), and garments taller than shoes; colour and pattern are drawn alike for every class."""
    shoe_w, shoe_h = _extent(_silhouette(PRODUCT_CLASSES.index("casual_shoes"), seed))
    watch_w, watch_h = _extent(_silhouette(PRODUCT_CLASSES.index("watches"), seed))
    shirt_w, shirt_h = _extent(_silhouette(PRODUCT_CLASSES.index("shirts"), seed))
    assert shoe_w > 1.4 * shoe_h
    assert watch_h > 1.4 * watch_w
    assert shirt_h > 1.5 * shoe_h


def test_image_folders_are_written_in_the_imagefolder_layout(tmp_path) -> None:
    paths = write_image_folder(tmp_path, count=5, seed=0, size=48)
    assert sorted(p.parent.name for p in paths) == sorted(PRODUCT_CLASSES)
    assert all(p.suffix == ".jpg" and p.stat().st_size > 0 for p in paths)
