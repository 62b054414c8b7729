"""Fixtures of the infrastructure tests: the installed tools and the default chart render."""

from __future__ import annotations

import pytest

from tests.charts.toolbox import Tools, find_tools, render


@pytest.fixture(scope="session")
def tools() -> Tools:
    return find_tools()


@pytest.fixture(scope="session")
def objects(tools: Tools) -> list[dict]:
    """The chart rendered with its default values (the production shape)."""
    return render()
