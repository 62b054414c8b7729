"""The MLflow Model Registry is the registry of record; the Triton repository is materialised from it.

Every published version N of model M is MLflow model version N of registered model M (the numbers
are kept equal: an operation that would make them diverge is refused), and the aliases
(``production``, ``staging``, ``challenger``) are MLflow aliases. :class:`ModelEntry` is one model's
entry: it registers versions, moves aliases, and materialises a registered version's files into
``<repository>/<M>/<N>/`` when they are missing there (another machine, a fresh clone).

Where the registry lives: ``MLFLOW_TRACKING_URI`` when set (an Azure ML workspace, a tracking
server), else a local SQLite store that belongs to the repository: ``out/mlflow.db`` for this
checkout's ``model_repository/`` (the store training runs log to by default), and
``<repository>-mlflow/mlflow.db`` beside any other repository, so two repositories never share
version numbers of one model name.

A version's files are logged as MLflow artifacts (of the training run when the model card names a
run in this store, else of a registration run) and the model version's source is that artifact
location, not a ``file://`` URI of the repository folder: the artifact store travels with the
tracking server (an Azure ML workspace keeps it in its blob storage), so ``prodseg deploy`` on
another machine can fetch the files, while a folder URI names one machine's disk. Links (the
version's ``model.py -> ../model.py``) are recorded in a tag and recreated, not uploaded as copies.

MLflow keeps only an alias's current version, so what rollback needs lives in registered-model
tags: ``prodseg.alias.<alias>.stack`` (the versions the alias pointed to, JSON) and
``prodseg.alias.<alias>.history`` (its recent moves).

Callers serialise operations on one model with :func:`model_lock`.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from clients.repository import versions as published_versions
from training.config import PROJECT_ROOT
from training.tracking import default_tracking_uri

ALIASES_FILE = "aliases.json"  # the hand-written alias file of earlier releases: migrated, then deleted
ARTIFACT_DIR = "published"  # a version's files sit at <run artifacts>/published/<model>/<N>/
HISTORY_KEPT = 30  # alias moves kept in the history tag (MLflow limits a tag's length)
STACK_KEPT = 100  # versions an alias can roll back through
_TAG = "prodseg."


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says which version or alias and why."""


