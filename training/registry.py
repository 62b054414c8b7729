"""The model registry is the Triton model repository itself: versions, cards, and named aliases.

* :func:`publish` writes the next integer version ``<repository>/<model>/<N>/`` (``model.onnx``,
  ``model_card.json``, ``MODEL_CARD.md``, a relative symlink ``model.py -> ../model.py``) through a
  staging directory and one rename: Triton never sees half a version, and none is overwritten.
* Aliases (``production``, ``staging``, ...) live in ``<model>/aliases.json``, each with the stack of
  versions it pointed to and an append-only history. :func:`promote` pushes a version,
  :func:`rollback` pops back to the previous one.
* The served configs follow the ``production`` alias: promoting or rolling it back rewrites
  ``version_policy`` to ``specific { versions: [N] }`` in ``config.pbtxt`` and every
  ``configs/*.pbtxt``. The rewrite replaces only that field's text, so the files' comments stay, and
  each new file is parsed with Triton's schema and checked to differ from the old one in nothing but
  the version policy before anything is written. Without a ``production`` alias the configs keep
  their ``latest`` policy.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.atomic import write_text
from clients.contract import OUTPUTS, ModelContract
from clients.repository import versions as published_versions
from training.datasets import write_json_atomically

ALIASES_FILE = "aliases.json"
SERVED_ALIAS = "production"  # the alias the served configs' version_policy follows


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says which file or version and why."""


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
    """Write the next integer version ``<repository>/<model>/<N>/`` and return N.

    The version is assembled in a hidden temporary directory inside the model folder (same
    filesystem, and Triton ignores non-integer names) and renamed into place, so Triton never loads a
    half-written version; an existing version is never overwritten. ``model.py`` is a relative
    symlink to the one python-backend runner at ``<repository>/<model>/model.py``. ``extra_files``
    (e.g. an OpenVINO IR) are copied in beside ``model.onnx``.
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
        while True:
            version = 1 + max((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), default=0)
            full_card = {**card, "model_name": model_name, "version": version}
            (staging / "model_card.json").write_text(json.dumps(full_card, indent=2) + "\n")
            (staging / "MODEL_CARD.md").write_text(card_markdown(full_card))
            target = model_dir / str(version)
            if target.exists():  # another publisher won the race: take the next number
                continue
            try:
                os.rename(staging, target)  # fails on a non-empty existing directory: no overwrite
            except OSError:
                continue
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
    **extra: Any,
) -> dict[str, Any]:
    """What a published version says about itself: contract, recipe, data, quality, provenance."""
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
        ("created", str(card.get("created"))),
    ]
    lines = [f"# {card['model_name']} version {card['version']}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- aliases


@dataclass(frozen=True)
class AliasChange:
    alias: str
    previous: int | None
    version: int
    configs: list[str]  # config files rewritten (only for the served alias)
    reloaded: bool  # a running Triton was told to reload


def read_aliases(repository: Path, model_name: str) -> dict[str, Any]:
    path = Path(repository) / model_name / ALIASES_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RegistryError(f"{path}: not valid JSON: {error}") from None


def alias_version(repository: Path, alias: str, model_name: str) -> int | None:
    entry = read_aliases(repository, model_name).get(alias)
    return entry["version"] if entry else None


def resolve(repository: Path, ref: str | int, model_name: str) -> int:
    """A version number from ``N``, ``latest`` or an alias name."""
    published = versions(repository, model_name)
    if isinstance(ref, int) or str(ref).isdigit():
        version = int(ref)
    elif ref == "latest":
        if not published:
            raise RegistryError(f"no published version of {model_name} in {repository}")
        version = published[-1]
    else:
        found = alias_version(repository, str(ref), model_name)
        if found is None:
            raise RegistryError(f"{model_name} has no alias {ref!r} in {repository}")
        version = found
    if version not in published:
        raise RegistryError(f"{model_name} version {version} is not published in {repository}")
    return version


def baseline(repository: Path, alias: str, model_name: str) -> tuple[int, str | None] | None:
    """The version a new model is compared with: ``alias``'s, else the latest published, else None."""
    version = alias_version(repository, alias, model_name)
    if version is not None and version in versions(repository, model_name):
        return version, alias
    published = versions(repository, model_name)
    return (published[-1], None) if published else None


def promote(
    repository: Path,
    model_name: str,
    version: int | str,
    alias: str = SERVED_ALIAS,
    triton_url: str | None = None,
) -> AliasChange:
    """Point ``alias`` at ``version`` (a number, ``latest`` or another alias's name)."""
    target = resolve(repository, version, model_name)
    with _locked(repository, model_name) as aliases:
        entry = aliases.get(alias, {"version": None, "stack": [], "history": []})
        previous = entry["version"]
        if previous != target:
            entry["stack"].append(target)
        entry["history"].append(_event("promote", previous, target))
        entry["version"] = target
        aliases[alias] = entry
        configs = _serve(repository, model_name, target) if alias == SERVED_ALIAS else []
    return AliasChange(alias, previous, target, configs, _reload(triton_url, model_name, configs))


def rollback(
    repository: Path, model_name: str, alias: str = SERVED_ALIAS, triton_url: str | None = None
) -> AliasChange:
    """Move ``alias`` back to the version it pointed to before its current one."""
    with _locked(repository, model_name) as aliases:
        entry = aliases.get(alias)
        if entry is None:
            raise RegistryError(f"{model_name} has no alias {alias!r} to roll back")
        if len(entry["stack"]) < 2:
            raise RegistryError(f"{alias} has no earlier version to roll back to (history: {entry['stack']})")
        previous, target = entry["stack"][-1], entry["stack"][-2]
        if target not in versions(repository, model_name):
            raise RegistryError(f"cannot roll {alias} back to version {target}: it is no longer published")
        entry["stack"].pop()
        entry["history"].append(_event("rollback", previous, target))
        entry["version"] = target
        configs = _serve(repository, model_name, target) if alias == SERVED_ALIAS else []
    return AliasChange(alias, previous, target, configs, _reload(triton_url, model_name, configs))


def _event(action: str, previous: int | None, version: int) -> dict[str, Any]:
    at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return {"action": action, "from": previous, "to": version, "at": at, "by": os.environ.get("USER", "")}


@contextmanager
def _locked(repository: Path, model_name: str) -> Iterator[dict[str, Any]]:
    """aliases.json, read under an exclusive lock and written back (atomically) if the block succeeds."""
    model_dir = Path(repository) / model_name
    if not model_dir.is_dir():
        raise RegistryError(f"{model_dir} does not exist")
    with open(model_dir / f".{ALIASES_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        aliases = read_aliases(repository, model_name)
        yield aliases
        write_json_atomically(model_dir / ALIASES_FILE, aliases)


def _serve(repository: Path, model_name: str, version: int) -> list[str]:
    """Pin every served config to ``version``; all files are checked before any is written."""
    model_dir = Path(repository) / model_name
    paths = [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]
    rewritten = {path: pin_version(path.read_text(), version, path) for path in paths if path.is_file()}
    for path, text in rewritten.items():
        write_text(path, text)
    return [str(path.relative_to(model_dir)) for path in rewritten]


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


def _reload(triton_url: str | None, model_name: str, configs: list[str]) -> bool:
    """Ask a running Triton (explicit model control) to reload the model with its new config."""
    if not triton_url or not configs:
        return False
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    try:
        triton_http.InferenceServerClient(triton_url).load_model(model_name)
    except (InferenceServerException, OSError) as error:
        raise RegistryError(
            f"configs updated, but Triton at {triton_url} did not reload {model_name}: {error}"
        ) from None
    return True
