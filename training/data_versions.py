"""Versioned datasets with DVC: feedback snapshots, base training sets, versions, checkouts, lineage.

Two kinds of data version live side by side in one DVC workspace, numbered per model and kind:

* ``feedback/<model>/v<N>``: the gateway stores each model's feedback as a dataset in a public
  layout under ``$PRODSEG_GATEWAY_DATA_DIR/feedback/<model>/`` (``gateway/feedback.py``; default
  ``out/gateway/feedback``), appending one line to ``index.jsonl`` once an entry's files exist. A
  *snapshot* freezes what that index lists into a new feedback version.
* ``base/<model>/v<N>``: the base training set a config trains on, *tracked* with ``prodseg data
  track``: a folder dataset copied as it is, or a procedural one materialised to a folder
  (``train/``, ``val/``, ``test/`` in the folder format, rendered at the model's input size).

    <workspace>/                      PRODSEG_DATA_WORKSPACE, default out/data
        .dvc/                         DVC's config (remote ``storage``) and content-addressed cache
        feedback/<model>/             the frozen copy: index.jsonl + the files its entries name
        feedback/<model>.dvc          what ``dvc add`` wrote for it (the current state)
        base/<model>/, base/<model>.dvc   the same for the model's base training set
        versions/<model>/v<N>.dvc     that .dvc file as it was at feedback version N, its output named v<N>
        versions/<model>/v<N>.json    version N: md5, files, entries, message, pushed or not
        versions/<model>/base/v<N>.*  the same for base version N (feedback versions came first and
                                      keep their place)
        checkouts/<model>/[base/]v<N>/   a version restored by ``dvc pull`` (when no other folder is named)

The workspace is a DVC repository initialised with ``--no-scm``: it works in pods and Azure ML jobs
that have no git and never touches this project's own git history (code is committed by people; data
is versioned here). Without git, a version is the ``.dvc`` file kept under ``versions/`` (what a git
commit of it would hold) and its id is ``feedback/<model>/v<N>``. The data itself goes to a DVC
remote: a local folder by default (``out/dvc-remote``), ``PRODSEG_DVC_REMOTE`` or ``--remote`` for
another (the chart's ``dataVersioning`` block names an ``azure://container/path`` one). A push that
fails leaves the version committed in the local cache and marked unpushed; the next snapshot retries.

Copying into the workspace (rather than ``dvc add`` on the gateway's own folder) means the gateway
keeps writing while a snapshot runs, and a half-written entry (files present, no index line yet) is
never part of a version.

Lineage: :func:`config_lineage` and :func:`data_lineage` name the data a training run used: a
base or feedback version recognised by content (a folder) or by recipe (procedural data: the same
generator, seed, sizes, input size, classes and generator code), else a DVC-tracked folder's md5 or
the procedural recipe; ``base_version`` and ``feedback_version`` name each kind apart.
:func:`code_commit` names the code. No torch: the standard library, PyYAML and configobj (DVC's
config format), and the data loaders only to materialise procedural data; DVC itself runs as its own
command (``python -m dvc``), so its errors arrive as text to report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clients.atomic import write_text

if TYPE_CHECKING:
    from training.config import PipelineConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE_ENV = "PRODSEG_DATA_WORKSPACE"
REMOTE_ENV = "PRODSEG_DVC_REMOTE"
REMOTE_NAME = "storage"  # the one DVC remote a workspace pushes to and pulls from
FEEDBACK, BASE = "feedback", "base"  # the kinds of data version: users' corrections, base training sets
KINDS = (FEEDBACK, BASE)
_DVC_TIMEOUT_S = 600  # a push of a large set to a slow remote; a hung remote still ends


class DataVersionError(ValueError):
    """Input that names no data: an unknown model folder, version or a target that is in use."""


class DvcError(RuntimeError):
    """A ``dvc`` command failed; ``str()`` is DVC's own error line."""


def default_workspace() -> Path:
    return Path(os.environ.get(WORKSPACE_ENV) or PROJECT_ROOT / "out" / "data")


