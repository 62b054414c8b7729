"""The trainer: one loop for every task; the task's adapter supplies model, batches and loss.

Data is read once into memory at the contract's input size (as clients resize frames), so each step
only cuts a batch (:meth:`training.tasks.TaskAdapter.sample_batch`). A run is a pure function of the
config and the data on one machine: fixed seeds, a fixed thread count, and every random draw from
one ``numpy.random.Generator`` (crops, flips, jitter) or torch's seeded generator (weights, dropout).
:func:`train` writes a checkpoint every ``checkpoint_every`` steps holding model, optimiser,
schedule, both RNG states and the step, and resuming from it gives the same weights as an
uninterrupted run. The optimiser is AdamW with a linear warm-up and cosine decay.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clients.atomic import atomic_path
from clients.contract import ModelContract
from training.config import ModelSpec, PipelineConfig
from training.datasets import DatasetError
from training.export import ServingModel, torch_predictor

if TYPE_CHECKING:
    from training.tasks import TaskAdapter
    from training.tracking import Tracker

CHECKPOINT_FORMAT = 2  # 2: the task is stored, and models are rebuilt by its adapter
CALIBRATION_STEPS = 10  # steps timed before a time budget sizes the schedule
WEIGHTS_FILE = "weights.pt"  # a published version's trained network, kept beside model.onnx
WEIGHTS_FORMAT = 1  # weights.pt: the network's state dict and what built it, no optimiser state

# The initial weights of a run: a file (training checkpoint, weights.pt or a bare state dict) or a
# state dict in memory.
InitialWeights = Path | Mapping[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run; the message names the file."""


# ------------------------------------------------------------------------------------------- model


