"""Retraining on feedback: ``prodseg retrain --model M``, the loop from users' corrections to ``staging``.

1. Snapshot the model's feedback (the gateway's ``feedback/<model>/``) into a DVC data version
   (:mod:`training.data_versions`) and check that version out into the run directory: the run
   trains on a named, restorable data version, not on a folder that keeps changing.
2. Nothing to do (exit 0, no version) when no correction arrived after the newest published version
   was made: the same rule as the gateway's ``min_new_labels`` trigger.
3. Split the corrections, deterministically by entry id, into feedback-train and a feedback hold-out
   (``holdout`` of them, at least :data:`MIN_HOLDOUT`). An entry's side depends on its id alone, so
   it stays there as feedback grows and a held-out image is not trained on by a later retrain (only
   while the fraction gives fewer than MIN_HOLDOUT are the lowest hashes borrowed to make up the number).
4. Train on the config's base data plus feedback-train. Feedback examples are repeated until they are
   about as many as the base training images (at most :data:`MAX_REPEAT` times): a few dozen
   corrections would otherwise be drowned by hundreds of base images.
   Warm start: production's whole trained network (encoder, decoder and head, every task) is the
   run's ``initial_weights`` (:func:`training.train.train`), so training begins at production's
   accuracy (``initial_val_score`` in the log). The weights are the version's ``weights.pt``, kept
   beside its ``model.onnx`` when it was published (and in MLflow with its files), else the
   checkpoint of the run that trained it when that run directory is on this machine. Fine-tuning is
   the default because corrections are few: it keeps what production learnt and needs fewer steps.
   Without weights (a version published before weights were kept, trained elsewhere) or when the
   config builds another network, the run trains from scratch on the same data, and says so.
5. The pipeline's own stages export, check parity and evaluate on the base test split, gated
   against production re-scored on it (``gate.max_regression``); then candidate AND production are
   scored on the feedback hold-out, and the candidate must beat production there. Both checks go
   into ``gate.json``, which publishing reads.
6. Publish and register the version (its lineage names base data + the feedback data version),
   and move ``staging`` to it. ``production`` never moves here: ``prodseg promote`` does that.

Everything the loop decided is in ``<run dir>/retrain.json`` and printed as a log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training import registry
from training.config import PROJECT_ROOT, PipelineConfig
from training.data_versions import DataVersionError, DataWorkspace, data_lineage
from training.datasets import DataSpec, write_json_atomically
from training.pipeline import (
    RunDir,
    evaluate_stage,
    export_stage,
    open_tracker,
    prepare_data,
    promote_stage,
    publish_stage,
    record_lineage,
    repository_of,
    train_stage,
)
from training.tasks import DataSplits

MIN_HOLDOUT = 3  # fewer held-out images say nothing about "beats production"
MAX_REPEAT = 10  # feedback repeats at most this often in the training set
RETRAIN_ALIAS = "staging"  # a retrain stops here; production moves only by `prodseg promote`


class NothingToRetrain(Exception):
    """No correction to learn from (none yet, none new, or too few to hold some out): exit 0."""


@dataclass(frozen=True)
class RetrainResult:
    run_dir: Path
    log: dict[str, Any]  # what retrain.json holds
    version: int | None  # None: the gate refused the candidate


def default_run_dir(model: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return PROJECT_ROOT / "out" / "runs" / f"retrain-{model}-{stamp}"


def training_config_for(model: str) -> Path | None:
    """The config in training/configs/ that names ``model`` (tiny.yaml, a test config, excluded)."""
    import yaml

    for path in sorted((PROJECT_ROOT / "training" / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        named = raw.get("model_name") or (raw.get("publish") or {}).get("model_name")
        if path.name != "tiny.yaml" and named == model:
            return path
    return None


# ------------------------------------------------------------------------------------------ the loop


def retrain(
    config: PipelineConfig,
    feedback_root: Path | None = None,
    holdout: float = 0.3,
    run_dir: Path | None = None,
    workspace: DataWorkspace | None = None,
    progress: Any = None,
) -> RetrainResult:
    """Run the loop of the module's docstring; :class:`NothingToRetrain` when there is nothing to learn."""
    if not 0 < holdout < 1:
        raise ValueError(f"--holdout must be a fraction in (0, 1), got {holdout}")
    model = config.publish.model_name
    assert model is not None  # the config requires it
    contract = config.contract()
    repository = repository_of(config)
    workspace = workspace or DataWorkspace()
    run = RunDir(Path(run_dir or default_run_dir(model)))
    if run.root.exists() and any(run.root.iterdir()):
        raise ValueError(f"{run.root} exists and is not empty: give another --run-dir")

    # 1-2. The data version, and whether it holds anything new.
    try:
        snapshot = workspace.snapshot(model, feedback_root, message=f"prodseg retrain --model {model}")
    except DataVersionError as error:
        raise NothingToRetrain(str(error)) from None
    if snapshot.version is None:
        raise NothingToRetrain(f"{model} has no complete feedback entries yet")
    data_version = snapshot.version
    checkout = run.root / "feedback"
    try:
        workspace.checkout(model, str(data_version.number), checkout)
        corrections = _corrections(checkout)
        latest = _latest_version(repository, model)
        new = [r for r in corrections if latest is None or r["created_at"] > latest[1]]
        if not new:
            since = f"version {latest[0]} was made" if latest else "ever"
            raise NothingToRetrain(
                f"no corrections of {model} since {since} ({len(corrections)} in {data_version.id}, "
                "all older): nothing to retrain on"
            )
        train_ids, holdout_ids = split_holdout([r["id"] for r in corrections], holdout)
    except NothingToRetrain:
        shutil.rmtree(run.root, ignore_errors=True)  # no run happened: leave no run directory
        raise

    # 3-4. Warm start, data, training.
    initial_weights, warm_start = _warm_start(config, contract, repository, model)
    adapter = config.adapter
    feedback_train = _feedback_split(config, contract, checkout, train_ids, run.root / "feedback-train")
    feedback_holdout = _feedback_split(config, contract, checkout, holdout_ids, run.root / "feedback-holdout")
    _write_lineage(config, run, checkout)
    with open_tracker(config, run) as tracker:
        tracker.set_tags({"retrain": "true", "feedback_version": data_version.id})
        base = prepare_data(config, run, contract, tracker, progress)
        repeat = max(1, min(MAX_REPEAT, round(len(base.train) / len(feedback_train))))
        train_set = Concatenated([base.train, *[feedback_train] * repeat])
        splits = DataSplits(train_set, base.val, base.test, base.report)
        feedback = {
            "data_version": data_version.id,
            "data_version_created": snapshot.created,
            "entries": data_version.entries,
            "corrections": len(corrections),
            "new_since_last_version": len(new),
            "last_version": None if latest is None else latest[0],
            "train": len(train_ids),
            "holdout": len(holdout_ids),
            "holdout_ids": holdout_ids,
            "train_repeat": repeat,
            "base_train_images": len(base.train),
        }
        data_json = json.loads(run.data_json.read_text())
        write_json_atomically(run.data_json, {**data_json, "feedback": feedback})
        tracker.log_metrics({f"feedback/{k}": v for k, v in feedback.items() if isinstance(v, int)})

        trained = train_stage(
            config, run, contract, splits, tracker, progress, initial_weights=initial_weights
        )
        export_stage(config, run, contract, splits, trained.model, tracker)
        # 5. The base test split, gated against production by the pipeline; then the hold-out.
        evaluation, decision = evaluate_stage(config, run, contract, splits, tracker)
        scored = _score_holdout(config, contract, repository, model, run, feedback_holdout)
        gate = _gate_with_holdout(run, decision.to_dict(), scored)
        tracker.log_metrics(
            {"holdout/candidate": scored["candidate"], "gate/passed": float(gate["passed"])}
            | ({} if scored["production"] is None else {"holdout/production": scored["production"]})
        )

        # 6. Publish, register, staging.
        version, aliases = None, []
        if gate["passed"]:
            version = publish_stage(config, run, contract, tracker)
            staged = dataclasses.replace(
                config, publish=dataclasses.replace(config.publish, promote=RETRAIN_ALIAS)
            )
            change = promote_stage(staged, version, tracker)
            aliases.append({"alias": change.alias, "from": change.previous, "to": change.version})
        production = registry.alias_version(repository, registry.SERVED_ALIAS, model)
        log = {
            "model": model,
            "run_dir": str(run.root),
            "mlflow_run_id": tracker.run_id,
            "feedback": feedback,
            "data_version": json.loads(run.data_json.read_text())["lineage"]["data_version"]["id"],
            "warm_start": warm_start,
            "train": {
                "steps": trained.summary.steps,
                "train_images": trained.summary.train_images,
                "initial_val_score": trained.summary.initial_val_score,  # production's, when warm
                "val_score": trained.summary.val_score,
            },
            "gate": {
                "passed": gate["passed"],
                "metric": adapter.headline,
                "base_test": {
                    "images": evaluation.images,
                    "candidate": evaluation.metrics()[adapter.headline],
                    "production": _baseline_score(gate, adapter.headline),
                    "production_version": (gate.get("baseline") or {}).get("version"),
                    "max_regression": config.gate.max_regression,
                },
                "feedback_holdout": scored,
                "checks": gate["checks"],
                "reasons": gate["reasons"],
            },
            "version": version,
            "aliases": aliases,
            "production": production,  # unchanged by a retrain
        }
        write_json_atomically(run.root / "retrain.json", log)
        tracker.log_artifact(run.root / "retrain.json", "retrain")
    return RetrainResult(run.root, log, version)


