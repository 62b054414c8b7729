"""The Triton model repository as the platform sees it: which models it holds, their contracts,
their versions, which versions Triton serves, and which model answers the default routes.

One rule for each, imported by the gateway, the CLI, the demo, training's registry and the tests:

- a model is a folder with a ``config.pbtxt`` whose contract parses (:class:`ModelContract`); a
  folder that breaks it is reported by name and reason and the others still load;
- a version is an integer-named folder holding at least one file (published atomically, so present
  means complete);
- the served versions follow the config's ``version_policy`` exactly as Triton applies it;
- the default model (``/v1/frames``, ``/v1/videos``) is ``PRODSEG_DEFAULT_MODEL`` when set, else the
  model whose config has the parameter ``default_model: "true"``, else the only model;
- a folder whose config says ``task: "codec"`` or ``task: "jpeg_wire"`` is a companion (the JPEG
  wire's steps and ensembles, ``clients/wire.py``), never a model: it is loaded beside the models it
  serves and listed nowhere users pick models.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from clients.contract import (
    TASK_PARAMETER,
    ContractError,
    ModelContract,
    default_repository,
    read_model_config,
)
from clients.wire import COMPANION_TASKS, JPEG_WIRE_TASK, SERVES_PARAMETER, check_wire_config

DEFAULT_MODEL_PARAMETER = "default_model"


@dataclass(frozen=True)
class Companion:
    """A helper model folder: a JPEG-wire step (``serves`` None: every wire) or a model's wire."""

    name: str
    task: str  # clients.wire.CODEC_TASK or JPEG_WIRE_TASK
    serves: str | None = None