def load_encoder_weights(model: torch.nn.Module, path: Path) -> int:
    """Load a local state dict into ``model.encoder``; returns the number of tensors loaded.

    Accepts the encoder's own key names, a whole smp model's (``encoder.`` prefix) and a plain timm
    model's (smp's ``tu-`` encoders hold it as ``model.``); heads (``fc``, ``classifier``) are skipped.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
    except Exception as error:  # any unreadable file: corrupt, wrong format, not a state dict
        raise CheckpointError(f"{path}: not a readable state dict: {error}") from None
    own = model.encoder.state_dict()
    matched: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = next((k for k in (key, key.removeprefix("encoder."), f"model.{key}") if k in own), None)
        if name is None:
            continue
        if own[name].shape != tensor.shape:
            raise CheckpointError(
                f"{path}: {key} has shape {list(tensor.shape)}, the encoder {list(own[name].shape)}"
            )
        matched[name] = tensor
    if not matched:
        raise CheckpointError(f"{path}: none of its {len(state)} tensors belongs to this encoder")
    model.encoder.load_state_dict(matched, strict=False)
    return len(matched)


def save_weights(checkpoint: Path, path: Path) -> None:
    """Keep the trained network of ``checkpoint`` in ``path`` (:data:`WEIGHTS_FILE`), without the
    optimiser and RNG state that only resuming needs: about the size of the ONNX graph."""
    state = read_checkpoint(checkpoint)
    weights = {key: state[key] for key in ("task", "model_spec", "num_classes", "model")}
    if state.get("best"):  # train.keep_best: the run's result is its best validation's weights
        weights["model"] = state["best"]["model"]
    with atomic_path(Path(path)) as partial:
        torch.save({"weights_format": WEIGHTS_FORMAT, **weights}, partial)


def read_weights(path: Path) -> dict[str, Any]:
    """A network's weights from a training checkpoint, a published ``weights.pt`` or a bare state dict.

    Returns ``{"model": state dict}`` plus, when the file says, ``task``, ``model_spec`` and
    ``num_classes`` (what built the network).
    """
    path = Path(path)
    state = _load_tensors(path, "weights file")
    if isinstance(state, dict) and (
        state.get("format") == CHECKPOINT_FORMAT or state.get("weights_format") == WEIGHTS_FORMAT
    ):
        return {key: state[key] for key in ("task", "model_spec", "num_classes", "model")}
    if isinstance(state, dict) and state and all(isinstance(value, torch.Tensor) for value in state.values()):
        return {"model": state}
    raise CheckpointError(f"{path}: neither a training checkpoint, a {WEIGHTS_FILE} nor a state dict")


def load_initial_weights(model: torch.nn.Module, weights: InitialWeights) -> None:
    """Load a whole network's weights into ``model``, strictly: every tensor, by name and shape.

    A :class:`CheckpointError` names the file (or "the initial weights") and the tensors that do not
    fit: missing, unexpected, or of another shape. Nothing is loaded then.
    """
    if isinstance(weights, Mapping):
        where, state = "the initial weights", weights
    else:
        where, state = str(weights), read_weights(Path(weights))["model"]
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    reshaped = [
        f"{key} {list(state[key].shape)} (this network: {list(own[key].shape)})"
        for key in sorted(own.keys() & state.keys())
        if own[key].shape != state[key].shape
    ]
    problems = [
        f"{len(names)} {kind}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
        for kind, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
        if names
    ]
    if problems:
        raise CheckpointError(f"{where}: not the weights of this network ({'; '.join(problems)})")
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------- schedule


class WarmupCosine:
    """Linear warm-up, then cosine decay to zero at ``total``; fine for any step count.

    A callable object rather than a closure, so ``LambdaLR.state_dict`` saves ``total`` (which a
    time budget sets after the first steps) and a resumed run decays on the same curve.
    """

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return 0.5 * (
            1.0 + math.cos(math.pi * min(1.0, (step - self.warmup) / max(1, self.total - self.warmup)))
        )


# ------------------------------------------------------------------------------------------- train


@dataclass(frozen=True)
class TrainSummary:
    params: int
    steps: int
    steps_per_epoch: int
    epochs: float
    batch_size: int
    train_images: int
    images_seen: int
    load_s: float  # reading/rendering and resizing the data
    train_s: float  # optimisation steps only
    eval_s: float  # validation during training
    s_per_epoch: float
    images_per_s: float
    final_loss: float  # exponential moving average over the last ~50 steps
    val_metric: str  # the task's headline metric, e.g. "miou"
    val_score: float | None  # its value on the validation split at the last validation
    bf16: bool
    device: str
    stopped_by: str  # "steps" or "time_budget"
    resumed_from_step: int | None
    # The headline metric on the validation split before the first step, when the run started from
    # initial weights (a warm start): where fine-tuning began.
    initial_val_score: float | None = None
    # With train.keep_best: the metric, step and score of the validation whose weights the run kept.
    kept_best: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrainResult:
    model: torch.nn.Module  # fp32, CPU, eval mode
    summary: TrainSummary

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.summary)


def train(
    config: PipelineConfig,
    contract: ModelContract,
    train_set: Sequence[Any],
    val_set: Sequence[Any] | None = None,
    checkpoint: Path | None = None,
    resume: Path | None = None,
    tracker: Tracker | None = None,
    progress: Any = None,
    initial_weights: InitialWeights | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``train_set``; validate every ``eval_every`` steps on ``val_set``.

    ``checkpoint`` is where resumable checkpoints go (every ``checkpoint_every`` steps and at the
    end); ``resume`` continues from one. ``initial_weights`` starts from a trained network of the
    same architecture instead of random weights (a warm start: every tensor, encoder, decoder and
    head, loaded strictly by :func:`load_initial_weights`); the run then validates once before its
    first step (``initial_val_score``). ``progress`` is an optional ``rich.progress.Progress``; the
    task description carries loss and throughput, so any column layout shows them.
    """
    config.check_contract(contract)
    if len(train_set) == 0:
        raise DatasetError("the training split is empty")
    adapter = config.adapter
    started = time.perf_counter()
    data = adapter.load_training_data(train_set, contract, progress, "load train")
    val = val_set if val_set is not None and len(val_set) else None
    load_s = time.perf_counter() - started
    with _fixed_threads(config.train.threads):
        trainer = _Trainer(config, contract, adapter, data, val, tracker, progress, initial_weights)
        if resume is not None:
            trainer.load(resume)
        return trainer.run(checkpoint, load_s)


