"""Roll a model version out across Triton replicas, one replica at a time, with no failed request.

For each replica in turn:

1. **load new**: the model's configs serve ``[old..., new]`` (``version_policy: specific``) and the
   replica reloads the model (``POST /v2/repository/models/<m>/load``). Triton loads the new version
   while the old one keeps answering;
2. **wait ready**: until the replica reports version ``new`` READY next to the old ones;
3. **switch + drain old**: the configs serve ``[new]`` and the replica reloads again. Unversioned
   requests already went to the highest loaded version; now Triton unloads the old one once its
   in-flight requests have finished;
4. **verify**: the replica reports exactly ``[new]`` READY; then the next replica.

Why no request fails: Triton (2.51) cannot tell a policy-only edit from any other config change, so
each reload loads every version the new config names afresh, beside the running instances, and swaps
them in when ready; a running instance (a dropped version, or a replaced one) is unloaded only after
its in-flight requests finish. Each step therefore costs a model load, and no request finds the
model unloaded.

If any step fails, the rollout stops and puts back every replica it touched (the failing one first)
on the versions it served before, then raises :class:`RolloutFailed` with Triton's reason: a failed
rollout leaves the fleet where it started. Rolling back a successful rollout is a rollout to the old
version number (same steps, same guarantees; the old version's folder stays in the repository):
``prodseg rollout --model M --version OLD ...``. One code path, so the way back is as tested as the
way forward.

Repositories: each replica names the repository it loads from. Pods have their own copy (the chart's
init container syncs one per pod), so the edit is made per replica, right before that replica's
reload; several replicas may also share one repository (one folder, as the embedded stack and the
tests use): in explicit model-control mode Triton reads a config only when asked to load, so editing
the shared config right before each replica's reload still moves one replica at a time, and the
file always says what the next replica to (re)start should serve. Every config of the model
(``config.pbtxt`` and ``configs/*.pbtxt``) is edited, so whichever one a replica uses agrees.

Serving side: no training code, no torch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
import typer

from clients import config_text
from clients.atomic import write_text
from clients.repository import versions as published_versions
from clients.triton_admin import TritonAdmin


class RolloutError(ValueError):
    """The rollout cannot start (bad input, a replica down, a version not published): nothing changed."""


class RolloutFailed(RuntimeError):
    """A step failed; the touched replicas were put back on their old versions (see ``report``)."""

    def __init__(self, message: str, report: RolloutReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Replica:
    """One Triton server: its HTTP address (``host:port``) and the repository it loads from."""

    http_url: str
    repository: Path


@dataclass
class RolloutReport:
    model: str
    version: int
    previous: dict[str, list[int]] = field(default_factory=dict)  # replica -> versions before
    timeline: list[dict] = field(default_factory=list)  # one entry per step, in order
    serving: dict[str, list[int]] = field(default_factory=dict)  # replica -> versions at the end
    started_at: float = 0.0  # wall clock (time.time()), to line the steps up with a load test
    seconds: float = 0.0
    ok: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "version": self.version,
            "ok": self.ok,
            "reason": self.reason,
            "previous": self.previous,
            "serving": self.serving,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 2),
            "timeline": self.timeline,
        }


def swap_steps(current: Sequence[int], wanted: Sequence[int]) -> list[list[int]]:
    """The version sets a replica serving ``current`` goes through to serve ``wanted``, never
    dropping a version before its successor is loaded.

    ``[1] -> [2]``: ``[[1, 2], [2]]`` (load 2 beside 1, then switch and unload 1); ``[2] -> [1]`` (a
    rollback) the same way round; ``[1, 2] -> [2]`` (``wanted`` already loaded): ``[[2]]``; already
    serving ``wanted``: nothing to do.
    """
    current, wanted = sorted(set(current)), sorted(set(wanted))
    if current == wanted:
        return []
    both = sorted({*current, *wanted})
    if both in (current, wanted):  # nothing new to load first, or nothing old to keep meanwhile
        return [wanted]
    return [both, wanted]


def model_configs(model_dir: Path) -> list[Path]:
    """Every config a Triton may load the model with: ``config.pbtxt`` and ``configs/*.pbtxt``."""
    return [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]


def write_served_versions(model_dir: Path, served: Sequence[int]) -> list[Path]:
    """Set ``version_policy`` to ``served`` in every config of the model; only that field changes.

    Every new text is computed before any file is written (a config that does not parse leaves them
    all as they were), and each file is replaced atomically: a Triton reloading meanwhile reads the
    old config or the new one, never half of one.
    """
    missing = [v for v in served if v not in published_versions(model_dir)]
    if missing:
        raise RolloutError(f"{model_dir.name} has no published version {missing} in {model_dir.parent}")
    rewritten = {
        path: config_text.serve_versions(path.read_text(), list(served)) for path in model_configs(model_dir)
    }
    for path, text in rewritten.items():
        write_text(path, text)
    return list(rewritten)


def rollout(
    model: str,
    version: int,
    replicas: Sequence[Replica],
    *,
    admin_key: str | None = None,
    ready_timeout_s: float = 300.0,
    drain_timeout_s: float = 120.0,
    log: Callable[[str], None] = lambda message: None,
) -> RolloutReport:
    """Serve ``version`` of ``model`` on every replica, one at a time (see the module docstring).

    ``admin_key``: the key of a locked repository API (None: ``$TRITON_ADMIN_KEY``). Raises
    :class:`RolloutError` before changing anything when the rollout cannot start, and
    :class:`RolloutFailed` after putting the touched replicas back when a step fails.
    """
    if not replicas:
        raise RolloutError("name at least one Triton replica")
    if len({r.http_url for r in replicas}) != len(replicas):
        raise RolloutError("a Triton replica is listed twice")
    report = RolloutReport(model, version, started_at=time.time())
    started = time.monotonic()
    admins = {r.http_url: TritonAdmin(r.http_url, admin_key, ready_timeout_s) for r in replicas}
    try:
        _preflight(model, version, replicas, admins, report)
        done: list[Replica] = []
        for replica in replicas:
            admin = admins[replica.http_url]
            steps = swap_steps(report.previous[replica.http_url], [version])
            if not steps:
                log(f"{replica.http_url}: already serves {model} version {version}")
            try:
                for served in steps:
                    switch = served == [version]
                    action = "switch + drain old" if switch else "load new + wait ready"
                    with _step(report, started, replica, action, served, log):
                        write_served_versions(replica.repository / model, served)
                        admin.load(model)
                        admin.wait_until_serving(
                            model, served, drain_timeout_s if switch else ready_timeout_s
                        )
            except (RuntimeError, RolloutError, httpx.HTTPError, config_text.ConfigTextError) as error:
                report.reason = f"{replica.http_url}: {error}"
                log(f"rollout failed on {report.reason}; putting touched replicas back")
                _restore([replica, *reversed(done)], model, admins, report, started, ready_timeout_s, log)
                raise RolloutFailed(report.reason, report) from error
            done.append(replica)
        report.ok = True
    finally:
        report.seconds = time.monotonic() - started
        for admin in admins.values():
            try:
                report.serving[admin.http_url] = admin.ready_versions(model)
            except httpx.HTTPError:
                report.serving[admin.http_url] = []
            admin.close()
    return report


def _preflight(
    model: str,
    version: int,
    replicas: Sequence[Replica],
    admins: dict[str, TritonAdmin],
    report: RolloutReport,
) -> None:
    """Everything a rollout needs, checked before the first change: published version, live replicas."""
    for replica in replicas:
        model_dir = replica.repository / model
        if not (model_dir / "config.pbtxt").is_file():
            raise RolloutError(f"{replica.repository} has no model {model!r} (no {model}/config.pbtxt)")
        if version not in published_versions(model_dir):
            published = published_versions(model_dir) or "none"
            raise RolloutError(
                f"{model} version {version} is not published in {model_dir} (published: {published})"
            )
        try:
            serving = admins[replica.http_url].ready_versions(model)
        except httpx.HTTPError as error:
            raise RolloutError(f"Triton at {replica.http_url} is not reachable: {error}") from error
        if not serving:
            raise RolloutError(f"Triton at {replica.http_url} does not serve {model}: load it first")
        report.previous[replica.http_url] = serving


@contextlib.contextmanager
def _step(
    report: RolloutReport,
    started: float,
    replica: Replica,
    action: str,
    served: Sequence[int],
    log: Callable[[str], None],
) -> Iterator[None]:
    """Log one step and time it into the report's timeline, failed or not."""
    entry: dict = {"replica": replica.http_url, "step": action, "versions": list(served)}
    began = time.monotonic()
    entry["at_s"] = round(began - started, 2)
    log(f"{replica.http_url}: {action} (serve {list(served)})")
    entry["ok"] = False
    try:
        yield
        entry["ok"] = True
    finally:
        entry["seconds"] = round(time.monotonic() - began, 2)
        report.timeline.append(entry)


def _restore(
    replicas: Sequence[Replica],
    model: str,
    admins: dict[str, TritonAdmin],
    report: RolloutReport,
    started: float,
    timeout_s: float,
    log: Callable[[str], None],
) -> None:
    """Put each replica back on the versions it served before the rollout (the same two-phase swap,
    so it drops no request either). A replica that cannot be restored adds its reason to the report."""
    for replica in replicas:
        old = report.previous[replica.http_url]
        admin = admins[replica.http_url]
        try:
            steps = swap_steps(admin.ready_versions(model), old)
            if not steps:  # Triton never left the old versions (the new one failed to load)
                with _step(report, started, replica, "roll back config", old, log):
                    write_served_versions(replica.repository / model, old)
            for served in steps:
                with _step(report, started, replica, "roll back", served, log):
                    write_served_versions(replica.repository / model, served)
                    admin.load(model)
                    admin.wait_until_serving(model, served, timeout_s)
        except (RuntimeError, RolloutError, httpx.HTTPError, config_text.ConfigTextError) as error:
            report.reason += f"; rolling {replica.http_url} back failed too: {error}"


# ----------------------------------------------------------------------------------- command line


def replicas_from(triton: str, repository: str | None, default: Path) -> list[Replica]:
    """``--triton h1:p,h2:p`` with ``--repository`` shared (one path) or one path per replica."""
    urls = [u.strip().removeprefix("http://") for u in triton.split(",") if u.strip()]
    paths = [Path(p.strip()) for p in (repository or str(default)).split(",") if p.strip()]
    if not urls:
        raise RolloutError("--triton names no replica")
    if len(paths) == 1:
        paths = paths * len(urls)
    if len(paths) != len(urls):
        raise RolloutError(
            f"--repository names {len(paths)} repositories for {len(urls)} replicas: give one shared "
            "repository or one per replica"
        )
    return [Replica(url, path) for url, path in zip(urls, paths, strict=True)]


def command(
    model: Annotated[str, typer.Option("--model", "-m", help="the model to roll out")],
    version: Annotated[
        int, typer.Option(help="the version to serve; the previous version number rolls back")
    ],
    triton: Annotated[
        str, typer.Option(help="Triton HTTP addresses (host:port), comma separated; rolled in this order")
    ] = "127.0.0.1:8000",
    repository: Annotated[
        str | None,
        typer.Option(help="the replicas' shared model repository, or one per replica, comma separated"),
    ] = None,
    ready_timeout: Annotated[
        float, typer.Option(help="seconds a replica may take to load the new version")
    ] = 300.0,
) -> None:
    """Roll a model version out across Triton replicas one by one: load new, wait ready, switch, drain
    old. A failed step puts the replicas back on the old version and exits 1 with the reason.

    Roll back with the same command and the old version number. With a locked repository API (as in
    the chart) the key comes from TRITON_ADMIN_KEY."""
    import json

    from rich.console import Console
    from rich.markup import escape

    from clients.contract import default_repository

    console = Console(stderr=True)  # messages quote Triton and versions ("[1, 2]"): escape, no markup
    try:
        replicas = replicas_from(triton, repository, default_repository())
        report = rollout(
            model,
            version,
            replicas,
            ready_timeout_s=ready_timeout,
            log=lambda message: console.print(escape(message)),
        )
    except RolloutError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(code=2) from error
    except RolloutFailed as failure:
        print(json.dumps(failure.report.to_dict(), indent=2))
        console.print(f"[red]rollout failed:[/red] {escape(str(failure))}")
        console.print(escape(f"serving now: {failure.report.serving}"))
        raise typer.Exit(code=1) from failure
    print(json.dumps(report.to_dict(), indent=2))
    old = sorted({v for served in report.previous.values() for v in served if v != version})
    console.print(f"{model} version {version} serves on {len(replicas)} replicas ({report.seconds:.1f} s)")
    if old:
        console.print(
            f"roll back: prodseg rollout --model {model} --version {old[-1]} --triton {triton}"
            + (f" --repository {repository}" if repository else "")
        )
