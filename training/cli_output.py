"""The console and the error exit of the training commands.

``prodseg/cli.py`` registers the training commands (``training.*_cli.register``); those modules
must not import ``prodseg.cli`` back (an import cycle), so their output helpers live here. Same
behaviour as the serving commands: messages on stderr, bad input exits with code 2.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console


@functools.cache
def console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` and return the exit (code 2) for the caller to raise."""
    console().print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)