def registry_uri(repository: Path) -> str:
    """The MLflow store that is the registry of record for ``repository`` (see the module's docs)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    repository = Path(repository).resolve()
    if repository == (PROJECT_ROOT / "model_repository").resolve():
        return default_tracking_uri()
    return f"sqlite:///{repository.parent / f'{repository.name}-mlflow' / 'mlflow.db'}"


@contextmanager
def model_lock(model_dir: Path) -> Iterator[None]:
    """An exclusive lock on the model folder itself (no lock file left in the repository).

    Every registry operation runs inside one, so an MLflow failure inside (a store that cannot be
    reached, a refused name) surfaces as a :class:`RegistryError` with MLflow's message.
    """
    if not Path(model_dir).is_dir():
        raise RegistryError(f"{model_dir} does not exist")
    fd = os.open(model_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    except MlflowException as error:
        raise RegistryError(f"MLflow: {error.message}") from error
    finally:
        os.close(fd)  # closing releases the lock


@dataclass
class SyncReport:
    registered: list[int] = field(default_factory=list)  # published versions registered now
    migrated: dict[str, int] = field(default_factory=dict)  # aliases taken over from aliases.json
    dropped: dict[str, str] = field(default_factory=dict)  # aliases.json entries not taken, and why


class ModelEntry:
    """One model of one repository, as registered in MLflow."""

    def __init__(self, repository: Path, model_name: str, uri: str | None = None) -> None:
        # A new SQLite store logs its schema migrations at INFO: noise on the command line.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        self.repository = Path(repository)
        self.model_name = model_name
        self.model_dir = self.repository / model_name
        self.uri = uri or registry_uri(self.repository)

    @functools.cached_property
    def client(self) -> MlflowClient:
        # Made on first use: constructing one creates a local store's database file.
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # ------------------------------------------------------------------------------ reading

    def store_exists(self) -> bool:
        """False only for a local SQLite store that was never created (nothing registered yet).

        Reads of such a store answer "nothing" without creating it: a refused command leaves no
        empty database behind.
        """
        if self.uri.startswith("sqlite:///"):
            return Path(self.uri.removeprefix("sqlite:///")).is_file()
        return True

    def registered(self) -> dict[int, ModelVersion]:
        """Registered versions by number (deleted ones are gone)."""
        if not self.store_exists():
            return {}
        try:
            found = self.client.search_model_versions(f"name = '{self.model_name}'")
        except MlflowException as error:
            raise RegistryError(f"MLflow at {self.uri}: {error.message}") from None
        return {int(version.version): version for version in found}

    def aliases(self) -> dict[str, int]:
        model = self._registered_model()
        return {} if model is None else {alias: int(v) for alias, v in model.aliases.items()}

    def alias(self, alias: str) -> int | None:
        return self.aliases().get(alias)

    def resolve(self, ref: str | int) -> int:
        """A registered version number from ``N``, ``latest`` or an alias name."""
        registered = self.registered()
        if isinstance(ref, int) or str(ref).isdigit():
            version = int(ref)
        elif ref == "latest":
            if not registered:
                raise RegistryError(f"no published version of {self.model_name} in {self.repository}")
            version = max(registered)
        else:
            found = self.alias(str(ref))
            if found is None:
                raise RegistryError(f"{self.model_name} has no alias {ref!r} in MLflow ({self.uri})")
            version = found
        if version not in registered:
            raise RegistryError(
                f"{self.model_name} version {version} is not published in {self.repository} "
                f"nor registered in MLflow ({self.uri})"
            )
        return version

    # -------------------------------------------------------------------------- registering

    def check_next(self, version: int) -> None:
        """Refuse to publish ``version`` unless MLflow would number it the same."""
        registered = self.registered()
        expected = 1 + max(registered, default=0)
        if version != expected:
            strays = sorted(int(p.name) for p in self.model_dir.iterdir() if p.name.isdigit())
            raise RegistryError(
                f"{self.model_name}: the repository's next version is {version} but MLflow's "
                f"({self.uri}) is {expected}; the numbers must stay equal. Version folders here: "
                f"{strays}; registered: {sorted(registered)}. Remove stray version folders, or "
                f"`prodseg deploy` the registered versions first"
            )

    def register(self, version: int, folder: Path, card: dict[str, Any]) -> ModelVersion:
        """Log ``folder``'s files as artifacts and create MLflow model version ``version`` from them.

        Refused when MLflow's next number is not ``version``; a version MLflow numbered otherwise
        (a deleted version's number is never reused) is deleted again before the error. A
        registration run of a failed registration ends FAILED.
        """
        self.check_next(version)
        run_id, own_run = self._artifact_run(card, version)
        try:
            created = self._create_version(version, folder, card, run_id)
        except BaseException:
            if own_run:
                self.client.set_terminated(run_id, status="FAILED")
            raise
        if own_run:
            self.client.set_terminated(run_id)
        return created

    def _create_version(self, version: int, folder: Path, card: dict[str, Any], run_id: str) -> ModelVersion:
        links = self._log_files(run_id, folder, f"{ARTIFACT_DIR}/{self.model_name}/{version}")
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{ARTIFACT_DIR}/{self.model_name}/{version}"
        if self._registered_model() is None:
            self.client.create_registered_model(
                self.model_name, description=f"Triton model {self.model_name} (ProdSegmenter)"
            )
        tags = version_tags(card, folder) | {f"{_TAG}links": json.dumps(links)}
        markdown = folder / "MODEL_CARD.md"
        created = self.client.create_model_version(
            self.model_name,
            source,
            run_id=run_id,
            tags=tags,
            description=markdown.read_text() if markdown.is_file() else None,
        )
        if int(created.version) != version:
            self.client.delete_model_version(self.model_name, created.version)
            raise RegistryError(
                f"MLflow ({self.uri}) numbered {self.model_name}'s new version {created.version}, "
                f"not {version} (a deleted version's number is not reused): the numbers must stay equal"
            )
        return created

    def unregister(self, version: int) -> None:
        """Undo :meth:`register` after a failure that kept the version off the repository."""
        self.client.delete_model_version(self.model_name, str(version))

    def sync(self) -> SyncReport:
        """Register published versions MLflow lacks (from their cards) and migrate aliases.json.

        A fresh clone has versions in git and an empty store: this makes them registered, in order.
        A version on disk whose model.onnx differs from the registered one's is refused.
        """
        report = SyncReport()
        registered = self.registered()
        for version in published_versions(self.model_dir):
            folder = self.model_dir / str(version)
            if version in registered:
                _check_same_files(self.model_name, version, folder, registered[version])
                continue
            card_path = folder / "model_card.json"
            card = json.loads(card_path.read_text()) if card_path.is_file() else {}
            self.register(version, folder, card)
            report.registered.append(version)
        self._migrate_alias_file(report)
        return report

    # -------------------------------------------------------------------------------- aliases

    def set_alias(self, alias: str, version: int, action: str) -> int | None:
        """Point ``alias`` at ``version``; ``promote`` pushes it on the alias's stack, ``rollback``
        pops the current one. Returns the version the alias pointed to before."""
        previous = self.alias(alias)
        stack = self._stack(alias, previous)
        if action == "rollback":
            stack.pop()
        elif previous != version:
            stack.append(version)
        try:
            self.client.set_registered_model_alias(self.model_name, alias, str(version))
        except MlflowException as error:
            raise RegistryError(f"MLflow refused alias {alias!r}: {error.message}") from None
        history = self._json_tag(f"alias.{alias}.history", []) + [_event(action, previous, version)]
        self._set_json_tag(f"alias.{alias}.stack", stack[-STACK_KEPT:])
        self._set_json_tag(f"alias.{alias}.history", history[-HISTORY_KEPT:])
        return previous

    def rollback_target(self, alias: str) -> tuple[int, int]:
        """(current, earlier) versions of ``alias``: where a rollback moves it from and to."""
        current = self.alias(alias)
        if current is None:
            raise RegistryError(f"{self.model_name} has no alias {alias!r} to roll back")
        stack = self._stack(alias, current)
        if len(stack) < 2:
            raise RegistryError(f"{alias} has no earlier version to roll back to (history: {stack})")
        target = stack[-2]
        if target not in self.registered():
            raise RegistryError(f"cannot roll {alias} back to version {target}: it is no longer registered")
        return current, target

    def history(self, alias: str) -> list[dict[str, Any]]:
        return self._json_tag(f"alias.{alias}.history", [])

    def _stack(self, alias: str, current: int | None) -> list[int]:
        """The alias's stack, ending at its current version even if someone moved it in MLflow's UI."""
        stack = [int(v) for v in self._json_tag(f"alias.{alias}.stack", [])]
        if current is not None and (not stack or stack[-1] != current):
            stack.append(current)
        return stack

    def _migrate_alias_file(self, report: SyncReport) -> None:
        """Move ``<model>/aliases.json`` (stack and history included) into MLflow once, then delete it."""
        path = self.model_dir / ALIASES_FILE
        if not path.is_file():
            return
        try:
            entries = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise RegistryError(f"{path}: not valid JSON, not migrated: {error}") from None
        registered, current = self.registered(), self.aliases()
        for alias, entry in entries.items():
            # Earlier releases wrote {"version", "stack", "history"}; the chart's examples a bare number.
            entry = entry if isinstance(entry, dict) else {"version": entry}
            version = entry.get("version")
            if alias in current:
                report.dropped[alias] = f"MLflow already points it at version {current[alias]}"
            elif version not in registered:
                report.dropped[alias] = f"version {version} is not registered"
            else:
                self.client.set_registered_model_alias(self.model_name, alias, str(version))
                stack = [int(v) for v in entry.get("stack") or [version]]
                history = list(entry.get("history", [])) + [_event("migrate", None, version)]
                self._set_json_tag(f"alias.{alias}.stack", stack)
                self._set_json_tag(f"alias.{alias}.history", history[-HISTORY_KEPT:])
                report.migrated[alias] = version
        path.unlink()

    # ---------------------------------------------------------------------------- materialise

    def materialise(self, version: int) -> bool:
        """Make sure ``<model>/<version>/`` holds the registered version's files; True if copied.

        The files are downloaded into a hidden staging folder inside the model folder (same
        filesystem; Triton ignores non-integer names), checked against the registered model.onnx
        hash, and renamed into place: Triton never sees half a version, and a failure leaves none.
        """
        if version in published_versions(self.model_dir):
            return False
        registered = self.registered()
        if version not in registered:
            raise RegistryError(
                f"{self.model_name} version {version} is not registered in MLflow ({self.uri})"
            )
        entry = registered[version]
        import mlflow.artifacts

        staging = Path(tempfile.mkdtemp(prefix=".deploy-", dir=self.model_dir))
        try:
            try:
                downloaded = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=entry.source, dst_path=str(staging), tracking_uri=self.uri
                    )
                )
            except (MlflowException, OSError) as error:
                raise RegistryError(
                    f"cannot fetch {self.model_name} version {version} from {entry.source}: {error}"
                ) from None
            for name, target in json.loads(entry.tags.get(f"{_TAG}links", "{}")).items():
                os.symlink(target, downloaded / name)
            _check_same_files(self.model_name, version, downloaded, entry)
            os.chmod(downloaded, 0o755)
            target_dir = self.model_dir / str(version)
            try:
                os.rename(downloaded, target_dir)  # onto nothing or an empty folder; never over files
            except OSError as error:
                raise RegistryError(
                    f"{target_dir} exists but holds no published files; remove it to deploy: {error}"
                ) from None
            return True
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------------------------- helpers

    def _registered_model(self) -> Any:
        if not self.store_exists():
            return None
        try:
            return self.client.get_registered_model(self.model_name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise RegistryError(f"MLflow at {self.uri}: {error.message}") from None

    def _json_tag(self, key: str, default: Any) -> Any:
        model = self._registered_model()
        text = None if model is None else model.tags.get(_TAG + key)
        return default if text is None else json.loads(text)

    def _set_json_tag(self, key: str, value: Any) -> None:
        self.client.set_registered_model_tag(self.model_name, _TAG + key, json.dumps(value))

    def _artifact_run(self, card: dict[str, Any], version: int) -> tuple[str, bool]:
        """The training run the card names when it is in this store, else a new registration run
        (True: ours to end)."""
        trained = card.get("mlflow") or {}
        if trained.get("tracking_uri") == self.uri and trained.get("run_id"):
            try:
                return self.client.get_run(trained["run_id"]).info.run_id, False
            except MlflowException:
                pass  # the run was deleted: register from a run of its own
        run = self.client.create_run(
            self._experiment_id(),
            run_name=f"register {self.model_name} v{version}",
            tags={f"{_TAG}registration": "true", f"{_TAG}repository": str(self.repository.resolve())},
        )
        return run.info.run_id, True

    def _experiment_id(self) -> str:
        """The model's experiment (the pipeline's default one), artifacts beside a local store the
        way :class:`training.tracking.Tracker` keeps them."""
        found = self.client.get_experiment_by_name(self.model_name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            database = Path(self.uri.removeprefix("sqlite:///"))
            location = (database.parent / "mlartifacts" / self.model_name).as_uri()
        return self.client.create_experiment(self.model_name, artifact_location=location)

    def _log_files(self, run_id: str, folder: Path, artifact_dir: str) -> dict[str, str]:
        """Upload ``folder``'s files (no caches, no hidden files); return its links, not uploaded."""
        links: dict[str, str] = {}
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if any(part == "__pycache__" or part.startswith(".") for part in relative.parts):
                continue
            if path.is_symlink():
                links[str(relative)] = os.readlink(path)
            elif path.is_file():
                parent = "/".join((artifact_dir, *relative.parent.parts))
                self.client.log_artifact(run_id, str(path), parent)
        return links


