"""``prodseg`` commands for training, evaluation, export, engines and the model registry.

``prodseg pipeline`` runs every stage of :mod:`training.pipeline` from one config; ``train``,
``export``, ``evaluate`` and ``publish`` run one stage each on a run directory, in that order;
``promote``/``rollback`` move an MLflow alias, ``deploy`` serves an alias's version from the
repository (``registry sync`` registers what a fresh clone has on disk); ``build-engine`` builds
TensorRT plans on a GPU machine; ``azureml-job`` writes (and optionally submits) the Azure ML job of a config.

Exit codes: 0 done, 1 the quality gate refused the model, 2 bad input (one line on stderr, no
traceback). Only typer and the standard library are imported at load time: the rest inside commands.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from training.config import PipelineConfig
    from training.evaluate import GateResult
    from training.registry import AliasChange, Deployment
    from training.tasks import Evaluation

# Required: a config names the model and its task, and no model is the default.
ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="training config (YAML), e.g. training/configs/crack.yaml")
]
ModelOption = Annotated[str, typer.Option("--model", "-m", help="the model's name (its repository folder)")]
RunDirOption = Annotated[Path, typer.Option(help="the run directory the stages share")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a config key, e.g. --set train.steps=100 (repeatable)"),
]
DataRootOption = Annotated[
    Path | None, typer.Option(help="replace data.root (a folder dataset, or the SKU-110K folder)")
]
RepositoryOption = Annotated[
    Path | None, typer.Option(help="model repository (default: the config's, else this checkout's)")
]
AliasOption = Annotated[str, typer.Option(help="the alias to move; the served configs follow 'production'")]
TritonOption = Annotated[
    str | None, typer.Option(help="a running Triton's HTTP address (host:port) to reload the model on")
]


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``; heavy imports stay inside the commands."""
    for command in (pipeline, train, export, evaluate, publish, promote, rollback, deploy):
        app.command()(command)
    app.command()(retrain)  # training/retrain.py: feedback -> candidate -> gate -> staging
    registry_app = typer.Typer(
        help="The MLflow Model Registry, the registry of record.", no_args_is_help=True
    )
    registry_app.command("sync")(registry_sync)
    app.add_typer(registry_app, name="registry")
    app.command("build-engine")(build_engine)
    app.command("azureml-job")(azureml_job)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input of any stage -> one line and exit code 2; a refused gate -> exit code 1."""
    from training.cli_output import console, fail
    from training.config import ConfigError
    from training.datasets import DatasetError
    from training.engine_build import EngineBuildError
    from training.pipeline import GateRefused, PipelineError
    from training.registry import RegistryError
    from training.sam_bootstrap import BootstrapError
    from training.train import CheckpointError

    try:
        yield
    except GateRefused as refused:
        console().print(f"[red]refused:[/red] {refused}")
        raise typer.Exit(code=1) from None
    except (
        ConfigError,
        DatasetError,
        BootstrapError,
        CheckpointError,
        PipelineError,
        RegistryError,
        EngineBuildError,
        OSError,
    ) as error:
        raise fail(str(error)) from None


def _config(path: Path, sets: list[str] | None, options: dict[str, object] | None = None) -> PipelineConfig:
    """The config with ``--set`` overrides, then the command's own options (dotted keys; None: unset)."""
    from training.config import load_config, parse_override

    overrides = dict(parse_override(text) for text in sets or [])
    overrides |= {key: str(value) for key, value in (options or {}).items() if value is not None}
    return load_config(path, overrides)


def _locations(data_root: Path | None, repository: Path | None) -> dict[str, object]:
    return {"data.root": data_root, "publish.repository": repository}


def _progress():
    from rich.progress import Progress

    from training.cli_output import console

    return Progress(console=console(), transient=True)


