"""The trainer (one loop for every task) driven by the segmentation adapter: crops and augmentation,
schedule, models by name, determinism, resume, budgets."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the training extra; serving-only installs skip this module

import torch  # noqa: E402

from clients.contract import ModelContract  # noqa: E402
from tests.training.helpers import MODEL, make_repository  # noqa: E402
from training.config import CONFIG_DIR, AugmentSpec, ModelSpec, PipelineConfig, load_config  # noqa: E402
from training.export import ServingModel, torch_predictor  # noqa: E402
from training.tasks import DataSplits, adapter_for  # noqa: E402
from training.tasks.segmentation import InMemoryDataset, sample_batch  # noqa: E402
from training.train import (  # noqa: E402
    CheckpointError,
    WarmupCosine,
    load_encoder_weights,
    load_trained_model,
    read_weights,
    save_weights,
    train,
)

SEGMENTATION = adapter_for("segmentation")
Splits = DataSplits


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory) -> ModelContract:
    return ModelContract.load(MODEL, make_repository(tmp_path_factory.mktemp("repo")))  # 96x160 input


@pytest.fixture(scope="module")
def tiny() -> PipelineConfig:
    return load_config(CONFIG_DIR / "tiny.yaml")


@pytest.fixture(scope="module")
def splits(tiny: PipelineConfig, contract: ModelContract, tmp_path_factory: pytest.TempPathFactory) -> Splits:
    return SEGMENTATION.build_splits(tiny, contract, tmp_path_factory.mktemp("work"))


def build_model(spec: ModelSpec, contract: ModelContract) -> torch.nn.Module:
    return SEGMENTATION.build_model(spec, contract)


def with_train(config: PipelineConfig, **changes) -> PipelineConfig:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def data(count: int = 3, height: int = 32, width: int = 48) -> InMemoryDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    masks = (np.arange(width) % 4).astype(np.uint8)[None, None].repeat(count, 0).repeat(height, 1)
    return InMemoryDataset(images, masks, [f"{i}" for i in range(count)], 4)


def test_crops_and_flips_keep_image_and_mask_aligned() -> None:
    dataset = data()
    augment = AugmentSpec(crop=(16, 24), hflip=1.0)
    images, masks = sample_batch(dataset, augment, 5, np.random.default_rng(1))
    assert images.shape == (5, 16, 24, 3) and masks.shape == (5, 16, 24)
    assert all((np.diff(m.astype(int), axis=1) % 4 == 3).all() for m in masks)  # every crop mirrored


def test_vertical_flips_and_transposes_move_masks_with_pixels() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    masks = (images[..., 0] > 127).astype(np.uint8)  # the mask is a function of the pixels
    dataset = InMemoryDataset(images, masks, ["a", "b"], 2)
    augment = AugmentSpec(crop=(16, 16), hflip=0.5, vflip=1.0, transpose=1.0)
    batch, targets = sample_batch(dataset, augment, 6, np.random.default_rng(3))
    assert np.array_equal((batch[..., 0] > 127).astype(np.uint8), targets)
    assert not any(np.array_equal(batch[0], images[i, :16, :16]) for i in range(2))  # moved, not copied


def test_jitter_touches_images_only_and_draws_only_when_enabled() -> None:
    dataset = data()
    plain = AugmentSpec(crop=(16, 24))
    jitter = AugmentSpec(
        crop=(16, 24), brightness=0.3, contrast=0.3, jpeg_probability=1.0, jpeg_quality=(10, 10)
    )
    rng_a, rng_b = np.random.default_rng(2), np.random.default_rng(2)
    images_a, masks_a = sample_batch(dataset, plain, 4, rng_a)
    images_b, masks_b = sample_batch(dataset, jitter, 4, rng_b)
    assert np.array_equal(masks_a, masks_b) and not np.array_equal(images_a, images_b)
    # The plain config consumed exactly the four crop draws: the spine's random-number stream.
    reference = np.random.default_rng(2)
    for high in (3, 32 - 16 + 1, 48 - 24 + 1):
        reference.integers(0, high, 4)
    reference.random(4)
    assert rng_a.bit_generator.state == reference.bit_generator.state


def test_warmup_then_cosine_to_zero() -> None:
    schedule = WarmupCosine(warmup=4, total=20)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(4) == 1.0 and math.isclose(schedule(12), 0.5) and schedule(20) == 0.0
    assert schedule(25) == 0.0  # past the end (a time budget's last step): stays at zero


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("Unet", {"decoder_channels": [16, 16, 16, 16, 16], "decoder_attention_type": "scse"}),
        ("FPN", {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}),
        ("DeepLabV3Plus", {"decoder_channels": 32}),
    ],
)
def test_architectures_by_name(arch: str, options: dict, contract: ModelContract) -> None:
    spec = ModelSpec(arch=arch, encoder="tu-mobilenetv3_small_100", options=options)
    model = build_model(spec, contract).eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 4, 64, 96)


def test_bad_option_values_are_config_errors(
    tiny: PipelineConfig, contract: ModelContract, splits: Splits
) -> None:
    from training.config import ConfigError

    model = dataclasses.replace(tiny.model, options={"decoder_attention_type": "sse"})
    with pytest.raises(ConfigError, match="tiny.yaml: model.options: cannot build Unet"):
        train(dataclasses.replace(tiny, model=model), contract, splits.train)


def test_local_encoder_weights(tmp_path: Path, contract: ModelContract) -> None:
    spec = ModelSpec(encoder="tu-mobilenetv3_small_100", options={"decoder_channels": [16] * 5})
    torch.manual_seed(1)
    donor = build_model(spec, contract)
    # A plain timm checkpoint: the encoder's keys without smp's "model." prefix.
    plain = {k.removeprefix("model."): v for k, v in donor.encoder.state_dict().items()}
    torch.save(plain, tmp_path / "encoder.pth")
    torch.manual_seed(2)
    model = build_model(dataclasses.replace(spec, encoder_weights=tmp_path / "encoder.pth"), contract)
    assert weights_equal(model.encoder, donor.encoder) and not weights_equal(model, donor)

    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="none of its 1 tensors belongs to this encoder"):
        load_encoder_weights(model, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable state dict"):
        load_encoder_weights(model, tmp_path / "junk.pth")


def test_training_is_deterministic_and_resumes_exactly(
    tiny: PipelineConfig, contract: ModelContract, splits: Splits, tmp_path: Path
) -> None:
    straight = train(tiny, contract, splits.train)
    again = train(tiny, contract, splits.train)
    assert weights_equal(straight.model, again.model)

    # Stop after 2 of 4 steps (as if killed after the step-2 checkpoint), then resume.
    checkpoint = tmp_path / "last.pt"
    half = train(with_train(tiny, steps=2), contract, splits.train, checkpoint=checkpoint)
    assert half.summary.steps == 2 and checkpoint.is_file()
    state = torch.load(checkpoint, weights_only=True)
    state["identity"]["train"]["steps"] = 4  # the checkpoint of a 4-step run after its 2nd step
    state["schedule"]["lr_lambdas"][0]["total"] = 4
    torch.save(state, checkpoint)
    resumed = train(tiny, contract, splits.train, checkpoint=checkpoint, resume=checkpoint)
    assert resumed.summary.resumed_from_step == 2 and resumed.summary.steps == 4
    assert weights_equal(resumed.model, straight.model)
    assert resumed.summary.final_loss == straight.summary.final_loss

    restored = load_trained_model(checkpoint, contract)
    assert weights_equal(restored, straight.model)
    crack = ModelContract.load("crack_segmenter")
    with pytest.raises(CheckpointError, match="a segmentation model of 4 classes, but crack_segmenter"):
        load_trained_model(checkpoint, crack)


def test_resume_refuses_another_configuration(
    tiny: PipelineConfig, contract: ModelContract, splits: Splits, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "last.pt"
    train(with_train(tiny, steps=1), contract, splits.train, checkpoint=checkpoint)
    other = dataclasses.replace(
        with_train(tiny, steps=1), augment=dataclasses.replace(tiny.augment, crop=(32, 64))
    )
    with pytest.raises(
        CheckpointError, match=r"written by a different run configuration \(augment.crop: \[64, 96\] ->"
    ):
        train(other, contract, splits.train, resume=checkpoint)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint"):
        train(tiny, contract, splits.train, resume=tmp_path / "junk.pt")


class RecordingTracker:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))


def test_validation_metrics_per_epoch(tiny: PipelineConfig, contract: ModelContract, splits: Splits) -> None:
    tracker = RecordingTracker()
    result = train(
        with_train(tiny, steps=None, epochs=2), contract, splits.train, splits.val, tracker=tracker
    )
    # 4 training images at batch 2: 2 steps per epoch, metrics after each epoch.
    assert [step for step, _ in tracker.logged] == [2, 4] and result.summary.epochs == 2
    first = tracker.logged[0][1]
    assert {"train/loss", "train/lr", "train/images_per_s", "train/epoch", "val/miou"} <= first.keys()
    assert any(key.startswith("val/iou/") for key in first)
    assert any(key.startswith("val/dice/") for key in first)
    assert result.summary.val_metric == "miou"
    assert result.summary.val_score == tracker.logged[-1][1]["val/miou"]


def test_a_time_budget_sizes_the_schedule(
    tiny: PipelineConfig, contract: ModelContract, splits: Splits
) -> None:
    config = with_train(tiny, steps=None, time_budget_s=1.5)
    result = train(config, contract, splits.train)
    summary = result.summary
    assert summary.steps >= 1  # (10 when the machine is idle: then the budget sizes the cosine)
    assert summary.stopped_by in ("steps", "time_budget")
    per_step = summary.train_s / summary.steps
    assert summary.train_s <= 1.5 + 2 * per_step


def test_a_time_budget_re_sizes_the_schedule_when_steps_slow_down(
    tiny: PipelineConfig, contract: ModelContract, splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps 10x slower after the first calibration (shared cores): the cosine still ends near zero."""
    import training.train as trainer

    clock = {"now": 0.0, "calls": 0}

    def perf_counter() -> float:  # each step is timed by two calls: 0.01 s, then 0.1 s from step 12
        clock["calls"] += 1
        if clock["calls"] % 2 == 0:
            clock["now"] += 0.01 if clock["calls"] <= 2 * 12 else 0.1
        return clock["now"]

    monkeypatch.setattr(trainer, "time", type("Clock", (), {"perf_counter": staticmethod(perf_counter)}))

    def no_gradient_step(self: trainer._Trainer) -> float:  # the schedule advances, nothing else
        self.optimizer.step()
        self.schedule.step()
        return 1.0

    monkeypatch.setattr(trainer._Trainer, "_train_step", no_gradient_step)
    config = with_train(tiny, steps=None, time_budget_s=2.0, eval_every=5)
    config = dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, warmup_steps=2))
    tracker = RecordingTracker()
    summary = train(config, contract, splits.train, tracker=tracker).summary
    # Sized at step 10 for 0.01 s steps (about 200 steps), re-sized at every validation as they slowed.
    assert 20 <= summary.steps <= 30
    assert tracker.logged[-1][1]["train/lr"] < 0.15 * config.optimizer.lr