@dataclass(frozen=True)
class Discovery:
    """Every model of a repository: contracts of those that can be served, errors of those that can't."""

    repository: Path
    contracts: dict[str, ModelContract] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    default_model: str | None = None
    companions: dict[str, Companion] = field(default_factory=dict)

    def get(self, model_name: str) -> ModelContract:
        try:
            return self.contracts[model_name]
        except KeyError:
            known = ", ".join(self.contracts) or "none"
            raise KeyError(f"unknown model {model_name!r}; known models: {known}") from None

    def companions_of(self, models: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        """The helpers Triton loads beside ``models``: their JPEG wires and, if any, the shared steps."""
        wires = [c.name for c in self.companions.values() if c.task == JPEG_WIRE_TASK and c.serves in models]
        steps = [c.name for c in self.companions.values() if c.task != JPEG_WIRE_TASK]
        return (*steps, *wires) if wires else ()


def discover(repository: Path | None = None, config_variants: bool = True) -> Discovery:
    """Contracts of every model folder in ``repository``; ``configs/*.pbtxt`` variants must agree."""
    repository = Path(repository or default_repository())
    contracts: dict[str, ModelContract] = {}
    errors: dict[str, str] = {}
    companions: dict[str, Companion] = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (model_dir / "config.pbtxt").is_file():
            continue  # not a model folder (Triton ignores it too)
        companion = _companion(model_dir)
        if companion is not None:
            companions[model_dir.name] = companion
            continue
        try:
            contract = ModelContract.load(model_dir.name, repository)
            if config_variants:
                for variant in sorted((model_dir / "configs").glob("*.pbtxt")):
                    _check_variant(contract, model_dir, variant)
            contracts[model_dir.name] = contract
        except ContractError as error:
            errors[model_dir.name] = str(error)
    codecs = {name for name, companion in companions.items() if companion.task != JPEG_WIRE_TASK}
    for name, companion in list(companions.items()):
        if companion.serves in errors or (companion.serves and not (repository / companion.serves).is_dir()):
            del companions[name]  # a wire whose model is refused or absent has nothing to serve
            continue
        problem = _companion_problem(repository / name, companion, contracts, codecs)
        if problem:
            errors[name] = f"{name}: {problem}"
            del companions[name]
    return Discovery(repository, contracts, errors, _default_model(repository, contracts), companions)


def _companion(model_dir: Path) -> Companion | None:
    """The folder as a companion when its config's task says it is one (an unparsable config is
    left to the model checks, which report it)."""
    try:
        config = read_model_config(model_dir / "config.pbtxt")
    except text_format.ParseError:
        return None
    task = _parameter(config, TASK_PARAMETER)
    if task not in COMPANION_TASKS:
        return None
    serves = _parameter(config, SERVES_PARAMETER) or "" if task == JPEG_WIRE_TASK else None
    return Companion(model_dir.name, task, serves)


def _companion_problem(
    model_dir: Path, companion: Companion, contracts: dict[str, ModelContract], codecs: set[str]
) -> str | None:
    """Why a companion cannot be served, or None: a wire must fit its model and use only codecs of
    the repository; a codec's variants (``configs/gpu.pbtxt``: nvJPEG) keep its tensors."""
    config = read_model_config(model_dir / "config.pbtxt")
    if companion.task != JPEG_WIRE_TASK:
        for variant in sorted((model_dir / "configs").glob("*.pbtxt")):
            other = read_model_config(variant)
            if (list(other.input), list(other.output)) != (list(config.input), list(config.output)):
                return f"configs/{variant.name}: inputs or outputs differ from config.pbtxt"
        return None
    if companion.serves not in contracts:
        return f"parameter {SERVES_PARAMETER!r} must name a model of the repository"
    problem = check_wire_config(config, contracts[companion.serves])
    missing = {step.model_name for step in config.ensemble_scheduling.step} - codecs - {companion.serves}
    if problem or missing:
        return problem or f"its steps {sorted(missing)} are not codec companions of this repository"
    # A variant (configs/cpu.pbtxt: the wire in one python step) serves the same model the same way.
    for variant in sorted((model_dir / "configs").glob("*.pbtxt")):
        other = read_model_config(variant)
        if _tensors(other) != _tensors(config) or other.name != config.name:
            return f"configs/{variant.name}: name, inputs or outputs differ from config.pbtxt"
        if _parameter(other, SERVES_PARAMETER) != companion.serves:
            return f"configs/{variant.name}: parameter {SERVES_PARAMETER!r} must be {companion.serves!r}"
    return None


def _tensors(config: model_config_pb2.ModelConfig) -> list[tuple[str, int, list[int]]]:
    return [(t.name, t.data_type, list(t.dims)) for t in (*config.input, *config.output)]


def _check_variant(contract: ModelContract, model_dir: Path, variant: Path) -> None:
    relative = f"configs/{variant.name}"
    try:
        other = ModelContract.from_config(read_model_config(variant), model_dir)
    except text_format.ParseError as error:
        raise ContractError(f"{contract.model_name}: {relative} does not parse: {error}") from error
    except ContractError as error:
        raise ContractError(f"{error} (in {relative})") from error
    # Variants tune batching and backends; tensors, task and labels must be the same (a CPU variant
    # may also take the frames as JPEG: clients.contract).
    same = dataclasses.replace(other, max_batch_size=contract.max_batch_size, takes_jpeg=contract.takes_jpeg)
    if same != contract:
        raise ContractError(
            f"{contract.model_name}: {relative}: inputs, outputs or task differ from config.pbtxt"
        )


def _default_model(repository: Path, contracts: dict[str, ModelContract]) -> str | None:
    chosen = os.environ.get("PRODSEG_DEFAULT_MODEL")
    if chosen:
        return chosen if chosen in contracts else None
    flagged = [
        name
        for name in contracts
        if _parameter(read_model_config(repository / name / "config.pbtxt"), DEFAULT_MODEL_PARAMETER)
        == "true"
    ]
    if len(flagged) == 1:
        return flagged[0]
    return next(iter(contracts)) if len(contracts) == 1 else None


def _parameter(config: model_config_pb2.ModelConfig, key: str) -> str | None:
    return config.parameters[key].string_value if key in config.parameters else None


def versions(model_dir: Path) -> list[int]:
    """Published versions of a model, ascending: integer folders that hold at least one file."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    found = []
    for path in model_dir.iterdir():
        if path.is_dir() and path.name.isdigit() and any(p.is_file() for p in path.iterdir()):
            found.append(int(path.name))
    return sorted(found)


def served_versions(config: model_config_pb2.ModelConfig, available: list[int]) -> list[int]:
    """The versions Triton loads under ``config.version_policy`` (default: the latest one)."""
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return sorted(available)
    if kind == "specific":
        return sorted(v for v in policy.specific.versions if v in available)
    count = policy.latest.num_versions if kind == "latest" else 1
    return sorted(available)[-count:] if count > 0 else []


def model_versions(
    model_name: str, repository: Path | None = None, config_name: str | None = None
) -> tuple[list[int], list[int]]:
    """(published, served) versions of one model, ``served`` under the config Triton uses."""
    model_dir = Path(repository or default_repository()) / model_name
    config_path = model_dir / "config.pbtxt"
    if config_name and (model_dir / "configs" / f"{config_name}.pbtxt").is_file():
        config_path = model_dir / "configs" / f"{config_name}.pbtxt"
    available = versions(model_dir)
    return available, served_versions(read_model_config(config_path), available)


def latest_version(model_name: str, repository: Path | None = None) -> int:
    """The newest published version; a clear error when there is none."""
    model_dir = Path(repository or default_repository()) / model_name
    available = versions(model_dir)
    if not available:
        raise FileNotFoundError(f"{model_dir} has no version folders: train and publish one first")
    return available[-1]