def pipeline(
    config: ConfigOption,
    run_dir: Annotated[
        Path | None, typer.Option(help="run directory (default: out/runs/<config>-<time>)")
    ] = None,
    data_root: DataRootOption = None,
    repository: RepositoryOption = None,
    seed: Annotated[
        bool,
        typer.Option(
            "--seed-repository",
            help="give an empty --repository this checkout's configs first (Azure ML outputs)",
        ),
    ] = False,
    resume: Annotated[bool, typer.Option(help="continue the run directory's training checkpoint")] = False,
    initial_weights: Annotated[
        Path | None,
        typer.Option(help="fine-tune from these weights (e.g. a published version's weights.pt)"),
    ] = None,
    sets: SetOption = None,
) -> None:
    """Run the whole training pipeline from one config, tracked in one MLflow run.

    (SKU-110K boxes -> SAM/box bootstrap ->) splits -> train -> ONNX export + parity -> evaluation on
    the test split -> quality gate (config thresholds, and no regression against the production
    version scored on the same images) -> publish the next version -> promote it if the config's
    publish.promote names an alias. Exits 1 without publishing when the gate refuses the model.
    """
    from training.cli_output import console
    from training.pipeline import repository_of, run_pipeline, seed_repository

    with _user_errors():
        loaded = _config(config, sets, _locations(data_root, repository))
        if seed and seed_repository(loaded):
            console().print(f"seeded {repository_of(loaded)} with this checkout's model configs")
        with _progress() as progress:
            result = run_pipeline(
                loaded, run_dir, resume=resume, progress=progress, initial_weights=initial_weights
            )
    summary = result.train
    console().print(
        f"trained {summary.steps} steps ({summary.epochs} epochs, {summary.s_per_epoch} s/epoch, "
        f"{summary.images_per_s} img/s, bf16={summary.bf16}); run {result.run_dir}"
    )
    parity = result.parity
    console().print(
        f"agreement with PyTorch: ONNX Runtime {parity.onnxruntime}, served {parity.served_engine} "
        f"({parity.served_precision}) {parity.served}"
    )
    _print_evaluation(result.evaluation, result.gate)
    if result.version is None:
        console().print("[red]refused:[/red] the quality gate did not pass; nothing was published")
        raise typer.Exit(code=1)
    console().print(f"published {loaded.publish.model_name} version {result.version}")
    if result.promoted is not None:
        console().print(f"{result.promoted.alias} -> version {result.promoted.version}")


def retrain(
    model: ModelOption,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="training config (default: the one in training/configs/ naming MODEL)"
        ),
    ] = None,
    feedback_dir: Annotated[
        Path | None,
        typer.Option(help="the gateway's feedback folder (default: $PRODSEG_GATEWAY_DATA_DIR/feedback)"),
    ] = None,
    holdout: Annotated[
        float, typer.Option(help="share of the corrections held out to compare with production")
    ] = 0.3,
    repository: RepositoryOption = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="run directory (default: out/runs/retrain-<model>-<time>)")
    ] = None,
    sets: SetOption = None,
) -> None:
    """Retrain MODEL on its base data plus the users' corrections, gated on a feedback hold-out.

    Snapshots the feedback into a data version (DVC), holds out part of the corrections, trains on the
    config's data plus the rest (warm-started from production's weights when its checkpoint is here),
    gates on the base test split (no regression beyond gate.max_regression against production) and on
    the hold-out (the candidate must beat production there), then publishes, registers and sets
    'staging'; production never moves. RUN_DIR/retrain.json logs the loop. No correction since the
    newest version: exit 0, no version. Gate refused: exit 1.
    """
    from training.cli_output import console, fail
    from training.data_versions import DvcError
    from training.retrain import NothingToRetrain, training_config_for
    from training.retrain import retrain as run_retrain

    config = config or training_config_for(model)
    if config is None:
        raise fail(f"no config in training/configs/ names {model}: pass --config")
    with _user_errors():
        loaded = _config(config, sets, {"publish.repository": repository, "model_name": model})
        try:
            with _progress() as progress:
                result = run_retrain(loaded, feedback_dir, holdout, run_dir, progress=progress)
        except NothingToRetrain as nothing:
            console().print(f"nothing to retrain: {nothing}; no new version", highlight=False)
            return
        except (ValueError, DvcError) as error:  # a bad --holdout or run dir; DVC's own failure
            raise fail(str(error)) from None
    _print_retrain(console(), result.log)
    if result.version is None:
        console().print("[red]refused:[/red] the quality gate did not pass; nothing was published")
        raise typer.Exit(code=1)


