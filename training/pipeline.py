"""The training pipeline: data -> train -> export + parity -> evaluate -> gate -> publish -> promote.

One pipeline for every task: each stage calls the config's task adapter (:mod:`training.tasks`)
for what differs between segmentation, detection and classification. Each stage is a function over
a *run directory* that reads what earlier stages wrote there, so
``prodseg pipeline`` runs them all and ``prodseg train|export|evaluate|publish`` run one each on the
same directory. All of them log into one MLflow run, whose id ``run.json`` keeps.

    <run dir>/run.json                tracking URI and MLflow run id
              data.json               the data spec, split sizes, the bootstrap report (SKU-110K)
              bootstrap/              SKU-110K boxes labelled into the folder format (resumable)
              checkpoints/last.pt     the resumable training checkpoint
              train.json              the training summary
              model.onnx, parity.json the serving graph and its agreement with PyTorch
              openvino/               model.xml + model.bin (export.openvino_ir)
              evaluation/             evaluation.json and the task's plots (segmentation:
                                      confusion.png, worst/NN_<name>.png)
              gate.json               the gate's checks and the baseline's evaluation

Every file is written with :mod:`clients.atomic`, so an interrupted stage leaves the previous
complete file or none.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.contract import ModelContract, default_repository
from training import registry
from training.config import PROJECT_ROOT, PipelineConfig
from training.datasets import write_json_atomically
from training.evaluate import Baseline, GateResult, gate
from training.export import ParityResult, check_parity, engine_predictor, export_onnx, export_openvino
from training.tasks import DataSplits, Evaluation
from training.tracking import Tracker, tracking_uri
from training.train import WEIGHTS_FILE, TrainResult, TrainSummary, load_trained_model, save_weights, train

RUNNER = "onnx_runner.py"  # the one python-backend runner, at the repository's root


class PipelineError(ValueError):
    """A stage that cannot run yet or any more; the message says what to do."""


class GateRefused(Exception):
    """Publishing a model the quality gate refused; the message lists the failed checks."""


@dataclass(frozen=True)
class RunDir:
    root: Path

    checkpoint = property(lambda self: self.root / "checkpoints" / "last.pt")
    run_json = property(lambda self: self.root / "run.json")
    data_json = property(lambda self: self.root / "data.json")
    bootstrap = property(lambda self: self.root / "bootstrap")
    train_json = property(lambda self: self.root / "train.json")
    onnx = property(lambda self: self.root / "model.onnx")
    parity_json = property(lambda self: self.root / "parity.json")
    openvino = property(lambda self: self.root / "openvino")
    evaluation = property(lambda self: self.root / "evaluation")
    gate_json = property(lambda self: self.root / "gate.json")

    def require(self, path: Path, produced_by: str) -> Path:
        if not path.is_file():
            raise PipelineError(f"{path} is missing: run `prodseg {produced_by}` on {self.root} first")
        return path

    def read(self, path: Path, produced_by: str) -> dict[str, Any]:
        return json.loads(self.require(path, produced_by).read_text())


def default_run_dir(config: PipelineConfig) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return PROJECT_ROOT / "out" / "runs" / f"{Path(config.source).stem}-{stamp}"


def repository_of(config: PipelineConfig) -> Path:
    return Path(config.publish.repository or default_repository())


def seed_repository(config: PipelineConfig, source: Path | None = None) -> bool:
    """Give an empty target repository the configs, labels and runner of this checkout's model.

    For a fresh repository on a datastore (Azure ML output): publishing needs ``config.pbtxt`` (the
    contract) and the runner the versions link to (``onnx_runner.py`` at the repository's root, and
    ``<model>/model.py -> ../onnx_runner.py``). Returns False if already there.
    """
    repository = repository_of(config)
    assert config.publish.model_name is not None  # the config requires it
    model_dir = repository / config.publish.model_name
    if (model_dir / "config.pbtxt").is_file():
        return False
    checkout = Path(source or default_repository())
    origin = checkout / config.publish.model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    if not (repository / RUNNER).exists():
        shutil.copy2(checkout / RUNNER, repository / RUNNER)
    if not (model_dir / "model.py").exists():
        os.symlink(os.path.join("..", RUNNER), model_dir / "model.py")
    for name in ("labels.txt", "configs", "config.pbtxt"):  # the contract last
        source_path, target = origin / name, model_dir / name
        if source_path.is_dir():
            shutil.copytree(source_path, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source_path, target)
    return True


def open_tracker(config: PipelineConfig, run: RunDir, start: bool = True) -> Tracker:
    """The run directory's MLflow run: reopened from ``run.json``, or (``start``) a new one with the
    config as params. Later stages pass ``start=False``: a directory ``prodseg train`` never made
    holds nothing to export, evaluate or publish, and gets no MLflow run either."""
    if not start:
        run.require(run.run_json, "train")
    if run.run_json.is_file():
        from mlflow.exceptions import MlflowException

        info = json.loads(run.run_json.read_text())
        try:
            return Tracker(info["tracking_uri"], config.tracking.experiment, run_id=info["run_id"])
        except MlflowException as error:
            raise PipelineError(
                f"{run.run_json}: cannot reopen MLflow run {info['run_id']}: {error}"
            ) from None
    tracker = Tracker.open(config.tracking, run_name=run.root.name)
    write_json_atomically(
        run.run_json, {"tracking_uri": tracking_uri(config.tracking), "run_id": tracker.run_id}
    )
    tracker.log_params(config.to_dict())
    tracker.set_tags({"config": config.source, "run_dir": str(run.root)})
    return tracker


# ------------------------------------------------------------------------------------------ stages


def prepare_data(
    config: PipelineConfig,
    run: RunDir,
    contract: ModelContract,
    tracker: Tracker | None = None,
    progress: Any = None,
) -> DataSplits:
    """The splits of the config's data, built by the task's adapter; data.json records them and the
    run's lineage (kept from the first stage that wrote it: the data and code the run trained on)."""
    splits = config.adapter.build_splits(config, contract, run.root, progress)
    sizes = {f"{name}_images": len(getattr(splits, name)) for name in ("train", "val", "test")}
    earlier = json.loads(run.data_json.read_text()) if run.data_json.is_file() else {}
    lineage = earlier.get("lineage") or record_lineage(config)
    write_json_atomically(
        run.data_json, {"spec": config.to_dict()["data"], **sizes, **splits.report, "lineage": lineage}
    )
    if tracker is not None:
        tracker.set_tags(lineage_tags(lineage))
        tracker.log_params(lineage_params(lineage))
        numbers = {f"data/{k}": v for k, v in sizes.items()}
        for section, values in splits.report.items():  # e.g. bootstrap/<count>, skipped files
            if isinstance(values, dict):
                numbers |= {f"{section}/{k}": v for k, v in values.items() if _number(v)}
            elif isinstance(values, list):
                numbers[f"data/{section}"] = len(values)
        tracker.log_metrics(numbers)
    return splits