# ------------------------------------------------------------------------------------- feedback data


def _corrections(checkout: Path) -> list[dict[str, Any]]:
    """The entries of a checked-out feedback version that correct a prediction (not bare verdicts)."""
    index = checkout / "index.jsonl"
    records = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    return [record for record in records if record.get("kind") == "correction"]


def split_holdout(ids: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train ids, hold-out ids): an id is held out when its hash falls below ``fraction``; when that
    leaves fewer than MIN_HOLDOUT, the lowest hashes make up the number. Both lists sorted."""
    if len(ids) < MIN_HOLDOUT + 1:
        raise NothingToRetrain(
            f"{len(ids)} corrections are too few: {MIN_HOLDOUT} are held out to compare with "
            "production and at least one is trained on"
        )
    position = {i: int.from_bytes(hashlib.sha256(f"holdout/{i}".encode()).digest()[:8]) / 2**64 for i in ids}
    ranked = sorted(ids, key=position.__getitem__)
    held = [i for i in ranked if position[i] < fraction]
    held = held if len(held) >= MIN_HOLDOUT else ranked[:MIN_HOLDOUT]
    held = held[: len(ids) - 1]  # something is always left to train on
    return sorted(set(ids) - set(held)), sorted(held)


def _feedback_split(
    config: PipelineConfig, contract: Any, checkout: Path, ids: Sequence[str], folder: Path
) -> Sequence[Any]:
    """The entries ``ids`` as one dataset, read by the task's own folder loader.

    The feedback layout is each task's public folder layout (gateway/feedback.py), so a folder
    holding just these entries' files is a dataset the adapter reads like any ``kind: folder`` data.
    """
    wanted = set(ids)
    records = [r for r in _corrections(checkout) if r["id"] in wanted]
    names = {name for record in records for name in record["files"]}
    if (checkout / "data.yaml").is_file():
        names.add("data.yaml")  # detection: the YOLO class names
    for name in sorted(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkout / name, folder / name)
    spec = DataSpec(kind="folder", root=folder, seed=0, val_fraction=0.0, test_fraction=0.0)
    only = dataclasses.replace(config, data=spec)
    return config.adapter.build_splits(only, contract, folder.parent).train


class Concatenated:
    """Several datasets read as one, in order (what the trainer loads into memory once)."""

    def __init__(self, parts: Sequence[Sequence[Any]]) -> None:
        self.parts = [part for part in parts if len(part)]
        self.num_classes = getattr(self.parts[0], "num_classes", None) if self.parts else None

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        for part in self.parts:
            if index < len(part):
                return part[index]
            index -= len(part)
        raise AssertionError("unreachable")


def _write_lineage(config: PipelineConfig, run: RunDir, checkout: Path) -> None:
    """data.json's lineage before the pipeline's prepare_data runs (it keeps an existing one): the
    base data (its base data version when one is tracked) and the feedback version the checkout
    holds, recognised by content."""
    base = record_lineage(config)
    feedback = data_lineage("feedback", [checkout])
    data_version = {
        "id": f"{base['data_version']['id']} + {feedback['id']}",
        "kind": f"{base['data_version']['kind']}+feedback",
        "sources": base["data_version"]["sources"] + feedback["sources"],
        "base_version": base["data_version"]["base_version"],
        "feedback_version": feedback["feedback_version"],
    }
    write_json_atomically(run.data_json, {"lineage": {**base, "data_version": data_version}})


# ------------------------------------------------------------------------------------------ versions


def _latest_version(repository: Path, model: str) -> tuple[int, float] | None:
    """(newest published version, when its card was made as a Unix time); None when none is."""
    published = registry.versions(repository, model)
    if not published:
        return None
    card = registry.read_card(repository, published[-1], model)
    created = card.get("created")
    when = (
        dt.datetime.fromisoformat(created).timestamp()
        if created
        else (repository / model / str(published[-1])).stat().st_mtime
    )
    return published[-1], when


def _warm_start(
    config: PipelineConfig, contract: Any, repository: Path, model: str
) -> tuple[Path | None, dict[str, Any]]:
    """Production's trained network as the run's initial weights, when it can be had and the config
    builds the same network: (weights file or None, what the log says about it)."""
    from training.train import CheckpointError, read_weights

    found = registry.baseline(repository, config.gate.baseline, model)
    if found is None:
        return None, {"from": None, "reason": "no published version: trained from scratch"}
    version = found[0]
    try:
        weights = _weights_of(repository, model, version)
        state = read_weights(weights)
    except (LookupError, OSError, CheckpointError) as error:
        return None, {"from": None, "reason": f"version {version}'s weights: {error}; trained from scratch"}
    wanted = {**config.to_dict()["model"], "encoder_weights": None}
    built = {**state.get("model_spec", {}), "encoder_weights": None}
    if built != wanted or state.get("num_classes") != contract.num_classes:
        reason = (
            f"version {version} is {built} with {state.get('num_classes')} classes, the config builds "
            f"{wanted} with {contract.num_classes}; trained from scratch"
        )
        return None, {"from": None, "reason": reason}
    return weights, {"from": version, "weights": str(weights)}


def _weights_of(repository: Path, model: str, version: int) -> Path:
    """A published version's torch weights: the ``weights.pt`` kept with it, else the checkpoint of
    the run that trained it (versions published before weights were kept)."""
    from training.train import WEIGHTS_FILE

    kept = repository / model / str(version) / WEIGHTS_FILE
    if kept.is_file():
        return kept
    try:
        return _checkpoint_of(registry.read_card(repository, version, model))
    except (LookupError, registry.RegistryError) as error:
        raise LookupError(f"no {WEIGHTS_FILE} in {kept.parent}, and {error}") from None


def _checkpoint_of(card: dict[str, Any]) -> Path:
    """The training checkpoint behind a model card: MLflow run (card) -> run directory (tag)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    tracked = card.get("mlflow") or {}
    if not tracked.get("run_id"):
        raise LookupError("the model card names no MLflow run")
    store = str(tracked["tracking_uri"]).removeprefix("sqlite:///")
    if store != tracked["tracking_uri"] and not Path(store).is_file():
        raise LookupError(f"its MLflow store {store} is not on this machine")  # asking would create one
    try:
        run = MlflowClient(tracked["tracking_uri"]).get_run(tracked["run_id"])
    except MlflowException as error:
        raise LookupError(f"MLflow run {tracked['run_id']}: {error.message}") from None
    run_dir = run.data.tags.get("run_dir")
    if not run_dir:
        raise LookupError(f"MLflow run {tracked['run_id']} names no run directory")
    checkpoint = RunDir(Path(run_dir)).checkpoint
    if not checkpoint.is_file():
        raise LookupError(f"{checkpoint} is gone")
    return checkpoint


