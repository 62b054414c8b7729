"""Dependencies point one way: training produces artefacts into model_repository/; serving code
(gateway, SDK, data generators, load tests, benchmarks, the serving commands) never imports training
or torch. Checked on the source, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVING = ["clients", "gateway", "datagen", "loadtest", "benchmarks", "prodseg", "model_repository"]
FORBIDDEN = ("training", "torch", "torchvision", "timm", "segmentation_models_pytorch")
# Named exceptions, each for a reason:
EXCEPTIONS = {
    "benchmarks/baseline_server.py",  # the seed-style PyTorch server the suite compares against
    "prodseg/cli.py",  # the one CLI registers the training commands (imported lazily, inside)
    "prodseg/ab_cli.py",  # `ab promote` moves the registry's production alias
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "path",
    sorted(p for package in SERVING for p in (ROOT / package).rglob("*.py") if "web" not in p.parts),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_serving_code_never_imports_training_or_torch(path: Path):
    relative = str(path.relative_to(ROOT))
    if relative in EXCEPTIONS:
        pytest.skip("a named exception (see EXCEPTIONS)")
    assert not imported_modules(path) & set(FORBIDDEN), (
        f"{relative} imports {imported_modules(path) & set(FORBIDDEN)}"
    )