def record_lineage(config: PipelineConfig) -> dict[str, Any]:
    """The data version a run trains on and the code commit that trains it (training/data_versions.py).

    A folder or SKU-110K set is named by its base data version (``prodseg data track``) or feedback
    version when its content is one, else by its DVC md5 when DVC tracks it; procedural data by its
    base data version when one was tracked from the same recipe, else by generator, seed and sizes."""
    from training.data_versions import code_commit, config_lineage

    return {"data_version": config_lineage(config), "code_commit": code_commit()}


def lineage_params(lineage: dict[str, Any]) -> dict[str, str]:
    """MLflow params naming the run's base and feedback data versions ("none" where there is none)."""
    data_version = lineage["data_version"]
    return {
        f"data_version.{part}": data_version.get(f"{part}_version") or "none" for part in ("base", "feedback")
    }


def lineage_tags(lineage: dict[str, Any]) -> dict[str, Any]:
    """MLflow tags naming the data version and the code commit (MLflow's own git tag included)."""
    commit = lineage["code_commit"]
    tags = {"data_version": lineage["data_version"]["id"], "code_dirty": commit["dirty"]}
    if commit["commit"]:
        tags |= {"code_commit": commit["commit"], "mlflow.source.git.commit": commit["commit"]}
    return tags


def train_stage(
    config: PipelineConfig,
    run: RunDir,
    contract: ModelContract,
    splits: DataSplits,
    tracker: Tracker | None = None,
    progress: Any = None,
    resume: bool = False,
    initial_weights: Path | None = None,
) -> TrainResult:
    """Train into the run directory's checkpoint; ``initial_weights``: a warm start (see :func:`train`)."""
    if resume and not run.checkpoint.is_file():
        raise PipelineError(f"--resume: {run.checkpoint} does not exist")
    if not resume and run.checkpoint.is_file():
        raise PipelineError(
            f"{run.checkpoint} exists: pass --resume to continue it, or use another --run-dir"
        )
    result = train(
        config,
        contract,
        splits.train,
        splits.val,
        checkpoint=run.checkpoint,
        resume=run.checkpoint if resume else None,
        tracker=tracker,
        progress=progress,
        initial_weights=initial_weights,
    )
    write_json_atomically(run.train_json, result.to_dict())
    if tracker is not None:
        tracker.log_metrics({f"summary/{k}": v for k, v in result.to_dict().items() if _number(v)})
    return result


