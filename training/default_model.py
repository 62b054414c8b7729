"""The small default model: train on synthetic shelves, export to ONNX, publish into the repository.

One call, :func:`build_default_model`, goes from nothing to a new version directory that Triton can
serve: pre-render procedural scenes, train a small smp model on random crops, export the model
*with its I/O contract inside the graph* (uint8 NHWC frames in, uint8 class ids out, so no client
normalises or arg-maxes), measure held-out mIoU on the exported file, check that ONNX Runtime and
OpenVINO agree with PyTorch, and write ``<repo>/<model>/<N>/`` atomically with a model card.

Names, input size and classes come from the repository's ``config.pbtxt`` and ``labels.txt``
(:class:`clients.contract.ModelContract`); nothing here repeats them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clients.contract import ModelContract, default_repository
from clients.evaluation import ConfusionMatrix
from training.compat import patch_torchvision_ops

patch_torchvision_ops()  # before smp, which imports timm and torchvision

import segmentation_models_pytorch as smp  # noqa: E402

from training.synth import Scene, render_scene, scene_seed  # noqa: E402

# ImageNet statistics: the usual choice for timm encoders, kept even though we train from scratch so
# that pretrained encoder weights can be dropped in later without changing the serving graph.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MIN_ORT_AGREEMENT = 0.999


@dataclass(frozen=True)
class DefaultModelConfig:
    # Unet on MobileNetV3-small with a slim decoder: full-resolution output keeps thin shelf edges
    # and price tags sharp, and it is the fastest model in NOTES' OpenVINO table (~11 ms at 512).
    arch: str = "Unet"
    encoder: str = "tu-mobilenetv3_small_100"
    decoder_channels: tuple[int, ...] = (64, 32, 24, 16, 8)
    # Crops cut from full-size scenes keep object scale the same as at serving time.
    crop: tuple[int, int] = (192, 320)
    # 600 scenes (~0.6 GB as uint8, ~15 s to render) and 600 steps of 16 crops: ~5 minutes on two
    # shared cores. 900 steps reached 0.91 held-out mIoU in ~7 minutes; 600 trades a little of it.
    train_scenes: int = 600
    val_scenes: int = 32
    data_seed: int = 0
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    seed: int = 0
    threads: int = 2
    # bf16 autocast + channels_last trains ~2.5x faster on CPUs with native bf16 (AVX512-BF16/AMX);
    # weights and the exported graph stay fp32.
    bf16: bool = True


@dataclass(frozen=True)
class TrainSummary:
    steps: int
    batch_size: int
    images_seen: int
    render_s: float
    train_s: float
    images_per_s: float
    final_loss: float  # exponential moving average over the last ~50 steps
    bf16: bool


def create_model(arch: str, encoder: str, num_classes: int, **kwargs: Any) -> torch.nn.Module:
    """An smp model with random weights (``encoder_weights=None``: no downloads here)."""
    return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=num_classes, **kwargs)


def _model_kwargs(config: DefaultModelConfig) -> dict[str, Any]:
    return {"decoder_channels": config.decoder_channels} if config.arch.lower().startswith("unet") else {}


class ServingModel(torch.nn.Module):
    """The model I/O contract in the graph: uint8 RGB ``[N, H, W, 3]`` -> uint8 class ids ``[N, H, W]``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        # Folded into one multiply-add on 0..255 pixels.
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(STD).view(1, 3, 1, 1) * 255.0))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW; training uses this too, so train and serve match."""
        return (images.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(dim=1).to(torch.uint8)


# ---------------------------------------------------------------------------------------------- data


def val_data_seed(data_seed: int) -> int:
    """Validation scenes come from a seed derived from, and distinct to, the training one."""
    return data_seed + 1_000_003


def scene_seeds(data_seed: int, count: int) -> list[int]:
    return [scene_seed(data_seed, i) for i in range(count)]


def render_scenes(seeds: Sequence[int], contract: ModelContract, progress: Any = None) -> list[Scene]:
    task = progress.add_task("render scenes", total=len(seeds)) if progress is not None else None
    scenes = []
    for seed in seeds:
        scenes.append(
            render_scene(seed, height=contract.height, width=contract.width, labels=contract.labels)
        )
        if task is not None:
            progress.advance(task)
    return scenes


def _stack(scenes: Sequence[Scene]) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 array per modality (~1 MB a 384x640 scene) instead of thousands of small ones."""
    images = np.stack([scene.image for scene in scenes])
    masks = np.stack([scene.mask for scene in scenes])
    return images, masks