def default_feedback_root() -> Path:
    """Where the gateway keeps feedback: ``<gateway data dir>/feedback`` (gateway/settings.py)."""
    gateway_data = os.environ.get("PRODSEG_GATEWAY_DATA_DIR")
    return (Path(gateway_data) if gateway_data else PROJECT_ROOT / "out" / "gateway") / "feedback"


def _remote_url(url: str) -> str:
    """A local remote as an absolute path (DVC would read a relative one from .dvc/); URLs as given."""
    return url if "://" in url else str(Path(url).expanduser().resolve())


@dataclass(frozen=True)
class DataVersion:
    model: str
    number: int
    md5: str  # DVC's hash of the folder (``<md5>.dir``)
    files: int
    bytes: int
    entries: int  # feedback: entries (index.jsonl lines); base: images (files in images/ folders)
    digest: str  # sha256 over (path, sha256) of every file: recognises the data wherever it is copied
    created: str
    message: str | None
    remote: str
    pushed: bool
    push_error: str | None = None
    kind: str = FEEDBACK  # FEEDBACK or BASE (records written before base sets were tracked: feedback)
    source: str | None = None  # base: the folder it was copied from, or the procedural recipe
    fingerprint: str | None = None  # procedural base: recognises the recipe (see procedural_fingerprint)

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.model}/v{self.number}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataVersion:
        return cls(**{key: value for key, value in data.items() if key != "id"})


@dataclass(frozen=True)
class Snapshot:
    version: DataVersion | None  # the new version, the latest when nothing was new; None: no feedback yet
    created: bool  # False: the data equals the latest version, so no version was made
    skipped: list[str]  # feedback index entries left out because a file they name is missing