def export_stage(
    config: PipelineConfig,
    run: RunDir,
    contract: ModelContract,
    splits: DataSplits,
    model: Any = None,
    tracker: Tracker | None = None,
) -> ParityResult:
    """ONNX (+ OpenVINO IR) of the trained model and its parity on held-out test images, under ONNX
    Runtime and under the engine the served cpu config runs (the serving runner's OnnxEngine)."""
    adapter = config.adapter
    if model is None:
        model = load_trained_model(run.require(run.checkpoint, "train"), contract)
    export_onnx(model, run.onnx, contract, adapter, config.export.opset)
    parity = check_parity(
        model, run.onnx, splits.test, contract, adapter, repository_of(config), config.export.parity_images
    )
    if config.export.openvino_ir:
        export_openvino(run.onnx, run.openvino)
    write_json_atomically(run.parity_json, parity.to_dict())
    if tracker is not None:
        tracker.log_metrics({"parity/onnxruntime": parity.onnxruntime, "parity/served": parity.served})
        tracker.log_artifact(run.onnx, "model")
    return parity


def evaluate_stage(
    config: PipelineConfig,
    run: RunDir,
    contract: ModelContract,
    splits: DataSplits,
    tracker: Tracker | None = None,
) -> tuple[Evaluation, GateResult]:
    """Score the exported ONNX (what ships) on the test split, and gate it against the config and
    the baseline version re-scored on the same images."""
    adapter = config.adapter
    onnx_path = run.require(run.onnx, "export")
    spec = config.evaluate
    result = adapter.evaluate(
        engine_predictor(onnx_path),
        splits.test,
        contract,
        "onnxruntime",
        run.evaluation,
        spec.worst_k,
        spec.batch_size,
    )
    parity = _read_parity(run)
    base = None
    model_name = contract.model_name
    found = registry.baseline(repository_of(config), config.gate.baseline, model_name)
    if found is not None:
        version, alias = found
        base_onnx = repository_of(config) / model_name / str(version) / "model.onnx"
        scored = adapter.evaluate(
            engine_predictor(base_onnx),
            splits.test,
            contract,
            "onnxruntime",
            worst_k=0,
            batch_size=spec.batch_size,
        )
        base = Baseline(version, alias, scored)
    decision = gate(adapter, result, parity, config.gate, base)
    write_json_atomically(
        run.gate_json,
        {**decision.to_dict(), "baseline": None if base is None else _baseline_dict(base)},
    )
    if tracker is not None:
        tracker.log_metrics({**result.metrics("test"), "gate/passed": float(decision.passed)})
        if base is not None:
            tracker.log_metrics(base.evaluation.metrics(f"baseline_v{base.version}"))
        tracker.log_artifact(run.evaluation, "evaluation")
        tracker.log_artifact(run.gate_json, "evaluation")
    return result, decision


def _read_parity(run: RunDir) -> ParityResult | None:
    """parity.json of this run; None when missing or written by an older pipeline (export again)."""
    if not run.parity_json.is_file():
        return None
    try:
        return ParityResult(**json.loads(run.parity_json.read_text()))
    except TypeError:
        return None