def version_tags(card: dict[str, Any], folder: Path) -> dict[str, str]:
    """What a model version is tagged with: the card's figures, data version and code commit."""
    tags = {
        key: str(card[key])
        for key in ("task", "architecture", "encoder", "params", "created")
        if card.get(key) is not None
    }
    for key, value in (card.get("evaluation") or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            tags[f"evaluation.{key}"] = str(value)
    # Lineage (training/data_versions.py): {"id": ...} and {"commit": ..., "dirty": ...}.
    for key, field_name in (("data_version", "id"), ("code_commit", "commit")):
        value = card.get(key)
        if isinstance(value, dict) and value.get(field_name):
            tags[key] = str(value[field_name])
            tags.update({f"{key}.{k}": str(v) for k, v in value.items() if k != field_name})
        elif value:
            tags[key] = str(value)
    onnx = folder / "model.onnx"
    if onnx.is_file():
        tags[f"{_TAG}onnx_sha256"] = _sha256(onnx)
    return tags


def _check_same_files(model_name: str, version: int, folder: Path, entry: ModelVersion) -> None:
    expected = entry.tags.get(f"{_TAG}onnx_sha256")
    onnx = folder / "model.onnx"
    if expected and onnx.is_file() and _sha256(onnx) != expected:
        raise RegistryError(
            f"{model_name} version {version}: {folder}/model.onnx differs from MLflow's registered "
            "version (sha256): the repository and the registry diverged"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _event(action: str, previous: int | None, version: int) -> dict[str, Any]:
    at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return {"action": action, "from": previous, "to": version, "at": at, "by": os.environ.get("USER", "")}