class DataWorkspace:
    """A DVC repository holding versioned feedback and base sets (``dvc init --no-scm`` on first use)."""

    def __init__(self, root: Path | None = None, remote: str | None = None) -> None:
        self.root = Path(root or default_workspace()).resolve()
        explicit = remote or os.environ.get(REMOTE_ENV)
        self._explicit_remote = _remote_url(explicit) if explicit else None

    # ------------------------------------------------------------------------------ setup and dvc

    @property
    def initialised(self) -> bool:
        return (self.root / ".dvc" / "config").is_file()

    def open(self) -> str:
        """Initialise the DVC repository if needed and point its remote at the chosen URL; the URL.

        The remote: ``remote`` / ``PRODSEG_DVC_REMOTE`` when given, else the one already configured,
        else ``out/dvc-remote`` beside this checkout.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.initialised:
            self._dvc("init", "--no-scm", "--quiet")
        configured = self.configured_remote()
        wanted = self._explicit_remote or configured or _remote_url(str(PROJECT_ROOT / "out" / "dvc-remote"))
        if wanted != configured:
            # What `dvc remote add --default` and `dvc config` write, written here without starting
            # two more dvc processes (a second each). A pod may have a read-only /var/tmp, DVC's
            # default site cache: keep that in the workspace too.
            config = self._config()
            config.setdefault("core", {}).update(
                {"remote": REMOTE_NAME, "site_cache_dir": str(self.root / ".dvc" / "site-cache")}
            )
            config[f'remote "{REMOTE_NAME}"'] = {"url": wanted}
            config.write()
        return wanted

    def configured_remote(self) -> str | None:
        """The URL of the workspace's ``storage`` remote (None before the first snapshot)."""
        if not self.initialised:
            return None
        return self._config().get(f'remote "{REMOTE_NAME}"', {}).get("url")

    def _config(self) -> Any:
        from configobj import ConfigObj  # DVC's own config format and parser (a dvc dependency)

        return ConfigObj(str(self.root / ".dvc" / "config"))

    def _dvc(self, *args: str) -> str:
        """Run ``dvc ARGS`` in the workspace; its output, or :class:`DvcError` with DVC's error line."""
        env = {**os.environ, "DVC_NO_ANALYTICS": "1"}  # no usage report: it would try the network
        try:
            done = subprocess.run(
                [sys.executable, "-m", "dvc", *args],
                cwd=self.root,
                env=env,
                capture_output=True,
                text=True,
                timeout=_DVC_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise DvcError(f"dvc {args[0]} did not finish within {_DVC_TIMEOUT_S} s") from None
        if done.returncode != 0:
            raise DvcError(
                _error_line(done.stderr or done.stdout) or f"dvc {args[0]} exited {done.returncode}"
            )
        return done.stdout

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One snapshot or checkout at a time per workspace (DVC's own lock fails instead of waiting)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".prodseg.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # ------------------------------------------------------------------------------------ versions

    def _versions_dir(self, model: str, kind: str) -> Path:
        folder = self.root / "versions" / _model_name(model)
        return folder if kind == FEEDBACK else folder / kind

    def versions(self, model: str, kind: str = FEEDBACK) -> list[DataVersion]:
        """``model``'s versions of one kind, oldest first."""
        folder = self._versions_dir(model, kind)
        found = [DataVersion.from_dict(json.loads(path.read_text())) for path in folder.glob("v*.json")]
        return sorted(found, key=lambda version: version.number)

    def all_versions(self, model: str) -> list[DataVersion]:
        """``model``'s base versions, then its feedback versions."""
        return [version for kind in (BASE, FEEDBACK) for version in self.versions(model, kind)]

    def version(self, model: str, ref: str) -> DataVersion:
        """A version by ``N``, ``vN``, ``latest`` (feedback), ``base/vN``, ``base/latest`` or a full id
        (``feedback/<model>/vN``, ``base/<model>/vN``)."""
        known = self.all_versions(model)
        if not known:
            raise DataVersionError(
                f"{model} has no data versions in {self.root} "
                "(run `prodseg data snapshot` or `prodseg data track`)"
            )
        match = re.fullmatch(
            rf"(?:(?P<kind>{'|'.join(KINDS)})/)?(?:{re.escape(model)}/)?(?P<number>v?\d+|latest)", ref
        )
        versions = self.versions(model, match.group("kind") or FEEDBACK) if match else []
        by_number = {version.number: version for version in versions}
        number = match.group("number").removeprefix("v") if match else ""
        if match is None or not versions or (number != "latest" and int(number) not in by_number):
            listed = ", ".join(version.id for version in known)
            raise DataVersionError(f"{model} has no data version {ref!r}; it has {listed}")
        return versions[-1] if number == "latest" else by_number[int(number)]

    def _save(self, version: DataVersion) -> None:
        folder = self._versions_dir(version.model, version.kind)
        write_text(folder / f"v{version.number}.json", json.dumps(version.to_dict(), indent=2) + "\n")

    # ------------------------------------------------------------------------------------ snapshot

    def snapshot(self, model: str, feedback_root: Path | None = None, message: str | None = None) -> Snapshot:
        """Freeze ``model``'s current feedback into a new version and push it to the remote.

        Nothing new since the latest version: no version is made (``created`` False), but a latest
        version that never reached the remote is pushed again. A failed push leaves the version in
        the local cache with ``pushed`` False and ``push_error`` saying why.
        """
        model = _model_name(model)
        source = Path(feedback_root or default_feedback_root()) / model
        if not (source / "index.jsonl").is_file():
            raise DataVersionError(f"no feedback for {model}: {source / 'index.jsonl'} does not exist")
        with self._locked():
            remote = self.open()
            entries, skipped = _mirror_feedback(source, self.root / FEEDBACK / model)
            if not self.versions(model, FEEDBACK) and entries == 0:
                return Snapshot(None, created=False, skipped=skipped)
            version, created = self._commit(FEEDBACK, model, remote, entries, message)
            return Snapshot(version, created=created, skipped=skipped)

    def track(
        self,
        model: str,
        folder: Path,
        message: str | None = None,
        source: str | None = None,
        fingerprint: str | None = None,
    ) -> Snapshot:
        """Make ``folder`` (a base training set) the next base version of ``model`` and push it.

        The folder is copied into the workspace as it is; the same data as the latest base version
        (same files, and for procedural data the same fingerprint) makes no version. ``source`` says
        where it came from (default: the folder's path) and ``fingerprint`` recognises procedural data
        (:func:`procedural_fingerprint`). A failed push keeps the version locally, as
        :meth:`snapshot` does.
        """
        model = _model_name(model)
        folder = Path(folder).resolve()
        if not folder.exists():
            raise DataVersionError(f"{folder} does not exist: nothing to track")
        if not folder.is_dir():
            raise DataVersionError(f"{folder} is not a folder: nothing to track")
        if not any(path.is_file() for path in folder.rglob("*")):
            raise DataVersionError(f"{folder} holds no files: nothing to track")
        with self._locked():
            remote = self.open()
            frozen = self.root / BASE / model
            if frozen == folder or frozen in folder.parents or folder in frozen.parents:
                raise DataVersionError(f"{folder} overlaps the workspace's own copy {frozen}")
            _mirror_folder(folder, frozen)
            images = sum(1 for path in frozen.rglob("*") if path.is_file() and path.parent.name == "images")
            entries = images or sum(1 for path in frozen.rglob("*") if path.is_file())
            version, created = self._commit(
                BASE, model, remote, entries, message, source or str(folder), fingerprint
            )
            return Snapshot(version, created=created, skipped=[])

    def _commit(
        self,
        kind: str,
        model: str,
        remote: str,
        entries: int,
        message: str | None,
        source: str | None = None,
        fingerprint: str | None = None,
    ) -> tuple[DataVersion, bool]:
        """Version the frozen copy ``<kind>/<model>`` (``dvc add``) unless it equals the latest version
        of that kind, then push what is pending; (the version, whether it is new). Hold the lock."""
        frozen = self.root / kind / model
        digest, files, size = folder_digest(frozen)
        versions = self.versions(model, kind)
        latest = versions[-1] if versions else None
        if latest is not None and (latest.digest, latest.fingerprint) == (digest, fingerprint):
            return self._push_pending(model, kind, remote)[-1], False  # the same data (and recipe)
        self._dvc("add", "--quiet", f"{kind}/{model}")
        dvc_file = self.root / kind / f"{model}.dvc"
        number = (latest.number if latest else 0) + 1
        # Kept with its output renamed v<N> (a folder beside it that only a checkout makes): DVC
        # refuses two .dvc files naming one output, and every kept version is a .dvc file it reads.
        write_text(self._kept_dvc(model, kind, number), _renamed_output(dvc_file, f"v{number}"))
        version = DataVersion(
            model=model,
            number=number,
            md5=_dvc_md5(dvc_file),
            files=files,
            bytes=size,
            entries=entries,
            digest=digest,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            message=message,
            remote=remote,
            pushed=False,
            kind=kind,
            source=source,
            fingerprint=fingerprint,
        )
        self._save(version)  # committed locally before the push: a failed push loses nothing
        return self._push_pending(model, kind, remote)[-1], True

    def _kept_dvc(self, model: str, kind: str, number: int) -> Path:
        return self._versions_dir(model, kind) / f"v{number}.dvc"

    def _push_pending(self, model: str, kind: str, remote: str) -> list[DataVersion]:
        """Push, in one ``dvc push``, every version of ``model`` and ``kind`` not yet on ``remote`` (new
        ones, ones an earlier push failed to send, all of them after the remote changed); the versions
        after."""
        versions = self.versions(model, kind)
        pending = [version for version in versions if not version.pushed or version.remote != remote]
        if not pending:
            return versions
        targets = [
            str(self._kept_dvc(model, kind, version.number).relative_to(self.root)) for version in pending
        ]
        try:
            self._dvc("push", "--remote", REMOTE_NAME, *targets)
            outcome: dict[str, Any] = {"remote": remote, "pushed": True, "push_error": None}
        except DvcError as error:
            outcome = {"remote": remote, "pushed": False, "push_error": str(error)}
        for version in pending:
            self._save(DataVersion(**{**asdict(version), **outcome}))
        return self.versions(model, kind)

    # ------------------------------------------------------------------------------------ checkout

    def checkout(self, model: str, ref: str, out_dir: Path | None = None) -> tuple[DataVersion, Path]:
        """Restore a version's files (``ref`` as :meth:`version` reads it) into ``out_dir`` (default
        ``checkouts/<model>/[base/]v<N>``) with ``dvc pull``: from the local cache, or from the remote
        for what the cache lacks."""
        model = _model_name(model)
        version = self.version(model, ref)
        if out_dir is not None:
            out_dir = Path(out_dir).resolve()
            if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
                raise DataVersionError(f"{out_dir} exists and is not an empty folder")
        with self._locked():
            self.open()
            checkouts = self.root / "checkouts" / model
            staged_dvc = (checkouts if version.kind == FEEDBACK else checkouts / version.kind) / (
                f"v{version.number}.dvc"
            )
            kept = self._kept_dvc(model, version.kind, version.number)
            write_text(staged_dvc, kept.read_text())  # output: v<N> beside it
            self._dvc("pull", "--force", "--remote", REMOTE_NAME, str(staged_dvc.relative_to(self.root)))
            restored = staged_dvc.with_suffix("")
            if out_dir is None or out_dir == restored:
                return version, restored
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            if out_dir.exists():
                out_dir.rmdir()  # empty (checked above); move needs the name free
            shutil.move(restored, out_dir)
            staged_dvc.unlink()
            return version, out_dir


# ------------------------------------------------------------------------------------ feedback copy


def _mirror_feedback(source: Path, frozen: Path) -> tuple[int, list[str]]:
    """Make ``frozen`` hold exactly the complete entries of ``source``: the lines of its index.jsonl
    (a last line without its newline is still being written: left out), the files they name, and
    data.yaml (detection). Returns the entries kept and the ids of those whose files are missing."""
    text = (source / "index.jsonl").read_text()
    lines = text.split("\n")[:-1]  # after the last "\n": nothing, or a line still being written
    kept_lines: list[str] = []
    wanted: set[str] = set()
    skipped: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            names = [str(name) for name in record.get("files", [])]
        except (json.JSONDecodeError, AttributeError):
            skipped.append(line[:60])
            continue
        safe = all(not Path(name).is_absolute() and ".." not in Path(name).parts for name in names)
        if not safe or not all((source / name).is_file() for name in names):
            skipped.append(str(record.get("id")))
            continue
        kept_lines.append(line)
        wanted.update(names)
    if (source / "data.yaml").is_file():
        wanted.add("data.yaml")
    frozen.mkdir(parents=True, exist_ok=True)
    for name in sorted(wanted):
        origin, copy = source / name, frozen / name
        if not copy.is_file() or copy.stat().st_size != origin.stat().st_size or name == "data.yaml":
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, copy)  # entries are written once under a fresh id: size tells new
    wanted.add("index.jsonl")
    for path in sorted(frozen.rglob("*"), reverse=True):  # files first, then folders left empty
        if path.is_file() and str(path.relative_to(frozen)) not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    write_text(frozen / "index.jsonl", "".join(line + "\n" for line in kept_lines))
    return len(kept_lines), skipped


def _mirror_folder(source: Path, frozen: Path) -> None:
    """Make ``frozen`` hold exactly ``source``'s files. Copies keep their modification time, so a file
    of the same size and time is taken as unchanged: re-tracking a large set copies only what changed."""
    wanted = {path.relative_to(source) for path in source.rglob("*") if path.is_file()}
    frozen.mkdir(parents=True, exist_ok=True)
    for name in sorted(wanted):
        origin, copy = source / name, frozen / name
        same = copy.is_file() and (copy.stat().st_size, copy.stat().st_mtime_ns) == (
            origin.stat().st_size,
            origin.stat().st_mtime_ns,
        )
        if not same:
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, copy)
    for path in sorted(frozen.rglob("*"), reverse=True):  # files first, then folders left empty
        if path.is_file() and path.relative_to(frozen) not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def folder_digest(folder: Path) -> tuple[str, int, int]:
    """sha256 over every file's relative path and content hash; also the file count and bytes."""
    manifest = hashlib.sha256()
    count = size = 0
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        content = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest.update(f"{path.relative_to(folder).as_posix()}\t{content}\n".encode())
        count += 1
        size += path.stat().st_size
    return manifest.hexdigest(), count, size