def publish_stage(
    config: PipelineConfig, run: RunDir, contract: ModelContract, tracker: Tracker | None = None
) -> int:
    """Publish the run's model as the next version; refused unless the gate passed."""
    decision = run.read(run.gate_json, "evaluate")
    if not decision["passed"]:
        raise GateRefused("the quality gate refused this model: " + "; ".join(decision["reasons"]))
    summary = run.read(run.train_json, "train")
    evaluation = run.read(run.evaluation / "evaluation.json", "evaluate")
    lineage = run.read(run.data_json, "train").get("lineage") or {}
    card = registry.model_card(
        contract=contract,
        model=config.to_dict()["model"],
        params=summary["params"],
        data=run.read(run.data_json, "train"),
        training={
            **summary,
            **{
                k: v for k, v in config.to_dict().items() if k in ("loss", "optimizer", "schedule", "augment")
            },
            "seed": config.train.seed,
            "threads": config.train.threads,
        },
        evaluation=evaluation,
        parity=run.read(run.parity_json, "export"),
        onnx_path=run.onnx,
        opset=config.export.opset,
        gate=decision,
        config_file=config.source,
        mlflow=json.loads(run.run_json.read_text()) if run.run_json.is_file() else None,
        data_version=lineage.get("data_version"),
        code_commit=lineage.get("code_commit"),
        **config.adapter.card(evaluation),
    )
    extra = sorted(run.openvino.glob("model.*")) if config.export.openvino_ir else []
    if run.checkpoint.is_file():  # the torch weights, kept with the version for warm starts (retrain)
        save_weights(run.checkpoint, run.root / WEIGHTS_FILE)
        extra.append(run.root / WEIGHTS_FILE)
    version = registry.publish(run.onnx, card, repository_of(config), config.publish.model_name, extra)
    if tracker is not None:
        tracker.set_tags({"published_version": version})
        version_dir = repository_of(config) / config.publish.model_name / str(version)
        tracker.log_artifact(version_dir / "model_card.json", "model")
        tracker.log_artifact(version_dir / "MODEL_CARD.md", "model")
    return version


def promote_stage(
    config: PipelineConfig, version: int, tracker: Tracker | None = None
) -> registry.AliasChange:
    alias = config.publish.promote
    assert alias is not None
    assert config.publish.model_name is not None  # the config requires it
    change = registry.promote(
        repository_of(config), config.publish.model_name, version, alias, config.publish.triton_url
    )
    if tracker is not None:
        tracker.set_tags({f"alias.{alias}": version})
    return change


# ---------------------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class PipelineResult:
    run_dir: Path
    run_id: str
    train: TrainSummary
    parity: ParityResult
    evaluation: Evaluation
    gate: GateResult
    version: int | None  # None: the gate refused the model
    promoted: registry.AliasChange | None


def run_pipeline(
    config: PipelineConfig,
    run_dir: Path | None = None,
    resume: bool = False,
    progress: Any = None,
    initial_weights: Path | None = None,
) -> PipelineResult:
    """Every stage in order, tracked in one MLflow run; stops before publishing if the gate refuses.

    ``initial_weights``: fine-tune from a trained network of the same architecture (a published
    version's ``weights.pt``) instead of random init."""
    contract = config.contract()
    run = RunDir(Path(run_dir or default_run_dir(config)))
    with open_tracker(config, run) as tracker:
        splits = prepare_data(config, run, contract, tracker, progress)
        trained = train_stage(
            config, run, contract, splits, tracker, progress, resume, initial_weights=initial_weights
        )
        parity = export_stage(config, run, contract, splits, trained.model, tracker)
        evaluation, decision = evaluate_stage(config, run, contract, splits, tracker)
        version = promoted = None
        if decision.passed:
            version = publish_stage(config, run, contract, tracker)
            if config.publish.promote:
                promoted = promote_stage(config, version, tracker)
        return PipelineResult(
            run.root, tracker.run_id, trained.summary, parity, evaluation, decision, version, promoted
        )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _baseline_dict(base: Baseline) -> dict[str, Any]:
    return {"version": base.version, "alias": base.alias, "evaluation": base.evaluation.to_dict()}
