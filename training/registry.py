"""The model registry: versions in the Triton repository, registered in MLflow, with named aliases.

* :func:`publish` writes the next integer version ``<repository>/<model>/<N>/`` (``model.onnx``,
  ``model_card.json``, ``MODEL_CARD.md``, a relative symlink ``model.py -> ../model.py``) through a
  staging directory and one rename: Triton never sees half a version, and none is overwritten. The
  same version is registered as MLflow model version N first (:mod:`training.mlflow_registry`):
  the MLflow Model Registry is the registry of record, and its numbers equal the folders'.
* Aliases (``production``, ``staging``, ``challenger``) are MLflow aliases; :func:`promote` moves
  one, :func:`rollback` moves it back to the version it pointed to before (the history is kept in
  MLflow tags). A hand-written ``<model>/aliases.json`` of earlier releases is migrated into MLflow
  on first use and deleted, and versions published but never registered (a fresh clone) are
  registered from their cards.
* :func:`deploy` materialises an alias's version from the registry: its files are copied into the
  repository if missing and the served configs are pinned to it; one Triton reloads it, several
  replicas take it one at a time (:mod:`prodseg.rollout`). Promoting or rolling back
  ``production`` takes the same path. Pinning rewrites ``version_policy`` to
  ``specific { versions: [N] }`` in ``config.pbtxt`` and every ``configs/*.pbtxt``; the rewrite
  replaces only that field's text, so the files' comments stay, and each new file is parsed with
  Triton's schema and checked to differ from the old one in nothing but the version policy before
  anything is written. Without a ``production`` alias the configs keep their ``latest`` policy.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from clients.atomic import write_text
from clients.contract import OUTPUTS, ModelContract
from clients.repository import versions as published_versions
from clients.triton_admin import TritonAdmin
from prodseg.rollout import RolloutError, replicas_from, rollout
from training.mlflow_registry import ALIASES_FILE, ModelEntry, RegistryError, SyncReport, model_lock

SERVED_ALIAS = "production"  # the alias the served configs' version_policy follows


def versions(repository: Path, model_name: str) -> list[int]:
    """Published versions, ascending: the platform's one rule, :func:`clients.repository.versions`."""
    return published_versions(Path(repository) / model_name)


def read_card(repository: Path, version: int, model_name: str) -> dict[str, Any]:
    path = Path(repository) / model_name / str(version) / "model_card.json"
    if not path.is_file():
        raise RegistryError(f"{model_name} version {version} is not published in {repository}")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------- publish