def _renamed_output(dvc_file: Path, name: str) -> str:
    """The text of a one-output .dvc file with the output's path (relative to the file) renamed."""
    import yaml

    content = yaml.safe_load(dvc_file.read_text())
    content["outs"][0]["path"] = name
    return yaml.safe_dump(content, sort_keys=False)


def _dvc_md5(dvc_file: Path) -> str:
    import yaml

    return str(yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"])


def _model_name(model: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", model):
        raise DataVersionError(f"{model!r} is not a model name (letters, digits, '_', '-', '.')")
    return model


def _error_line(output: str) -> str:
    """DVC's ``ERROR: ...`` line (its message), without the support footer."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR")]
    return errors[-1] if errors else (lines[-1] if lines else "")


# ------------------------------------------------------------------------------------------ lineage


def code_commit(repository: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The code a run used: ``git rev-parse HEAD`` and whether the tree had uncommitted changes.

    Where the code came without git (an image, an Azure ML snapshot), ``PRODSEG_CODE_COMMIT`` may name
    the commit it was built from; dirty is then unknown (None).
    """
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repository, capture_output=True, text=True, timeout=30
        )
        if head.returncode == 0:
            status = subprocess.run(
                ["git", "status", "--porcelain"], cwd=repository, capture_output=True, text=True, timeout=60
            )
            dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
            return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.TimeoutExpired):
        pass  # no git binary: fall through
    return {"commit": os.environ.get("PRODSEG_CODE_COMMIT") or None, "dirty": None}


