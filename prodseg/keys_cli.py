"""``prodseg keys``: the gateway's API keys (``gateway/auth.py``).

The key store is ``--file`` or ``PRODSEG_API_KEYS_FILE``. ``create`` prints the key once, alone on
stdout (so ``KEY=$(prodseg keys create cam-1)`` works); the store keeps only its salted hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

keys_app = typer.Typer(
    help="API keys of the gateway: create (shown once), list, revoke.", no_args_is_help=True
)
console = Console(stderr=True)

StoreFile = Annotated[
    Path,
    typer.Option("--file", envvar="PRODSEG_API_KEYS_FILE", help="the key store (JSON, hashes only)"),
]


def _store(file: Path):
    from gateway.auth import KeyStore

    return KeyStore(file)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)


@keys_app.command()
def create(
    name: Annotated[str, typer.Argument(help="who uses the key: letters, digits, '.', '_', '-'")],
    file: StoreFile,
    models: Annotated[
        str | None, typer.Option(help="comma-separated models it may use (default: all)")
    ] = None,
    rate: Annotated[str, typer.Option(help="token-bucket limit, like 60/min, 5/s, 1000/h")] = "60/min",
) -> None:
    """Create a key and print it once: it cannot be shown again."""
    scopes = [m.strip() for m in models.split(",") if m.strip()] if models is not None else None
    try:
        key, info = _store(file).create(name, scopes, rate)
    except ValueError as error:
        raise _fail(str(error)) from error
    print(key)
    allowed = ", ".join(info.models) if info.models is not None else "all models"
    console.print(f"created key {info.name!r} ({allowed}, {info.rate}); store it now, it is not shown again")


@keys_app.command("list")
def list_keys(file: StoreFile) -> None:
    """The keys in the store: names, scopes, limits (never the keys)."""
    try:
        keys = _store(file).list()
    except ValueError as error:
        raise _fail(str(error)) from error
    table = Table("name", "models", "rate", "created")
    for info in keys:
        table.add_row(
            info.name,
            ", ".join(info.models) if info.models is not None else "*",
            str(info.rate),
            info.created,
        )
    Console().print(table)


@keys_app.command()
def revoke(name: str, file: StoreFile) -> None:
    """Revoke a key: the gateway refuses it on its next request."""
    try:
        _store(file).revoke(name)
    except (KeyError, ValueError) as error:
        raise _fail(str(error.args[0])) from error
    console.print(f"revoked key {name!r}")