def train(
    run_dir: RunDirOption,
    config: ConfigOption,
    data_root: DataRootOption = None,
    repository: RepositoryOption = None,
    resume: Annotated[bool, typer.Option(help="continue from RUN_DIR/checkpoints/last.pt")] = False,
    sets: SetOption = None,
) -> None:
    """Train the config's model into RUN_DIR (checkpoints/last.pt, train.json); step 1 of 4.

    Random crops with the config's augmentations, CE + Dice, AdamW with warm-up + cosine; a
    resumable checkpoint every train.checkpoint_every steps, the task's validation metric per epoch (MLflow).
    Then: prodseg export, evaluate, publish with the same --run-dir.
    """
    from training.cli_output import console
    from training.pipeline import RunDir, open_tracker, prepare_data, train_stage

    with _user_errors():
        loaded = _config(config, sets, _locations(data_root, repository))
        contract, run = loaded.contract(), RunDir(run_dir)
        with open_tracker(loaded, run) as tracker, _progress() as progress:
            splits = prepare_data(loaded, run, contract, tracker, progress)
            summary = train_stage(loaded, run, contract, splits, tracker, progress, resume).summary
    console().print(
        f"trained {summary.steps} steps in {summary.train_s} s ({summary.s_per_epoch} s/epoch), "
        f"loss {summary.final_loss}, val {summary.val_metric} {summary.val_score}; "
        f"checkpoint in {run.checkpoint}"
    )


def export(
    run_dir: RunDirOption,
    config: ConfigOption,
    data_root: DataRootOption = None,
    repository: RepositoryOption = None,
    sets: SetOption = None,
) -> None:
    """Export RUN_DIR's trained model to ONNX and check parity; step 2 of 4.

    The graph takes uint8 RGB frames and returns uint8 class ids (normalisation and argmax inside),
    is slimmed with onnxslim, and is compared pixel by pixel with PyTorch on held-out test images
    under ONNX Runtime and under the engine the cpu config serves (OpenVINO through the serving
    runner's OnnxEngine); the gate holds both to floors. export.openvino_ir also writes an IR.
    """
    from training.cli_output import console
    from training.pipeline import RunDir, export_stage, open_tracker, prepare_data

    with _user_errors():
        loaded = _config(config, sets, _locations(data_root, repository))
        contract, run = loaded.contract(), RunDir(run_dir)
        with open_tracker(loaded, run, start=False) as tracker:
            parity = export_stage(loaded, run, contract, prepare_data(loaded, run, contract), tracker=tracker)
    console().print(
        f"wrote {run.onnx}; agreement with PyTorch on {parity.images} images: ONNX Runtime "
        f"{parity.onnxruntime}, served {parity.served_engine} ({parity.served_precision}) {parity.served}"
    )


def evaluate(
    run_dir: RunDirOption,
    config: ConfigOption,
    data_root: DataRootOption = None,
    repository: RepositoryOption = None,
    sets: SetOption = None,
) -> None:
    """Evaluate RUN_DIR's ONNX model on the test split and decide the quality gate; step 3 of 4.

    Writes evaluation/ (evaluation.json with the task's metrics, e.g. mIoU, IoU and Dice per class,
    confusion.png, worst/ overlays of the worst images) and gate.json. The gate checks the config's
    thresholds and compares with the baseline alias's version, re-scored on the same test images.
    Exits 0 either way: `prodseg publish` acts on the decision.
    """
    from training.pipeline import RunDir, evaluate_stage, open_tracker, prepare_data

    with _user_errors():
        loaded = _config(config, sets, _locations(data_root, repository))
        contract, run = loaded.contract(), RunDir(run_dir)
        with open_tracker(loaded, run, start=False) as tracker:
            result, decision = evaluate_stage(
                loaded, run, contract, prepare_data(loaded, run, contract), tracker
            )
    _print_evaluation(result, decision)