@dataclass(frozen=True)
class ConfigData:
    """What a training config's ``data:`` section trains on, as tracking and lineage see it."""

    kind: str  # the config's data kind: procedural, folder, sku110k
    paths: list[Path]  # the folders (or files) it reads; none for procedural data
    recipe: str | None = None  # procedural data: generator, seed and split sizes
    fingerprint: str | None = None  # procedural data: see procedural_fingerprint


def config_data(config: PipelineConfig) -> ConfigData:
    """The data of ``config``: a SKU-110K set by its ``root`` folder (else its images and CSV), a
    folder dataset by its ``root``, procedural data by its recipe and fingerprint."""
    from training.config import Sku110kSource

    data = config.data
    assert data is not None  # config_from_dict always sets it
    if isinstance(data, Sku110kSource):
        paths = [data.root] if data.root is not None else [data.path("images"), data.path("annotations")]
        return ConfigData(data.kind, paths)
    if data.root is not None:
        return ConfigData(data.kind, [data.root])
    recipe = f"procedural:{data.generator}:seed={data.seed}:{data.train}/{data.val}/{data.test}"
    contract = config.contract()
    fingerprint = procedural_fingerprint(
        recipe, str(data.generator), contract.height, contract.width, contract.labels.names
    )
    return ConfigData(data.kind, [], recipe, fingerprint)


