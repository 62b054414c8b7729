"""The engagement generator: the documented rule, its label noise, photos with the chosen properties."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from datagen.engagement import (
    ENGAGEMENT_CLASSES,
    FLIP_RATE,
    WEIGHTS,
    PhotoProperties,
    render_engagement,
    render_photo,
    rule_scores,
    sample_label,
)
from training.classification.metrics import roc_auc

BEST = PhotoProperties(
    size=0.38, offset=0.0, exposure=1.0, clutter=0, busy_backdrop=False, saturation=1.0, category=0
)
WORST = PhotoProperties(
    size=0.12, offset=0.3, exposure=0.35, clutter=10, busy_backdrop=True, saturation=0.0, category=0
)


def test_the_rule_scores_each_property_from_0_to_1_with_documented_weights() -> None:
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)
    assert BEST.score() == pytest.approx(1.0) and BEST.probability_high() > 0.999
    assert WORST.score() == pytest.approx(0.0) and WORST.probability_high() < 0.001
    assert all(0 <= value <= 1 for value in WORST.scores().values())


@pytest.mark.parametrize(
    "change",
    [
        {"clutter": 6},
        {"offset": 0.2},
        {"exposure": 2.2},
        {"exposure": 0.45},
        {"size": 0.15},
        {"saturation": 0.2},
    ],
)
def test_each_property_moves_the_score_the_documented_way(change: dict) -> None:
    assert dataclasses.replace(BEST, **change).score() < BEST.score()


def test_labels_are_balanced_noisy_and_still_learnable() -> None:
    scores, labels = rule_scores(count=6000, seed=1)
    assert 0.45 < labels.mean() < 0.55  # the threshold sits at the median score
    # Noise: some confident photos carry the other label (the flips), so no model reaches AUC 1...
    confident_high = scores > 0.7
    assert 0 < (labels[confident_high] == 0).mean() < 2 * FLIP_RATE
    # ...but the rule's own score ranks them well: the ceiling a model can reach.
    assert 0.92 < roc_auc(scores, labels) < 0.97


def test_a_sample_is_a_pure_function_of_its_seed() -> None:
    first, again = render_engagement(11, 64, 64), render_engagement(11, 64, 64)
    assert np.array_equal(first.image, again.image) and first.label == again.label
    assert first.class_name in ENGAGEMENT_CLASSES and first.image.shape == (64, 64, 3)
    assert first.to_dict()["score"] == pytest.approx(first.score, abs=1e-4)


def test_photos_have_the_properties_chosen_for_them() -> None:
    def photo(**change) -> np.ndarray:
        return render_photo(dataclasses.replace(BEST, **change), np.random.default_rng(5), 96, 96).astype(
            float
        )

    assert photo(exposure=0.35).mean() < 0.6 * photo().mean()  # under-exposed is darker
    grey = photo(saturation=0.0)
    assert np.abs(grey - grey.mean(axis=2, keepdims=True)).mean() < 8  # no colour: near grey


def test_labels_can_be_drawn_without_rendering() -> None:
    properties, label = sample_label(21)
    sample = render_engagement(21, 32, 32)
    assert (properties, label) == (sample.properties, sample.label)
