"""``prodseg`` commands for datasets and SAM bootstrapping (registered by prodseg.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``; heavy imports stay inside the commands."""