def publish(
    onnx_path: Path,
    card: dict[str, Any],
    repository: Path,
    model_name: str,
    extra_files: Sequence[Path] = (),
) -> int:
    """Write the next integer version ``<repository>/<model>/<N>/``, register it in MLflow, return N.

    The version is assembled in a hidden temporary directory inside the model folder (same
    filesystem, and Triton ignores non-integer names), registered as MLflow model version N (files
    logged as artifacts), and renamed into place, so Triton never loads a half-written version; an
    existing version is never overwritten. N is one past both the highest version folder and the
    highest registered version; when MLflow would number it otherwise (a stray folder) nothing is
    published. Publishers of one model take turns (a lock on its folder). ``model.py`` is a
    relative symlink to the one python-backend runner at ``<repository>/<model>/model.py``.
    ``extra_files`` (e.g. an OpenVINO IR) are copied in beside ``model.onnx``.
    """
    repository = Path(repository)
    model_dir = repository / model_name
    if not (model_dir / "config.pbtxt").is_file():
        raise RegistryError(f"{model_dir} has no config.pbtxt: not a model of a Triton repository")
    staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=model_dir))
    try:
        os.chmod(staging, 0o755)
        shutil.copyfile(onnx_path, staging / "model.onnx")
        for path in extra_files:
            shutil.copyfile(path, staging / Path(path).name)
        os.symlink(os.path.join("..", "model.py"), staging / "model.py")
        with model_lock(model_dir):
            entry = ModelEntry(repository, model_name)
            entry.sync()  # versions in git but not in a fresh store first, so the numbers line up
            folders = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
            version = 1 + max([*folders, *entry.registered()], default=0)
            full_card = {**card, "model_name": model_name, "version": version}
            (staging / "model_card.json").write_text(json.dumps(full_card, indent=2) + "\n")
            (staging / "MODEL_CARD.md").write_text(card_markdown(full_card))
            entry.register(version, staging, full_card)
            target = model_dir / str(version)
            try:
                os.rename(staging, target)  # fails on a non-empty existing directory: no overwrite
            except OSError as error:
                entry.unregister(version)
                raise RegistryError(f"cannot publish {target}: {error}") from None
            return version
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def model_card(
    *,
    contract: ModelContract,
    model: dict[str, Any],
    params: int,
    data: dict[str, Any],
    training: dict[str, Any],
    evaluation: dict[str, Any],
    parity: dict[str, Any],
    onnx_path: Path,
    opset: int,
    data_version: dict[str, Any] | None = None,
    code_commit: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """What a published version says about itself: contract, recipe, data, quality, provenance.

    ``data_version`` and ``code_commit`` are the lineage (training/data_versions.py): the data
    version it trained on and the commit (with a dirty flag) of the code that trained it."""
    import onnx
    import onnxruntime
    import openvino
    import torch
    from tritonclient.grpc import model_config_pb2

    from training.compat import patch_torchvision_ops

    patch_torchvision_ops()  # before smp/timm, which import torchvision (a detection run has not yet)
    import segmentation_models_pytorch as smp
    import timm

    from training.export import MEAN, STD, output_dims

    dims = output_dims(contract)
    outputs = [
        {
            "name": rule.name,
            "dtype": model_config_pb2.DataType.Name(rule.data_type).removeprefix("TYPE_").lower(),
            "shape": [-1, *dims[rule.name]],
        }
        for rule in OUTPUTS[contract.task]
    ]
    return {
        "model_name": contract.model_name,
        "task": contract.task.value,
        "architecture": model["arch"],
        "encoder": model["encoder"],
        "options": model.get("options", {}),
        "params": params,
        "input_height": contract.height,
        "input_width": contract.width,
        "input": {
            "name": contract.input_name,
            "dtype": "uint8",
            "shape": [-1, contract.height, contract.width, 3],
        },
        "outputs": outputs,
        "classes": contract.labels.names,
        "normalisation": {"mean": list(MEAN), "std": list(STD), "in_graph": True},
        "data": data,
        "data_version": data_version,
        "code_commit": code_commit,
        "training": training,
        "evaluation": evaluation,
        "parity": parity,
        "onnx": {
            "opset": opset,
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
        **extra,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def card_markdown(card: dict[str, Any]) -> str:
    evaluation, parity, training = (
        card.get("evaluation", {}),
        card.get("parity", {}),
        card.get("training", {}),
    )
    rows = [
        (
            "model",
            f"{card['model_name']} v{card['version']}" + (f" ({card['task']})" if "task" in card else ""),
        ),
        ("architecture", f"{card.get('architecture')} / {card.get('encoder')}"),
        ("parameters", f"{card.get('params', 0) / 1e6:.2f} M"),
        ("input", f"uint8 RGB [N, {card.get('input_height')}, {card.get('input_width')}, 3]"),
        ("classes", ", ".join(card.get("classes", []))),
        (
            "training",
            f"{training.get('steps')} steps x {training.get('batch_size')} on "
            f"{training.get('train_images')} images, {training.get('train_s')} s",
        ),
        ("held-out test", f"{evaluation.get('images')} images, {evaluation.get('engine')}"),
    ]
    # Every number of the task's evaluation: top-level scores, then per-class ones ("iou crack").
    for key, value in evaluation.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "images":
            rows.append((key.replace("_", " "), str(value)))
    for key, value in evaluation.items():
        if key.startswith("per_class_") and isinstance(value, dict):
            kind = key.removeprefix("per_class_").replace("_", " ")
            rows += [(f"{kind} {name}", str(score)) for name, score in value.items()]
    served = f"{parity.get('served_engine')} {parity.get('served_precision')}"
    rows += [
        (
            f"agreement with PyTorch: ORT / served ({served})",
            f"{parity.get('onnxruntime')} / {parity.get('served')}",
        ),
        ("data version", str((card.get("data_version") or {}).get("id"))),
        *[
            (f"{kind} data version", str((card.get("data_version") or {})[f"{kind}_version"]))
            for kind in ("base", "feedback")
            if (card.get("data_version") or {}).get(f"{kind}_version")
        ],
        ("code commit", _commit_text(card.get("code_commit"))),
        ("created", str(card.get("created"))),
    ]
    lines = [f"# {card['model_name']} version {card['version']}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines) + "\n"


def _commit_text(commit: dict[str, Any] | None) -> str:
    if not commit or not commit.get("commit"):
        return "unknown"
    return commit["commit"] + {True: " (uncommitted changes)", False: "", None: ""}[commit.get("dirty")]


# ----------------------------------------------------------------------------------------- aliases


@dataclass(frozen=True)
class AliasChange:
    alias: str
    previous: int | None
    version: int
    configs: list[str]  # config files rewritten (only for the served alias)
    reloaded: bool  # a running Triton was told to reload
    materialised: bool = False  # the version's files were copied into the repository from MLflow


@dataclass(frozen=True)
class Deployment:
    alias: str
    version: int  # the version the alias points to, now served
    materialised: bool  # its files were copied into the repository from MLflow
    configs: list[str]  # config files pinned to it
    reloaded: bool  # a running Triton was told to reload, or the replicas were rolled over to it
    rollout: dict[str, Any] | None = None  # several replicas: prodseg.rollout's report, step by step


def sync(repository: Path, model_name: str) -> SyncReport:
    """Register published versions MLflow lacks and migrate ``aliases.json`` (``prodseg registry sync``).

    Promote, rollback, deploy and publish do the same first, so a fresh clone works without it.
    """
    entry = ModelEntry(Path(repository), model_name)
    with model_lock(entry.model_dir):
        return entry.sync()


def alias_version(repository: Path, alias: str, model_name: str) -> int | None:
    """The version ``alias`` points to in MLflow, None when it points nowhere."""
    entry = ModelEntry(Path(repository), model_name)
    if not entry.model_dir.is_dir():
        return None
    if not entry.store_exists() and not (entry.model_dir / ALIASES_FILE).is_file():
        return None  # nothing was ever registered here: no alias (and no empty store made to say so)
    with model_lock(entry.model_dir):
        entry.sync()
        return entry.alias(alias)


def history(repository: Path, model_name: str, alias: str = SERVED_ALIAS) -> list[dict[str, Any]]:
    """The alias's recent moves (``action``, ``from``, ``to``, ``at``, ``by``), oldest first."""
    entry = ModelEntry(Path(repository), model_name)
    with model_lock(entry.model_dir):
        return entry.history(alias)


def resolve(repository: Path, ref: str | int, model_name: str) -> int:
    """A registered version number from ``N``, ``latest`` or an alias name."""
    entry = ModelEntry(Path(repository), model_name)
    with model_lock(entry.model_dir):
        entry.sync()
        return entry.resolve(ref)


def baseline(repository: Path, alias: str, model_name: str) -> tuple[int, str | None] | None:
    """The version a new model is compared with: ``alias``'s, else the latest published, else None."""
    version = alias_version(repository, alias, model_name)
    published = versions(repository, model_name)
    if version is not None and version in published:
        return version, alias
    return (published[-1], None) if published else None


def promote(
    repository: Path,
    model_name: str,
    version: int | str,
    alias: str = SERVED_ALIAS,
    triton_url: str | None = None,
) -> AliasChange:
    """Point MLflow alias ``alias`` at ``version`` (a number, ``latest`` or another alias's name).

    For ``production`` the version is deployed as by :func:`deploy`: its files are materialised
    if missing and the served configs pinned to it, before the alias moves.
    """
    entry = ModelEntry(Path(repository), model_name)
    with model_lock(entry.model_dir):
        entry.sync()
        target = entry.resolve(version)
        previous, configs, materialised = _move_alias(entry, alias, target, "promote")
    reloaded = _reload_triton(triton_url, model_name, configs)
    return AliasChange(alias, previous, target, configs, reloaded, materialised)


def rollback(
    repository: Path, model_name: str, alias: str = SERVED_ALIAS, triton_url: str | None = None
) -> AliasChange:
    """Move ``alias`` back to the version it pointed to before its current one."""
    entry = ModelEntry(Path(repository), model_name)
    with model_lock(entry.model_dir):
        entry.sync()
        _, target = entry.rollback_target(alias)
        previous, configs, materialised = _move_alias(entry, alias, target, "rollback")
    reloaded = _reload_triton(triton_url, model_name, configs)
    return AliasChange(alias, previous, target, configs, reloaded, materialised)


def deploy(
    repository: Path,
    model_name: str,
    alias: str = SERVED_ALIAS,
    triton_url: str | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> Deployment:
    """Serve ``alias``'s version from ``repository``: resolve it in MLflow, copy its files in if they
    are missing, pin the served configs to it, and make Triton serve it.

    ``triton_url`` is one Triton's HTTP address (``host:port``), reloaded at once, or several, comma
    separated: replicas that load from ``repository``. Those are rolled over one at a time by
    :func:`prodseg.rollout.rollout` (load the version beside the old one, wait until it is ready,
    switch, drain the old one), so no request fails; ``log`` hears each step. A rollout that cannot
    start (a replica down) raises :class:`RegistryError` before any config changes; one that fails
    midway puts every replica back on its old version and raises
    :class:`prodseg.rollout.RolloutFailed`, whose report says what each replica serves.
    """
    try:
        replicas = replicas_from(triton_url, None, Path(repository)) if triton_url else []
    except RolloutError as error:
        raise RegistryError(str(error)) from None
    entry = ModelEntry(Path(repository), model_name)
    with model_lock(entry.model_dir):
        entry.sync()
        version = entry.alias(alias)
        if version is None:
            raise RegistryError(
                f"alias {alias!r} of {model_name} points nowhere: MLflow ({entry.uri}) has no such alias"
            )
        materialised, pinned = _prepare_serving(entry, version)  # checked before any replica moves
        if len(replicas) <= 1:
            configs = _write_configs(entry.model_dir, pinned)
    if len(replicas) <= 1:
        reloaded = _reload_triton(replicas[0].http_url if replicas else None, model_name, configs)
        return Deployment(alias, version, materialised, configs, reloaded)
    try:
        report = rollout(model_name, version, replicas, log=log)
    except RolloutError as error:
        raise RegistryError(f"cannot roll {model_name} version {version} out: {error}") from None
    with model_lock(entry.model_dir):
        # The rollout left every config serving [version]; pinning again also covers a fleet that
        # already served it (no step, so the rollout wrote no config).
        configs = _write_configs(entry.model_dir, _pinned_configs(entry.model_dir, version))
    return Deployment(alias, version, materialised, configs, True, report.to_dict())


def _move_alias(
    entry: ModelEntry, alias: str, target: int, action: str
) -> tuple[int | None, list[str], bool]:
    """Move the alias; for the served alias, first materialise the version and check the pinned
    configs, so a version that cannot be served leaves the alias where it was."""
    materialised, pinned = False, {}
    if alias == SERVED_ALIAS:
        materialised, pinned = _prepare_serving(entry, target)
    previous = entry.set_alias(alias, target, action)
    return previous, _write_configs(entry.model_dir, pinned), materialised


def _prepare_serving(entry: ModelEntry, version: int) -> tuple[bool, dict[Path, str]]:
    """Deploy's first half, shared with promote/rollback of production: the version's files in the
    repository (copied from MLflow if missing: True) and every served config pinned to it, checked
    but not yet written."""
    materialised = entry.materialise(version)
    return materialised, _pinned_configs(entry.model_dir, version)


def _pinned_configs(model_dir: Path, version: int) -> dict[Path, str]:
    """Every served config with version_policy pinned to ``version``, all checked, none written."""
    paths = [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]
    return {path: pin_version(path.read_text(), version, path) for path in paths if path.is_file()}


def _write_configs(model_dir: Path, pinned: dict[Path, str]) -> list[str]:
    for path, text in pinned.items():
        write_text(path, text)
    return [str(path.relative_to(model_dir)) for path in pinned]


# -------------------------------------------------------------------------------- version_policy


def pin_version(text: str, version: int, source: Path | str = "config") -> str:
    """``text`` with its top-level ``version_policy`` replaced by ``specific { versions: [version] }``.

    The edit is :func:`clients.config_text.pin_version` (the one config-text editor, shared with the
    chart's pod-start script): only that field's characters change, and a config without the field
    gets it appended. The result is parsed with Triton's schema and must equal the input in every
    other field, so a rewrite can never alter the served contract.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from clients import config_text

    try:
        new_text = config_text.pin_version(
            text, version, comment=f"# Pinned by training.registry (alias {SERVED_ALIAS})."
        )
        old = text_format.Parse(text, model_config_pb2.ModelConfig())
        new = text_format.Parse(new_text, model_config_pb2.ModelConfig())
    except (config_text.ConfigTextError, text_format.ParseError) as error:
        raise RegistryError(f"{source}: not a valid Triton model config: {error}") from None
    if list(new.version_policy.specific.versions) != [version]:
        raise RegistryError(f"{source}: version_policy rewrite did not take")
    old.ClearField("version_policy")
    new.ClearField("version_policy")
    if old != new:
        raise RegistryError(f"{source}: version_policy rewrite changed other fields; left untouched")
    return new_text


def _reload_triton(triton_url: str | None, model_name: str, configs: list[str]) -> bool:
    """Ask a running Triton (explicit model control) to reload the model with its new config, through
    the platform's one admin client; its failures become the registry's error."""
    if not triton_url or not configs:
        return False
    try:
        with TritonAdmin(triton_url) as admin:
            admin.load(model_name)
    except (httpx.HTTPError, RuntimeError) as error:
        raise RegistryError(
            f"configs updated, but Triton at {triton_url} did not reload {model_name}: {error}"
        ) from None
    return True