@contextlib.contextmanager
def _fixed_threads(threads: int) -> Iterator[None]:
    """A fixed intra-op thread count: reduction order, hence results, repeat run to run."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _device(config: PipelineConfig) -> torch.device:
    choice = config.train.device
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise config.error("train.device", "'cuda' but torch sees no CUDA device")
    return torch.device(choice)


def _build(config: PipelineConfig, adapter: TaskAdapter, contract: ModelContract) -> torch.nn.Module:
    """The adapter's model, with the builder's complaints about option values turned into config errors."""
    try:
        return adapter.build_model(config.model, contract)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        spec = config.model
        raise config.error(
            "model.options", f"cannot build {spec.arch} with {spec.options}: {error}"
        ) from None


def _bf16_supported(device: torch.device) -> bool:
    """bf16 autocast only where the hardware has it: elsewhere it emulates, slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


class _Trainer:
    """The state of one run (everything a checkpoint holds) and the loop that advances it."""

    def __init__(
        self,
        config: PipelineConfig,
        contract: ModelContract,
        adapter: TaskAdapter,
        data: Any,
        val: Sequence[Any] | None,
        tracker: Tracker | None,
        progress: Any,
        initial_weights: InitialWeights | None = None,
    ) -> None:
        spec = config.train
        self.config, self.contract, self.adapter, self.data, self.val = config, contract, adapter, data, val
        self.tracker, self.progress = tracker, progress
        self.device = _device(config)
        self.bf16 = spec.bf16 and _bf16_supported(self.device)
        self.memory_format = torch.channels_last if self.bf16 else torch.contiguous_format
        self.steps_per_epoch = math.ceil(len(data) / spec.batch_size)
        self.planned = spec.steps or (spec.epochs * self.steps_per_epoch if spec.epochs else None)

        torch.manual_seed(spec.seed)
        self.rng = np.random.default_rng(spec.seed)
        self.net = ServingModel(_build(config, adapter, contract))  # no head: raw outputs for the loss
        if initial_weights is not None:  # after the seeded random init, so the RNG streams stay the same
            load_initial_weights(self.net.model, initial_weights)
        self.warm_start = initial_weights is not None
        self.net = self.net.to(self.device, memory_format=self.memory_format).train()
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=config.optimizer.lr, weight_decay=config.optimizer.weight_decay
        )
        # Without a planned length (time budget only) the cosine waits for the calibration.
        self.schedule_fn = WarmupCosine(config.schedule.warmup_steps, self.planned or 2**31)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule_fn)
        self.loss = adapter.loss(config, self.device)

        self.step = 0
        self.ema_loss = float("nan")
        self.train_s = self.eval_s = 0.0
        self.calibrated = spec.time_budget_s is None
        self.val_score: float | None = None
        self.initial_val_score: float | None = None
        self.resumed_from: int | None = None
        # With train.keep_best: the best validation so far (step, score, CPU copy of the weights).
        self.best: dict[str, Any] | None = None

    # -- checkpoints

    def _identity(self) -> dict[str, Any]:
        """What must match for a checkpoint to continue this run: anything that shapes the trajectory."""
        config = self.config.to_dict()
        train = {k: config["train"][k] for k in ("epochs", "steps", "batch_size", "seed")}
        sections = {k: config[k] for k in ("model", "loss", "optimizer", "schedule", "augment")}
        return {
            **sections,
            "train": train,
            "train_images": len(self.data),
            "classes": self.contract.labels.names,
            "task": self.adapter.task.value,
        }

    def save(self, path: Path) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "identity": self._identity(),
            "task": self.adapter.task.value,
            "model_spec": self.config.to_dict()["model"],
            "num_classes": self.contract.num_classes,
            "step": self.step,
            "model": self.net.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "ema_loss": self.ema_loss,
            "train_s": self.train_s,
            "eval_s": self.eval_s,
            "calibrated": self.calibrated,
            "val_score": self.val_score,
            "initial_val_score": self.initial_val_score,
            "best": self.best,
        }
        with atomic_path(path) as partial:
            torch.save(state, partial)

    def load(self, path: Path) -> None:
        state = read_checkpoint(path)
        expected = self._identity()
        if state["identity"] != expected:
            keys = _differences(state["identity"], expected)
            raise CheckpointError(f"{path}: written by a different run configuration ({', '.join(keys)})")
        self.net.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = self.resumed_from = state["step"]
        self.ema_loss, self.train_s, self.eval_s = state["ema_loss"], state["train_s"], state["eval_s"]
        self.calibrated, self.val_score = state["calibrated"], state["val_score"]
        self.initial_val_score = state.get("initial_val_score")  # absent in checkpoints of older runs
        self.best = state.get("best")

    # -- the loop

    def run(self, checkpoint: Path | None, load_s: float) -> TrainResult:
        spec = self.config.train
        task = None
        if self.progress is not None:  # total None (time budget only): indeterminate until calibrated
            task = self.progress.add_task("train", total=self.planned, completed=self.step)
        session_start, session_steps = self.train_s, 0
        stopped_by = "steps"
        if self.warm_start and self.step == 0 and self.val is not None:
            scored = self._validate()  # where the warm start begins, before any step moves it
            self.initial_val_score = scored.metrics()[self.adapter.headline]
            if self.tracker is not None:
                self.tracker.log_metrics(scored.metrics("val"), step=0)
        while self.step < self.schedule_fn.total:
            started = time.perf_counter()
            loss = self._train_step()
            self.train_s += time.perf_counter() - started
            self.step += 1
            session_steps += 1
            self.ema_loss = loss if math.isnan(self.ema_loss) else 0.98 * self.ema_loss + 0.02 * loss
            rate = session_steps * spec.batch_size / max(self.train_s - session_start, 1e-9)
            if not self.calibrated and self.step >= CALIBRATION_STEPS:
                self._calibrate(task)
            over_budget = spec.time_budget_s is not None and self.train_s + self.eval_s >= spec.time_budget_s
            last = over_budget or self.step >= self.schedule_fn.total
            if task is not None:
                epoch = self.step / self.steps_per_epoch
                self.progress.update(
                    task,
                    advance=1,
                    description=f"train ep {epoch:.1f} loss {self.ema_loss:.3f} {rate:5.1f} img/s",
                )
            if self.step % (spec.eval_every or self.steps_per_epoch) == 0 or last:
                self._log(rate)
                if spec.time_budget_s is not None and self.calibrated and not last:
                    self._calibrate(task)  # again: the machine may have slowed down (or sped up) since
            if checkpoint is not None and (self.step % spec.checkpoint_every == 0 or last):
                self.save(checkpoint)
            if over_budget:
                stopped_by = "time_budget"
                break

        if self.best is not None:  # train.keep_best: end with the best validation's weights
            self.net.model.load_state_dict(self.best["model"])
        model = self.net.model.to("cpu", memory_format=torch.contiguous_format).eval()
        steps = max(self.step, 1)
        summary = TrainSummary(
            params=sum(p.numel() for p in model.parameters()),
            steps=self.step,
            steps_per_epoch=self.steps_per_epoch,
            epochs=round(self.step / self.steps_per_epoch, 3),
            batch_size=spec.batch_size,
            train_images=len(self.data),
            images_seen=self.step * spec.batch_size,
            load_s=round(load_s, 2),
            train_s=round(self.train_s, 2),
            eval_s=round(self.eval_s, 2),
            s_per_epoch=round(self.train_s / steps * self.steps_per_epoch, 2),
            images_per_s=round(steps * spec.batch_size / max(self.train_s, 1e-9), 2),
            final_loss=round(self.ema_loss, 4),
            val_metric=self.adapter.headline,
            val_score=self.val_score,
            bf16=self.bf16,
            device=str(self.device),
            stopped_by=stopped_by,
            resumed_from_step=self.resumed_from,
            initial_val_score=self.initial_val_score,
            kept_best=None if self.best is None else {k: self.best[k] for k in ("metric", "step", "score")},
        )
        return TrainResult(model, summary)

    def _train_step(self) -> float:
        spec = self.config
        images, targets = self.adapter.sample_batch(self.data, spec.augment, spec.train.batch_size, self.rng)
        batch = torch.from_numpy(images).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            outputs = self.net.model(self.net.preprocess(batch).contiguous(memory_format=self.memory_format))
        loss = self.loss(_float(outputs), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return loss.item()

    def _calibrate(self, task: Any) -> None:
        """Size the cosine so it ends where the time budget will: steps that fit in what is left, at
        the run's average time per step so far. Called after the first steps and at every
        validation, so a run on shared cores that slow down (or pause) still ends its decay at zero."""
        budget = self.config.train.time_budget_s
        assert budget is not None
        per_step = self.train_s / self.step
        fits = self.step + int(max(0.0, budget - self.train_s - self.eval_s) / per_step)
        self.schedule_fn.total = max(self.step + 1, min(self.planned or fits, fits))
        self.calibrated = True
        if task is not None:
            self.progress.update(task, total=self.schedule_fn.total)

    def _log(self, rate: float) -> None:
        metrics = {
            "train/loss": self.ema_loss,
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/images_per_s": rate,
            "train/epoch": self.step / self.steps_per_epoch,
        }
        if self.val is not None:
            scored = self._validate()
            metrics |= scored.metrics("val")
            self.val_score = scored.metrics()[self.adapter.headline]
            self._keep_if_best(scored.metrics())
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=self.step)

    def _keep_if_best(self, metrics: dict[str, Any]) -> None:
        """With train.keep_best: a copy of the weights whenever its validation metric improves."""
        metric = self.config.train.keep_best
        if metric is None:
            return
        if metrics.get(metric) is None:
            known = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, int | float)))
            raise ValueError(f"train.keep_best: the validation has no metric {metric!r} (it has: {known})")
        score = float(metrics[metric])
        if self.best is None or score > self.best["score"]:
            weights = {
                key: value.detach().to("cpu", copy=True) for key, value in self.net.model.state_dict().items()
            }
            self.best = {"metric": metric, "step": self.step, "score": score, "model": weights}

    def _validate(self) -> Any:
        """The task's evaluation of the current weights on the validation split (PyTorch, no worst-k)."""
        assert self.val is not None
        started = time.perf_counter()
        serving = ServingModel(self.net.model, self.adapter.serving_head(self.contract)).to(self.device)
        predict = torch_predictor(serving, self.contract.output_names)  # restores train mode after
        scored = self.adapter.evaluate(
            predict,
            self.val,
            self.contract,
            "pytorch",
            worst_k=0,
            batch_size=self.config.evaluate.batch_size,
        )
        self.eval_s += time.perf_counter() - started
        return scored