def procedural_fingerprint(recipe: str, generator: str, height: int, width: int, classes: list[str]) -> str:
    """sha256 of what makes procedural data what it is: the recipe, the input size it is rendered at,
    the classes it draws and the generator's code (``datagen/<generator>.py``): a tracked base version
    with the same fingerprint holds the scenes a run with this recipe trains on."""
    import importlib.util

    spec = importlib.util.find_spec(f"datagen.{generator}")
    code = Path(spec.origin).read_bytes() if spec is not None and spec.origin else b""
    described = json.dumps([recipe, height, width, list(classes)]).encode()
    return hashlib.sha256(described + b"\0" + code).hexdigest()


def materialise(config: PipelineConfig, out_dir: Path) -> None:
    """Render the procedural data ``config`` trains on into ``out_dir``: ``train/``, ``val/`` and
    ``test/`` in the folder format, at the model's input size, scene for scene what a run renders.
    Segmentation generators only (the folder format holds masks)."""
    from training.datasets import GENERATORS, SPLITS, build_splits, write_folder_dataset

    spec = config.data
    if spec.kind != "procedural" or spec.generator not in GENERATORS:
        raise DataVersionError(
            f"{config.source}: {spec.kind} {getattr(spec, 'generator', '')} data cannot be written as a "
            f"folder dataset (procedural segmentation generators only: {sorted(GENERATORS)}); "
            "track a folder with `prodseg data track --model M PATH`"
        )
    contract = config.contract()
    splits = build_splits(spec, contract.height, contract.width, contract.labels)
    for split in SPLITS:
        write_folder_dataset(getattr(splits, split), out_dir / split)