def publish(
    run_dir: RunDirOption,
    config: ConfigOption,
    repository: RepositoryOption = None,
    promote_to: Annotated[
        str | None, typer.Option("--promote", help="then move this alias to it (default: publish.promote)")
    ] = None,
    sets: SetOption = None,
) -> None:
    """Publish RUN_DIR's model as the next version of the repository; step 4 of 4.

    Refused (exit 1) unless RUN_DIR's gate passed. Writes <repository>/<model>/<N>/ with model.onnx,
    model_card.json, MODEL_CARD.md and model.py -> ../model.py through one rename; never overwrites.
    """
    from training.cli_output import console
    from training.pipeline import RunDir, open_tracker, promote_stage, publish_stage

    with _user_errors():
        loaded = _config(config, sets, {"publish.repository": repository, "publish.promote": promote_to})
        contract, run = loaded.contract(), RunDir(run_dir)
        with open_tracker(loaded, run, start=False) as tracker:
            version = publish_stage(loaded, run, contract, tracker)
            console().print(f"published {contract.model_name} version {version}")
            if loaded.publish.promote:
                change = promote_stage(loaded, version, tracker)
                console().print(f"{change.alias}: {change.previous} -> {change.version}")


def promote(
    version: Annotated[str, typer.Argument(help="a version number, 'latest', or another alias's name")],
    model: ModelOption,
    alias: AliasOption = "production",
    repository: RepositoryOption = None,
    triton_url: TritonOption = None,
) -> None:
    """Point an MLflow alias at a registered version; for 'production', Triton's configs follow.

    Moves the alias in the MLflow Model Registry (MLFLOW_TRACKING_URI, else out/mlflow.db for this
    checkout's repository) and keeps its history there for rollback. For the production alias this
    is a deploy: the version's files are copied from MLflow if the repository lacks them, and
    version_policy is pinned to it in config.pbtxt and every configs/*.pbtxt (comments kept).
    With --triton-url, asks a running Triton (explicit model control) to reload the model.
    """
    from clients.contract import default_repository
    from training import registry
    from training.cli_output import console

    with _user_errors():
        change = registry.promote(repository or default_repository(), model, version, alias, triton_url)
    _print_change(console(), change)


def rollback(
    model: ModelOption,
    alias: AliasOption = "production",
    repository: RepositoryOption = None,
    triton_url: TritonOption = None,
) -> None:
    """Move an MLflow alias back to the version it pointed to before; for 'production', configs follow.

    Fails (exit 2) when the alias has no earlier version in its history (kept in MLflow tags).
    """
    from clients.contract import default_repository
    from training import registry
    from training.cli_output import console

    with _user_errors():
        change = registry.rollback(repository or default_repository(), model, alias, triton_url)
    _print_change(console(), change)


def deploy(
    model: ModelOption,
    alias: Annotated[str, typer.Option(help="the MLflow alias whose version to serve")] = "production",
    repository: RepositoryOption = None,
    triton: Annotated[
        str | None,
        typer.Option(
            "--triton",
            help="a running Triton's HTTP address (host:port) to reload, or several replicas' "
            "(comma separated) to roll over one at a time",
        ),
    ] = None,
) -> None:
    """Serve an alias's version from the Triton repository, as the MLflow Model Registry says.

    Resolves the alias in MLflow, copies that version's registered files into <repository>/<model>/<N>/
    if they are missing there (through a staging folder and one rename), pins version_policy to it
    in config.pbtxt and every configs/*.pbtxt, and with --triton asks Triton to reload the model.
    With several --triton replicas (loading from this repository) the version is rolled out replica
    by replica as `prodseg rollout` does (load new, wait ready, switch, drain old): no request fails.
    Exits 2 when the alias points nowhere or a replica cannot be reached (nothing changed), 1 when
    the rollout failed midway (every replica put back on its old version; the report is printed).
    """
    import json

    from rich.markup import escape

    from clients.contract import default_repository
    from prodseg.rollout import RolloutFailed
    from training import registry
    from training.cli_output import console

    try:
        with _user_errors():
            done = registry.deploy(
                repository or default_repository(),
                model,
                alias,
                triton,
                log=lambda message: console().print(escape(message), highlight=False),
            )
    except RolloutFailed as failure:
        print(json.dumps(failure.report.to_dict(), indent=2))
        console().print(f"[red]rollout failed:[/red] {escape(str(failure))}")
        console().print(escape(f"serving now: {failure.report.serving}"), highlight=False)
        raise typer.Exit(code=1) from None
    _print_deployment(console(), model, done)


