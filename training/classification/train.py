"""Train, evaluate, gate, export and publish one classifier: ``python -m training.classification.train``.

    python -m training.classification.train --config training/configs/returns_classifier.yaml \\
        --run-dir out/runs/returns [--publish] [--repository model_repository]

Stages, each writing into the run directory (every file atomically):

    data.json              split sizes and the loaders' reports (skipped files/rows with reasons)
    train.json             steps, time, loss and validation curve, the step kept
    checkpoint.pt          the best weights on validation (accuracy; ROC AUC for binary models)
    model.onnx             the serving graph: uint8 images in, probabilities out, batch dynamic
    parity.json            ONNX Runtime and OpenVINO vs PyTorch on held-out images
    evaluation/            evaluation.json, confusion.png (+ roc.png, pr.png), from the ONNX graph
    latency.json           bare-engine batch-1 latency, ONNX Runtime and OpenVINO
    gate.json              the gate's checks; ``--publish`` publishes only when all pass

It produces what ``prodseg pipeline --config ...`` produces through the classification task
adapter, for machines or branches where the pipeline is not at hand. The exit status is 0 when the
gate passes, 3 when it refuses, 2 for unusable input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clients.atomic import write_text
from clients.contract import ContractError, ModelContract, default_repository
from training.classification import data as classification_data
from training.classification.config import ClassifierConfig, ConfigError
from training.classification.data import Arrays, Augment, DatasetError, Sample, load_arrays, sample_batch
from training.classification.evaluate import evaluate, gate_checks
from training.classification.export import (
    check_parity,
    engine_latency,
    export_onnx,
    onnx_engine,
)
from training.classification.model import ServingClassifier, build_backbone, parameter_count
from training.classification.publish import PublishError, check_contract, file_digest, now, publish


@dataclass(frozen=True)
class Splits:
    train: Sequence[Sample]
    val: Sequence[Sample]
    test: Sequence[Sample]
    report: dict[str, Any]


def build_splits(config: ClassifierConfig) -> Splits:
    """The config's train, val and test splits, and a JSON-able report of how they were made."""
    splits, report = classification_data.make_splits(config.data, config.classes, config.input_size[0])
    return Splits(splits["train"], splits["val"], splits["test"], report)


def augment_of(config: ClassifierConfig) -> Augment:
    spec = config.augment
    return Augment(
        hflip=spec.hflip,
        crop=spec.crop,
        brightness=spec.brightness,
        contrast=spec.contrast,
        jpeg_probability=spec.jpeg_probability,
        jpeg_quality=spec.jpeg_quality,
    )


# ------------------------------------------------------------------------------------------ train


def headline_of(num_classes: int) -> str:
    """Which validation number picks the kept checkpoint: ROC AUC for binary models, else accuracy."""
    return "roc_auc" if num_classes == 2 else "accuracy"


def validation_score(model: ServingClassifier, val: Arrays, headline: str) -> float:
    from training.classification.metrics import roc_auc

    model.eval()
    with torch.inference_mode():
        probabilities = np.concatenate(
            [model(torch.from_numpy(val.images[i : i + 128])).numpy() for i in range(0, len(val), 128)]
        )
    model.train()
    if headline == "roc_auc":
        return roc_auc(probabilities[:, 1], val.labels)
    return float((probabilities.argmax(1) == val.labels).mean())