def track_config(
    config: PipelineConfig, workspace: DataWorkspace | None = None, message: str | None = None
) -> Snapshot:
    """Track the base training set ``config`` uses as the next base version of its model: a folder
    set as it is, a procedural one rendered to a folder first (:func:`materialise`)."""
    import tempfile

    workspace = workspace or DataWorkspace()
    model = config.publish.model_name
    assert model is not None  # the config requires it
    data = config_data(config)
    if data.recipe is None:
        if len(data.paths) != 1:
            named = " and ".join(str(path) for path in data.paths)
            raise DataVersionError(
                f"{config.source}: its data is {named}, not one folder: track the folder holding them "
                f"with `prodseg data track --model {model} PATH`"
            )
        return workspace.track(model, data.paths[0], message)
    workspace.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".materialise-", dir=workspace.root) as scratch:
        folder = Path(scratch) / "data"
        materialise(config, folder)
        return workspace.track(model, folder, message, data.recipe, data.fingerprint)


def config_lineage(config: PipelineConfig, workspace: DataWorkspace | None = None) -> dict[str, Any]:
    """:func:`data_lineage` of a training config's data (the lineage a run records)."""
    data = config_data(config)
    return data_lineage(data.kind, data.paths, data.recipe, workspace, data.fingerprint)


def data_lineage(
    kind: str,
    paths: list[Path],
    recipe: str | None = None,
    workspace: DataWorkspace | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """Name the data of a training run.

    ``kind`` is the config's data kind; ``paths`` its folders or files; ``recipe`` describes
    procedural data and ``fingerprint`` recognises it (:func:`procedural_fingerprint`). Procedural
    data is named by the base version tracked with the same fingerprint, else by its recipe. Each
    path is matched against the workspace's versions (base and feedback) by content, and else looked
    up as DVC-tracked (a ``<name>.dvc`` beside it or beside a folder above it). ``id`` joins what was
    found in one string; ``base_version`` and ``feedback_version`` name the versions of each kind.
    """
    workspace = workspace or DataWorkspace()
    versions = _every_version(workspace)
    sources: list[dict[str, Any]] = []
    if recipe:
        match = next((v for v in versions if fingerprint and v.fingerprint == fingerprint), None)
        sources.append({"recipe": recipe, "fingerprint": fingerprint, "version": match.id if match else None})
    sources += [_source(Path(path), versions) for path in paths]
    ids = [source["version"] for source in sources if source["version"]]
    return {
        "id": " + ".join(_name(source) for source in sources) or kind,
        "kind": kind,
        "sources": sources,
        "base_version": next((i for i in ids if i.startswith(f"{BASE}/")), None),
        "feedback_version": next((i for i in ids if i.startswith(f"{FEEDBACK}/")), None),
    }


def _name(source: dict[str, Any]) -> str:
    """A source's part of a lineage id: its data version, else its recipe, DVC md5 or path."""
    if source["version"]:
        return str(source["version"])
    if source.get("recipe"):
        return str(source["recipe"])
    return f"dvc:{source['dvc_md5']}" if source["dvc_md5"] else f"untracked:{source['path']}"


def _every_version(workspace: DataWorkspace) -> list[DataVersion]:
    folder = workspace.root / "versions"
    if not folder.is_dir():
        return []
    models = sorted(path.name for path in folder.iterdir() if path.is_dir())
    return [version for model in models for version in workspace.all_versions(model)]


def _source(path: Path, versions: list[DataVersion]) -> dict[str, Any]:
    path = path.resolve()
    found: dict[str, Any] = {"path": str(path), "dvc_file": None, "dvc_md5": None, "version": None}
    for folder in [path, *path.parents]:
        dvc_file = folder.parent / f"{folder.name}.dvc"
        if folder.name and dvc_file.is_file():
            found |= {"dvc_file": str(dvc_file), "dvc_md5": _dvc_md5(dvc_file)}
            break
    if path.is_dir() and versions:
        file_count = sum(1 for p in path.rglob("*") if p.is_file())
        candidates = [version for version in versions if version.files == file_count]
        if candidates:  # hash the folder only when some version could match it
            digest = folder_digest(path)[0]
            match = next((version for version in candidates if version.digest == digest), None)
            if match is not None:
                found |= {"version": match.id, "dvc_md5": found["dvc_md5"] or match.md5}
    return found