def _sample_batch(
    images: np.ndarray, masks: np.ndarray, crop: tuple[int, int], batch_size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops with random horizontal flips (shelves look the same mirrored; text is not read)."""
    crop_h, crop_w = crop
    _, height, width = masks.shape
    picks = rng.integers(0, len(images), batch_size)
    tops = rng.integers(0, height - crop_h + 1, batch_size)
    lefts = rng.integers(0, width - crop_w + 1, batch_size)
    flips = rng.random(batch_size) < 0.5
    batch_images = np.empty((batch_size, crop_h, crop_w, 3), np.uint8)
    batch_masks = np.empty((batch_size, crop_h, crop_w), np.uint8)
    for b, (i, top, left, flip) in enumerate(zip(picks, tops, lefts, flips, strict=True)):
        step = -1 if flip else 1
        batch_images[b] = images[i, top : top + crop_h, left : left + crop_w][:, ::step]
        batch_masks[b] = masks[i, top : top + crop_h, left : left + crop_w][:, ::step]
    return torch.from_numpy(batch_images), torch.from_numpy(batch_masks).long()


# -------------------------------------------------------------------------------------------- train


def _bf16_supported() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def train(
    config: DefaultModelConfig, contract: ModelContract, progress: Any = None
) -> tuple[torch.nn.Module, TrainSummary]:
    """Train from scratch on pre-rendered scenes; deterministic for a fixed config on one machine.

    ``progress`` is an optional ``rich.progress.Progress``; the task description carries the loss
    and throughput so any column layout shows them.
    """
    if config.crop[0] > contract.height or config.crop[1] > contract.width:
        raise ValueError(f"crop {config.crop} exceeds the contract's {contract.height}x{contract.width}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)  # fixed thread count: reduction order, hence results, repeat
    try:
        started = time.perf_counter()
        images, masks = _stack(
            render_scenes(scene_seeds(config.data_seed, config.train_scenes), contract, progress)
        )
        render_s = time.perf_counter() - started
        return _train_loop(config, contract, images, masks, render_s, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train_loop(
    config: DefaultModelConfig,
    contract: ModelContract,
    images: np.ndarray,
    masks: np.ndarray,
    render_s: float,
    progress: Any,
) -> tuple[torch.nn.Module, TrainSummary]:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    bf16 = config.bf16 and _bf16_supported()
    memory_format = torch.channels_last if bf16 else torch.contiguous_format

    net = ServingModel(
        create_model(config.arch, config.encoder, contract.num_classes, **_model_kwargs(config))
    )
    net = net.to(memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config.warmup_steps, config.steps))
    cross_entropy = torch.nn.CrossEntropyLoss()
    # Dice balances the thin, rare classes (shelf edges, price tags) against the large ones.
    dice = smp.losses.DiceLoss(mode="multiclass", from_logits=True)

    task = progress.add_task("train", total=config.steps) if progress is not None else None
    ema_loss = float("nan")
    started = time.perf_counter()
    for step in range(config.steps):
        batch, target = _sample_batch(images, masks, config.crop, config.batch_size, rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net.model(net.preprocess(batch).contiguous(memory_format=memory_format))
        logits = logits.float()
        loss = cross_entropy(logits, target) + dice(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()

        value = loss.item()
        ema_loss = value if math.isnan(ema_loss) else 0.98 * ema_loss + 0.02 * value
        if task is not None:
            rate = (step + 1) * config.batch_size / (time.perf_counter() - started)
            progress.update(task, advance=1, description=f"train loss {ema_loss:.3f} {rate:5.1f} img/s")
    train_s = time.perf_counter() - started

    model = net.model.to(memory_format=torch.contiguous_format).eval()
    summary = TrainSummary(
        steps=config.steps,
        batch_size=config.batch_size,
        images_seen=config.steps * config.batch_size,
        render_s=round(render_s, 2),
        train_s=round(train_s, 2),
        images_per_s=round(config.steps * config.batch_size / max(train_s, 1e-9), 2),
        final_loss=round(ema_loss, 4),
        bf16=bf16,
    )
    return model, summary


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to zero; fine for any step count, unlike OneCycleLR."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


# ----------------------------------------------------------------------------------------- evaluate


def _predictor(model_or_onnx: torch.nn.Module | Path | str) -> Callable[[np.ndarray], np.ndarray]:
    """A function uint8 ``[N, H, W, 3]`` -> uint8 ``[N, H, W]`` for a torch model or an ONNX file."""
    if isinstance(model_or_onnx, torch.nn.Module):
        serving = model_or_onnx if isinstance(model_or_onnx, ServingModel) else ServingModel(model_or_onnx)
        serving = serving.eval()

        def run_torch(images: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return serving(torch.from_numpy(images)).numpy()

        return run_torch

    import onnxruntime as ort

    session = ort.InferenceSession(str(model_or_onnx), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda images: session.run(None, {input_name: images})[0]


def _batches(scenes: Sequence[Scene], size: int = 4) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(scenes), size):
        chunk = scenes[start : start + size]
        yield np.stack([s.image for s in chunk]), np.stack([s.mask for s in chunk])


def evaluate_miou(
    model_or_onnx: torch.nn.Module | Path | str,
    scenes: Sequence[Scene],
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Dataset-level IoU per class (pixels summed over all scenes) and their mean.

    ``miou`` averages every class present in labels or predictions, background included;
    ``miou_foreground`` leaves background out.
    """
    predict = _predictor(model_or_onnx)
    matrix = ConfusionMatrix(num_classes)
    for images, masks in _batches(scenes):
        matrix.update(predict(images), masks)
    iou = matrix.iou()
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    return {
        "miou": round(float(np.nanmean(iou)), 4),
        "miou_foreground": round(float(np.nanmean(iou[1:])), 4) if num_classes > 1 else None,
        "per_class_iou": {
            name: (None if np.isnan(v) else round(float(v), 4)) for name, v in zip(names, iou, strict=True)
        },
        "pixel_accuracy": round(matrix.pixel_accuracy(), 4),
        "scenes": len(scenes),
    }


# ------------------------------------------------------------------------------------------- export


def export_onnx(model: torch.nn.Module, path: Path, contract: ModelContract) -> None:
    """Export ``ServingModel(model)``: batch axis dynamic, H and W fixed by the contract; slimmed.

    Written to a temporary file beside ``path`` and moved into place, so readers never see half a file.
    """
    import onnx
    import onnxslim

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    serving = (model if isinstance(model, ServingModel) else ServingModel(model)).eval()
    example = torch.zeros((1, contract.height, contract.width, 3), dtype=torch.uint8)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        torch.onnx.export(
            serving,
            (example,),
            str(tmp),
            opset_version=17,
            dynamo=False,
            input_names=[contract.input_name],
            output_names=[contract.output_name],
            dynamic_axes={contract.input_name: {0: "batch"}, contract.output_name: {0: "batch"}},
        )
        slimmed = onnxslim.slim(onnx.load(str(tmp)))
        # The tracer loses H and W through the decoder's scale-factor Resizes and even labels the
        # output's dim 1 "batch": state the contract's output shape so Triton and readers see it.
        (output,) = slimmed.graph.output
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        dims.add().dim_param = "batch"
        for size in (contract.height, contract.width):
            dims.add().dim_value = size
        onnx.checker.check_model(slimmed, full_check=True)
        onnx.save(slimmed, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_parity(model: torch.nn.Module, onnx_path: Path, scenes: Sequence[Scene]) -> dict[str, Any]:
    """Fraction of pixels where ONNX Runtime / OpenVINO pick the same class as PyTorch fp32.

    OpenVINO runs with its CPU defaults (bf16 on CPUs that have it), as the serving backend does,
    so its agreement is below 1 by design; ONNX Runtime fp32 should agree almost exactly.
    """
    import openvino as ov

    reference = _predictor(model)
    onnxruntime_run = _predictor(onnx_path)
    compiled = ov.Core().compile_model(str(onnx_path), "CPU")
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # e.g. "bf16"

    total = ort_same = ov_same = 0
    for images, _ in _batches(scenes):
        expected = reference(images)
        ort_same += int((onnxruntime_run(images) == expected).sum())
        ov_same += int((compiled(images)[0] == expected).sum())
        total += expected.size
    return {
        "onnxruntime": round(ort_same / total, 6),
        "openvino": round(ov_same / total, 6),
        "openvino_precision": precision,
        "pixels": total,
    }


# ------------------------------------------------------------------------------------------ publish


def publish(onnx_path: Path, card: dict[str, Any], repository: Path, model_name: str | None = None) -> int:
    """Write the next integer version ``<repository>/<model>/<N>/`` and return N.

    The version is assembled in a hidden temporary directory inside the model folder (same
    filesystem, and Triton ignores non-integer names) and renamed into place, so Triton never loads a
    half-written version; an existing version is never overwritten. ``model.py`` is a relative
    symlink to the one python-backend runner at ``<repository>/<model>/model.py``.
    """
    repository = Path(repository)
    model_name = model_name or ModelContract.load(repository).model_name
    model_dir = repository / model_name
    staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=model_dir))
    try:
        os.chmod(staging, 0o755)
        shutil.copyfile(onnx_path, staging / "model.onnx")
        os.symlink(os.path.join("..", "model.py"), staging / "model.py")
        while True:
            version = 1 + max((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), default=0)
            full_card = {**card, "model_name": model_name, "version": version}
            (staging / "model_card.json").write_text(json.dumps(full_card, indent=2) + "\n")
            (staging / "MODEL_CARD.md").write_text(_card_markdown(full_card))
            target = model_dir / str(version)
            if target.exists():  # another publisher won the race: take the next number
                continue
            try:
                os.rename(staging, target)  # fails on a non-empty existing directory: no overwrite
            except OSError:
                continue
            card.update(full_card)
            return version
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _card_markdown(card: dict[str, Any]) -> str:
    evaluation, parity, training = (
        card.get("evaluation", {}),
        card.get("parity", {}),
        card.get("training", {}),
    )
    rows = [
        ("model", f"{card['model_name']} v{card['version']}"),
        ("architecture", f"{card.get('architecture')} / {card.get('encoder')}"),
        ("parameters", f"{card.get('params', 0) / 1e6:.2f} M"),
        ("input", f"uint8 RGB [N, {card.get('input_height')}, {card.get('input_width')}, 3]"),
        ("classes", ", ".join(card.get("classes", []))),
        (
            "training",
            f"{training.get('steps')} steps x {training.get('batch_size')}, "
            f"{training.get('train_s')} s, {card.get('data', {}).get('train_scenes')} scenes",
        ),
        (
            "held-out mIoU",
            f"{evaluation.get('miou')} ({evaluation.get('scenes')} full-size scenes, ONNX Runtime)",
        ),
    ]
    rows += [(f"IoU {name}", str(value)) for name, value in evaluation.get("per_class_iou", {}).items()]
    rows += [
        ("ORT / OpenVINO agreement", f"{parity.get('onnxruntime')} / {parity.get('openvino')}"),
        ("created", str(card.get("created"))),
    ]
    lines = [f"# {card['model_name']} version {card['version']}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- build


def build_default_model(
    config: DefaultModelConfig | None = None, repository: Path | None = None, progress: Any = None
) -> tuple[int, dict[str, Any]]:
    """Train, evaluate, export, check parity and publish; returns ``(version, card)``."""
    import onnx
    import onnxruntime
    import openvino
    import timm

    config = config or DefaultModelConfig()
    contract = ModelContract.load(repository)
    repository = Path(repository) if repository is not None else default_repository()
    train_seeds = set(scene_seeds(config.data_seed, config.train_scenes))
    val_seeds = scene_seeds(val_data_seed(config.data_seed), config.val_scenes)
    if train_seeds.intersection(val_seeds):
        raise ValueError("validation scenes overlap training scenes")

    started = time.perf_counter()
    model, summary = train(config, contract, progress)
    val_scenes = render_scenes(val_seeds, contract, progress)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, onnx_path, contract)
        evaluation = evaluate_miou(onnx_path, val_scenes, contract.num_classes, contract.labels.names)
        evaluation["engine"] = "onnxruntime"
        parity = check_parity(model, onnx_path, val_scenes)
        if parity["onnxruntime"] < MIN_ORT_AGREEMENT:
            raise RuntimeError(
                f"ONNX Runtime agrees with PyTorch on only {parity['onnxruntime']:.4%} of pixels"
            )
        card = {
            "model_name": contract.model_name,
            "architecture": config.arch,
            "encoder": config.encoder,
            "decoder_channels": list(config.decoder_channels) if _model_kwargs(config) else None,
            "params": sum(p.numel() for p in model.parameters()),
            "input_height": contract.height,
            "input_width": contract.width,
            "input_size": [contract.height, contract.width],
            "input": {
                "name": contract.input_name,
                "dtype": "uint8",
                "shape": [-1, contract.height, contract.width, 3],
            },
            "output": {
                "name": contract.output_name,
                "dtype": "uint8",
                "shape": [-1, contract.height, contract.width],
            },
            "classes": contract.labels.names,
            "normalisation": {"mean": list(MEAN), "std": list(STD), "in_graph": True},
            "data": {
                "generator": "training.synth",
                "data_seed": config.data_seed,
                "val_data_seed": val_data_seed(config.data_seed),
                "train_scenes": config.train_scenes,
                "val_scenes": config.val_scenes,
                "crop": list(config.crop),
            },
            "training": {
                **asdict(summary),
                "lr": config.lr,
                "weight_decay": config.weight_decay,
                "seed": config.seed,
                "threads": config.threads,
                "loss": "cross_entropy + dice",
                "optimizer": "AdamW, warm-up + cosine",
            },
            "evaluation": evaluation,
            "parity": parity,
            "onnx": {
                "opset": 17,
                "bytes": onnx_path.stat().st_size,
                "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
            },
            "versions": {
                "torch": torch.__version__,
                "segmentation_models_pytorch": smp.__version__,
                "timm": timm.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "openvino": openvino.__version__,
            },
            "build_s": round(time.perf_counter() - started, 1),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        version = publish(onnx_path, card, repository, contract.model_name)
    return version, card


def main() -> None:
    """``python -m training.default_model [REPOSITORY]``: build and publish the default model."""
    import sys

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    repository = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        version, card = build_default_model(DefaultModelConfig(), repository, progress)
    print(json.dumps(card, indent=2))
    print(f"published version {version}")


if __name__ == "__main__":
    main()