def registry_sync(
    model: ModelOption,
    repository: RepositoryOption = None,
) -> None:
    """Register the repository's published versions that MLflow lacks; migrate an aliases.json.

    A fresh clone has versions in git and an empty out/mlflow.db: this registers them from their
    model cards (promote, rollback, deploy and publish do it too). A hand-written
    <model>/aliases.json of an earlier release is moved into MLflow aliases and deleted.
    """
    from clients.contract import default_repository
    from training import registry
    from training.cli_output import console

    with _user_errors():
        report = registry.sync(repository or default_repository(), model)
    out = console()
    registered = ", ".join(map(str, report.registered)) or "none"
    out.print(f"{model}: registered versions {registered}", highlight=False)
    for alias, version in report.migrated.items():
        out.print(f"  migrated alias {alias} -> version {version} from aliases.json", highlight=False)
    for alias, reason in report.dropped.items():
        out.print(f"  aliases.json's {alias} not migrated: {reason}", highlight=False)


def build_engine(
    version: Annotated[str, typer.Argument(help="a version number, 'latest', or an alias's name")],
    model: ModelOption,
    repository: RepositoryOption = None,
    opt_batch: Annotated[
        int | None,
        typer.Option(help="batch size to optimise for (default: the GPU config's largest preferred)"),
    ] = None,
    fp16: Annotated[bool, typer.Option(help="allow FP16 kernels")] = True,
    workspace_gib: Annotated[float, typer.Option(help="TensorRT builder workspace")] = 4.0,
) -> None:
    """Build a TensorRT plan of a published version for this machine's GPU (needs a GPU and tensorrt).

    Parses the version's model.onnx with the TensorRT Python API, FP16, one optimisation profile for
    batch 1..max_batch_size of configs/gpu.pbtxt, and writes <version>/model.sm<CC>.plan for this
    GPU's compute capability: the same file the chart's engine-build Jobs write. No config changes:
    GPU pods switch their served gpu.pbtxt to the plan at start (clients/config_text.py), and serve
    it through ONNX Runtime where no plan fits their GPU.
    """
    from clients.contract import default_repository
    from training import engine_build, registry
    from training.cli_output import console

    with _user_errors():
        engine_build.check_gpu()  # first, so a machine without a GPU fails before anything else
        repo = repository or default_repository()
        built = engine_build.build_engine(
            repo,
            registry.resolve(repo, version, model),
            model_name=model,
            opt_batch=opt_batch,
            fp16=fp16,
            workspace_gib=workspace_gib,
        )
    console().print(
        f"built {built.plan} (compute capability {built.compute_capability}, TensorRT {built.tensorrt}, "
        f"fp16={built.fp16}, batch profile {built.profile}) in {built.seconds} s; GPU pods serve it with "
        f"{built.config.name} switched to TensorRT (plans: {sorted(built.plans)})"
    )