def train_model(
    config: ClassifierConfig, train: Arrays, val: Arrays, log: Any = print
) -> tuple[ServingClassifier, dict[str, Any]]:
    """The loop: AdamW, linear warm-up then cosine decay, validation every ``eval_every`` steps,
    the best weights on validation kept. Deterministic on CPU for a given seed and thread count
    as long as the time budget does not cut the run short."""
    spec = config.train
    torch.manual_seed(spec.seed)
    torch.set_num_threads(spec.threads)
    rng = np.random.default_rng(spec.seed)
    model = ServingClassifier(build_backbone(config.model.encoder, len(config.classes), config.model.options))
    # Channels-last weights: the uint8 NHWC input already is channels-last after the permute, and
    # oneDNN's depthwise convolutions run about 2x faster on CPU in this layout.
    model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optimizer.lr, weight_decay=config.optimizer.weight_decay
    )
    warmup = max(1, config.schedule.warmup_steps)
    started = time.perf_counter()

    def progress(step: int) -> float:
        """How far the run is, 0..1: by steps, or by the time budget when that runs out first (on
        busy shared cores), so the learning rate always decays to zero by the end."""
        by_steps = step / spec.steps
        if spec.time_budget_s is None:
            return by_steps
        return min(1.0, max(by_steps, (time.perf_counter() - started) / spec.time_budget_s))

    def set_learning_rate(step: int) -> None:
        if step <= warmup:
            factor = step / warmup
        else:
            factor = 0.5 * (1 + math.cos(math.pi * progress(step)))
        for group in optimizer.param_groups:
            group["lr"] = config.optimizer.lr * factor

    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.loss.label_smoothing)
    augment = augment_of(config)
    headline = headline_of(len(config.classes))
    best = {"score": -1.0, "step": 0, "state": None}
    curve, losses = [], []
    step = 0
    for step in range(1, spec.steps + 1):
        set_learning_rate(step)
        images, labels = sample_batch(train, augment, spec.batch_size, rng)
        loss = loss_fn(model.logits(torch.from_numpy(images)), torch.from_numpy(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        out_of_time = progress(step) >= 1.0 and step < spec.steps
        if step % spec.eval_every == 0 or step == spec.steps or out_of_time:
            score = validation_score(model, val, headline)
            elapsed = round(time.perf_counter() - started, 1)
            curve.append(
                {
                    "step": step,
                    "loss": round(float(np.mean(losses[-spec.eval_every :])), 4),
                    headline: round(score, 4),
                    "s": elapsed,
                }
            )
            log(
                f"step {step}/{spec.steps}  loss {curve[-1]['loss']}  val {headline} {score:.4f}  {elapsed} s"
            )
            if score > best["score"]:
                best = {
                    "score": score,
                    "step": step,
                    "state": {k: v.clone() for k, v in model.state_dict().items()},
                }
        if out_of_time:
            log(f"time budget of {spec.time_budget_s} s reached at step {step}")
            break
    train_s = time.perf_counter() - started
    model.load_state_dict(best["state"])
    model = model.to(memory_format=torch.contiguous_format).eval()
    summary = {
        "steps": step,
        "planned_steps": spec.steps,
        "batch_size": spec.batch_size,
        "images_seen": step * spec.batch_size,
        "train_images": len(train),
        "val_images": len(val),
        "train_s": round(train_s, 1),
        "images_per_s": round(step * spec.batch_size / train_s, 1),
        "threads": spec.threads,
        "seed": spec.seed,
        "lr": config.optimizer.lr,
        "weight_decay": config.optimizer.weight_decay,
        "label_smoothing": config.loss.label_smoothing,
        "augment": config.to_dict()["augment"],
        "kept_step": best["step"],
        f"val_{headline}": round(best["score"], 4),
        "curve": curve,
    }
    return model, summary


# -------------------------------------------------------------------------------------------- run


def run(
    config: ClassifierConfig, run_dir: Path, repository: Path | None, publish_version: bool, log: Any = print
) -> dict:
    """Every stage; returns the summary written to ``<run_dir>/summary.json``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    height, width = config.input_size
    repository = Path(repository or config.publish.repository or default_repository())
    model_name = config.publish.model_name
    contract = ModelContract.load(model_name, repository)
    check_contract(contract, config.classes, height, width)
    torch.set_num_threads(config.train.threads)

    started = time.perf_counter()
    splits = build_splits(config)
    train = load_arrays(splits.train, height, width)
    val = load_arrays(splits.val, height, width)
    render_s = round(time.perf_counter() - started, 1)
    data_report = {**splits.report, "load_s": render_s}
    _write_json(run_dir / "data.json", data_report)
    log(f"data: {len(train)} train, {len(val)} val, {len(splits.test)} test images in {render_s} s")

    model, training = train_model(config, train, val, log)
    torch.save({"state_dict": model.state_dict(), "config": config.to_dict()}, run_dir / "checkpoint.pt")
    _write_json(run_dir / "train.json", training)

    onnx_path = run_dir / "model.onnx"
    export_onnx(model, onnx_path, height, width, config.export.opset)
    test_images = load_arrays(splits.test, height, width)
    parity = check_parity(model, onnx_path, test_images.images[: config.export.parity_images])
    _write_json(run_dir / "parity.json", parity.to_dict())
    log(f"parity: {parity.to_dict()}")

    engine = onnx_engine(onnx_path, "onnxruntime")
    evaluation = evaluate(
        engine, splits.test, config.classes, height, width, "onnxruntime", splits.val, run_dir / "evaluation"
    )
    log(f"held-out: {json.dumps(evaluation.metrics())}")
    latency = engine_latency(onnx_path, test_images.images[0])
    _write_json(run_dir / "latency.json", latency)

    checks = gate_checks(evaluation, config.gate)
    agreement, floor = parity.onnxruntime_top1_agreement, config.gate.min_onnxruntime_agreement
    checks.append((agreement >= floor, f"ONNX Runtime top-1 agreement {agreement} >= {floor}"))
    passed = all(ok for ok, _ in checks)
    gate = {"passed": passed, "checks": [f"{'pass' if ok else 'FAIL'}: {text}" for ok, text in checks]}
    _write_json(run_dir / "gate.json", gate)
    log("gate: " + ("passed" if passed else "REFUSED") + "\n  " + "\n  ".join(gate["checks"]))

    summary = {
        "model_name": model_name,
        "config": config.source,
        "run_dir": str(run_dir),
        "data": data_report,
        "training": {k: v for k, v in training.items() if k != "curve"},
        "evaluation": evaluation.to_dict(),
        "parity": parity.to_dict(),
        "latency_batch1": latency,
        "gate": gate,
        "published_version": None,
    }
    if publish_version and passed:
        card = _card(
            config,
            model,
            training,
            data_report,
            evaluation.to_dict(),
            parity.to_dict(),
            latency,
            gate,
            onnx_path,
        )
        plots = [run_dir / "evaluation" / name for name in evaluation.plots]
        summary["published_version"] = publish(repository, model_name, onnx_path, card, plots)
        log(f"published {model_name} version {summary['published_version']} in {repository}")
    _write_json(run_dir / "summary.json", summary)
    return summary


def _card(
    config, model, training, data_report, evaluation, parity, latency, gate, onnx_path
) -> dict[str, Any]:
    import onnxruntime
    import openvino
    import timm

    description = (
        f"{data_report['source']}: {data_report['train_images']} train / {data_report['val_images']} val / "
        f"{data_report['test_images']} test images"
    )
    rule = None
    if config.data.kind == "procedural":
        module = sys.modules.get(f"datagen.{config.data.generator}")
        rule = (module.__doc__ or "").strip() if module else None
    return {
        "task": "classification",
        "backbone": config.model.encoder,
        "model_options": config.model.options,
        "pretrained": False,
        "params": parameter_count(model),
        "input_size": list(config.input_size),
        "input": {
            "name": "images",
            "dtype": "uint8",
            "shape": [-1, *config.input_size, 3],
            "layout": "NHWC RGB",
        },
        "output": {"name": "probabilities", "dtype": "float32", "shape": [-1, len(config.classes)]},
        "classes": list(config.classes),
        "normalisation": {"in_graph": True, "softmax_in_graph": True},
        "data": {
            "description": description,
            "rule": rule,
            **{k: v for k, v in data_report.items() if k != "source"},
        },
        "training": {k: v for k, v in training.items() if k != "curve"},
        "evaluation": evaluation,
        "parity": parity,
        "latency_batch1": latency,
        "gate": gate,
        "config": config.to_dict(),
        "onnx": {"opset": config.export.opset, **file_digest(onnx_path)},
        "versions": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.__version__,
        },
        "created": now(),
    }


def record_results(path: Path, summary: dict[str, Any]) -> None:
    """Merge this run's held-out figures and bare-engine latency into ``path`` under the model's name."""
    evaluation, training = summary["evaluation"], summary["training"]
    entry = {
        "version": summary["published_version"],
        "gate_passed": summary["gate"]["passed"],
        "test_images": evaluation["images"],
        "accuracy": evaluation["accuracy"],
        "macro_f1": evaluation["macro_f1"],
        "per_class_f1": {name: row["f1"] for name, row in evaluation["per_class"].items()},
        "train_s": training["train_s"],
        "steps": training["steps"],
        "images_seen": training["images_seen"],
        "threads": training["threads"],
        "parity": summary["parity"],
        "latency_batch1_ms": {
            name: {"min": value["min_ms"], "median": value["median_ms"], "p95": value["p95_ms"]}
            for name, value in summary["latency_batch1"].items()
        },
        "run_dir": summary["run_dir"],
    }
    if evaluation["binary"]:
        binary = evaluation["binary"]
        entry |= {
            "roc_auc": binary["roc_auc"],
            "average_precision": binary["average_precision"],
            "threshold": binary["threshold"],
            "threshold_chosen_on": binary["threshold_chosen_on"],
            "accuracy_at_threshold": binary["at_threshold"]["accuracy"],
        }
    path = Path(path)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.setdefault("models", {})[summary["model_name"]] = entry
    results["measured"] = now()
    results["note"] = (
        "Held-out test split of procedural data; latency is the bare engine (OnnxEngine of "
        "model_repository/onnx_runner.py) at batch 1 on the shared 2-core machine while others ran."
    )
    _write_json(path, results)


def _write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.classification.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", type=Path, required=True, help="a classification config (YAML)")
    parser.add_argument("--run-dir", type=Path, required=True, help="where the run's files go")
    parser.add_argument("--repository", type=Path, default=None, help="the Triton model repository")
    parser.add_argument("--publish", action="store_true", help="publish the next version if the gate passes")
    parser.add_argument("--results", type=Path, default=None, help="merge held-out figures into this JSON")
    args = parser.parse_args(argv)
    try:
        config = ClassifierConfig.load(args.config)
        summary = run(
            config, args.run_dir, args.repository, args.publish, log=lambda line: print(line, flush=True)
        )
    except (ConfigError, DatasetError, ContractError, PublishError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if summary["gate"]["passed"] else 3


if __name__ == "__main__":
    sys.exit(main())