# ---------------------------------------------------------------------------------------------- gate


def _score_holdout(
    config: PipelineConfig, contract: Any, repository: Path, model: str, run: RunDir, holdout: Sequence[Any]
) -> dict[str, Any]:
    """The headline metric of the candidate and of the baseline version on the feedback hold-out."""
    from training.export import engine_predictor

    adapter, spec = config.adapter, config.evaluate

    def score(onnx: Path) -> float:
        predict = engine_predictor(onnx)
        scored = adapter.evaluate(
            predict, holdout, contract, "onnxruntime", worst_k=0, batch_size=spec.batch_size
        )
        return scored.metrics()[adapter.headline]

    found = registry.baseline(repository, config.gate.baseline, model)
    production = None if found is None else score(repository / model / str(found[0]) / "model.onnx")
    return {
        "images": len(holdout),
        "candidate": score(run.onnx),
        "production": production,
        "production_version": None if found is None else found[0],
    }


def _gate_with_holdout(run: RunDir, decision: dict[str, Any], scored: dict[str, Any]) -> dict[str, Any]:
    """gate.json with the hold-out check added: the candidate must beat production there."""
    ours, theirs = scored["candidate"], scored["production"]
    if theirs is None:
        ok, text = True, "feedback hold-out: no published version to compare with (first version)"
    else:
        ok = ours > theirs
        text = (
            f"feedback hold-out {ours:.4f} > v{scored['production_version']} {theirs:.4f} "
            f"on the same {scored['images']} held-out corrections"
        )
    gate = json.loads(run.gate_json.read_text())
    gate["checks"] = [*decision["checks"], f"{'ok' if ok else 'FAILED'}: {text}"]
    gate["reasons"] = [*decision["reasons"], *([] if ok else [f"failed: {text}"])]
    gate["passed"] = decision["passed"] and ok
    gate["feedback_holdout"] = scored
    write_json_atomically(run.gate_json, gate)
    return gate


def _baseline_score(gate: dict[str, Any], metric: str) -> float | None:
    baseline = gate.get("baseline")
    if not baseline:
        return None
    value = baseline["evaluation"].get(metric)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