def azureml_job(
    config: ConfigOption,
    out: Annotated[
        Path | None, typer.Option(help="job YAML to write (default: infra/azureml/<config>-job.yml)")
    ] = None,
    sets: SetOption = None,
    submit: Annotated[
        bool, typer.Option(help="also submit it (needs Azure credentials and network)")
    ] = False,
    subscription: Annotated[str | None, typer.Option(help="Azure subscription id, for --submit")] = None,
    resource_group: Annotated[str | None, typer.Option(help="resource group, for --submit")] = None,
    workspace: Annotated[str | None, typer.Option(help="Azure ML workspace, for --submit")] = None,
) -> None:
    """Write the Azure ML command job that runs `prodseg pipeline` with this config on a GPU cluster.

    Compute, base image and datastore URIs come from the config's azure section; packages from
    pyproject.toml. `az ml job create -f <out>` submits the YAML, or pass --submit.
    """
    from training import azure
    from training.cli_output import console, fail
    from training.config import PROJECT_ROOT

    if submit and not (subscription and resource_group and workspace):
        raise fail("--submit needs --subscription, --resource-group and --workspace")
    with _user_errors():
        job = azure.build_job(_config(config, sets), config)
        path = azure.dump_job(job, out or PROJECT_ROOT / "infra" / "azureml" / f"{config.stem}-job.yml")
    console().print(f"wrote {path}")
    if submit:
        console().print(f"submitted: {azure.submit(job, subscription, resource_group, workspace)}")


def _print_evaluation(result: Evaluation, decision: GateResult) -> None:
    from training.cli_output import console

    scores = ", ".join(f"{name} {value}" for name, value in result.metrics().items())
    console().print(f"test on {result.images} images ({result.engine}): {scores}", highlight=False)
    for line in decision.checks:
        console().print(f"  gate {line}", highlight=False, markup=False)


def _print_retrain(out: Console, log: dict) -> None:
    """The loop as a log: feedback counts, data version, warm start, gate figures, version, aliases."""
    feedback, gate = log["feedback"], log["gate"]
    lines = [
        f"feedback: {feedback['entries']} entries in {feedback['data_version']}, {feedback['corrections']} "
        f"corrections ({feedback['new_since_last_version']} since version {feedback['last_version']}): "
        f"{feedback['train']} trained on (x{feedback['train_repeat']}), {feedback['holdout']} held out",
        f"data version: {log['data_version']}",
        f"warm start: version {log['warm_start']['from']}'s whole network "
        f"(validation {log['gate']['metric']} before the first step: {log['train']['initial_val_score']})"
        if log["warm_start"]["from"] is not None
        else f"warm start: none ({log['warm_start']['reason']})",
        f"trained {log['train']['steps']} steps on {log['train']['train_images']} images "
        f"(run {log['run_dir']})",
        *[f"  gate {line}" for line in gate["checks"]],
    ]
    if log["version"] is not None:
        lines.append(f"published {log['model']} version {log['version']}")
    lines += [f"{move['alias']}: {move['from']} -> {move['to']}" for move in log["aliases"]]
    lines.append(f"production: version {log['production']} (unchanged)")
    for line in lines:
        out.print(line, highlight=False, markup=False)


def _print_change(out: Console, change: AliasChange) -> None:
    out.print(f"{change.alias}: {change.previous} -> {change.version}")
    if change.materialised:
        out.print(f"  copied version {change.version}'s files from the MLflow registry")
    if change.configs:
        out.print(f"  pinned version {change.version} in {', '.join(change.configs)}")
    if change.reloaded:
        out.print("  Triton reloaded the model")


def _print_deployment(out: Console, model: str, done: Deployment) -> None:
    import json

    source = "copied from the MLflow registry" if done.materialised else "already in the repository"
    out.print(f"{model}: {done.alias} is version {done.version} ({source})", highlight=False)
    out.print(f"  pinned version {done.version} in {', '.join(done.configs)}", highlight=False)
    if done.rollout is not None:
        print(json.dumps(done.rollout, indent=2))  # stdout: the rollout's report, as `prodseg rollout`'s
        replicas = ", ".join(f"{url} {served}" for url, served in done.rollout["serving"].items())
        out.print(
            f"  rolled out replica by replica in {done.rollout['seconds']} s; serving: {replicas}",
            highlight=False,
            markup=False,
        )
    elif done.reloaded:
        out.print("  Triton reloaded the model")