def test_keep_best_ends_with_the_best_validations_weights(
    tiny: PipelineConfig, contract: ModelContract, splits: Splits, tmp_path: Path
) -> None:
    tracker, checkpoint = RecordingTracker(), tmp_path / "last.pt"
    config = with_train(tiny, steps=6, eval_every=1, keep_best="miou")
    result = train(config, contract, splits.train, splits.val, tracker=tracker, checkpoint=checkpoint)
    scores = [metrics["val/miou"] for _, metrics in tracker.logged]
    kept = result.summary.kept_best
    assert kept["metric"] == "miou" and kept["score"] == max(scores)
    assert kept["step"] == 1 + scores.index(max(scores))
    # The model it returns and the weights the pipeline publishes score that best validation.
    validate = lambda model: SEGMENTATION.evaluate(  # noqa: E731
        torch_predictor(ServingModel(model, SEGMENTATION.serving_head(contract)), contract.output_names),
        splits.val, contract, "pytorch", worst_k=0, batch_size=4,
    ).metrics()["miou"]  # fmt: skip
    assert validate(result.model) == pytest.approx(kept["score"])
    save_weights(checkpoint, tmp_path / "weights.pt")
    published = build_model(tiny.model, contract)
    published.load_state_dict(read_weights(tmp_path / "weights.pt")["model"])
    assert weights_equal(published, result.model)

    with pytest.raises(ValueError, match="no metric 'auc'"):
        train(with_train(tiny, steps=1, keep_best="auc"), contract, splits.train, splits.val)