def _float(outputs: Any) -> Any:
    """Network outputs in float32 (autocast may leave bf16), whatever their nesting."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, dict):
        return {key: _float(value) for key, value in outputs.items()}
    if isinstance(outputs, tuple | list):
        return type(outputs)(_float(value) for value in outputs)
    return outputs


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return keys


def _load_tensors(path: Path, what: str) -> Any:
    """``torch.load`` of tensors only; a missing or unreadable file is a ``CheckpointError``."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not torch, or unsafe pickles: all mean "not ours"
        raise CheckpointError(f"{path}: not a readable {what}: {error}") from None


def read_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    state = _load_tensors(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a ProdSegmenter training checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def load_trained_model(path: Path, contract: ModelContract) -> torch.nn.Module:
    """The fp32 model of a checkpoint, rebuilt by its task's adapter from the spec stored in it."""
    from training.tasks import adapter_for

    state = read_checkpoint(path)
    if state["task"] != contract.task.value or state["num_classes"] != contract.num_classes:
        raise CheckpointError(
            f"{path}: a {state['task']} model of {state['num_classes']} classes, but {contract.model_name} "
            f"is {contract.task.value} with {contract.num_classes}"
        )
    spec = {**state["model_spec"], "encoder_weights": None}  # the weights are in the checkpoint
    model = adapter_for(state["task"]).build_model(ModelSpec(**spec), contract)
    model.load_state_dict(state["model"])
    return model.eval()
