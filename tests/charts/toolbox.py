"""The chart and infrastructure checks' tools (installed by `make tools` into .tools/) and helpers.

Tests that use them are marked ``k8s``. A missing tool is a failure that says how to install it,
never a skip: `make test` installs the tools first, so under CI a skip would only hide a broken
install.
"""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "prodsegmenter"
TOOLS = ROOT / ".tools"
RULES_FILE = CHART / "files" / "prometheus-rules.yaml"
RELEASE, NAMESPACE = "prodsegmenter", "prodseg"  # infra/defaults.sh


@dataclass(frozen=True)
class Tools:
    bin: Path

    def path(self, name: str) -> str:
        return str(self.bin / name)

    @property
    def venv_python(self) -> str:
        return str(TOOLS / "venv" / "bin" / "python")

    def env(self) -> dict[str, str]:
        """Environment with .tools/bin first on PATH (checkov calls `helm` by name)."""
        return dict(os.environ, PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")


def find_tools() -> Tools:
    wanted = ["helm", "kubectl", "promtool", "prometheus", "kubernetes-validate", "checkov", "yamllint"]
    missing = [name for name in wanted if not os.access(TOOLS / "bin" / name, os.X_OK)]
    if missing or not os.access(TOOLS / "venv" / "bin" / "python", os.X_OK):
        pytest.fail(f"chart/infra tools missing from {TOOLS}: {missing or ['venv']}; run `make tools`")
    return Tools(TOOLS / "bin")


def run(command: list[str], tools: Tools, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=tools.env(), cwd=ROOT, **kwargs
    )


class RenderError(RuntimeError):
    pass


@functools.cache
def _render(values_files: tuple[str, ...], sets: tuple[tuple[str, str], ...], release: str) -> str:
    command = [str(TOOLS / "bin" / "helm"), "template", release, str(CHART), "--namespace", NAMESPACE]
    for file in values_files:
        command += ["--values", file]
    for key, value in sets:
        command += ["--set", f"{key}={value}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RenderError(result.stderr)
    return result.stdout


def render_text(values_files=(), sets: dict[str, str] | None = None, release: str = RELEASE) -> str:
    return _render(tuple(str(f) for f in values_files), tuple(sorted((sets or {}).items())), release)


def render(values_files=(), sets: dict[str, str] | None = None, release: str = RELEASE) -> list[dict]:
    """`helm template` (cached per arguments) parsed into its objects."""
    return [doc for doc in yaml.safe_load_all(render_text(values_files, sets, release)) if doc]


def render_notes(values_files=(), sets: dict[str, str] | None = None, workdir: Path | None = None) -> str:
    """NOTES.txt as `helm install` would print it. `helm template` skips NOTES.txt and `install
    --dry-run` needs a cluster, so a copy of the chart renders it through `tpl` as a plain value."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        chart = Path(folder) / CHART.name
        shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(chart / "templates" / "NOTES.txt", chart / "files" / "notes.txt")
        (chart / "templates" / "zz-notes.yaml").write_text(
            'notes: {{ tpl (.Files.Get "files/notes.txt") . | toJson }}\n'
        )
        command = [str(TOOLS / "bin" / "helm"), "template", RELEASE, str(chart), "--namespace", NAMESPACE]
        command += ["--show-only", "templates/zz-notes.yaml"]
        for file in values_files:
            command += ["--values", str(file)]
        for key, value in (sets or {}).items():
            command += ["--set", f"{key}={value}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RenderError(result.stderr)
    return yaml.safe_load(result.stdout)["notes"]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (
        f"expected one {kind} named *{name_suffix}, found {[o['metadata']['name'] for o in found]}"
    )
    return found[0]


# The values matrix: each flag the issue names, on and off. (HPA on with monitoring off is a
# configuration the chart refuses: the Triton HPA's metric comes from Prometheus.)
FLAGS = {
    "gpu": "triton.gpu.enabled",
    "hpa": ("triton.autoscaling.enabled", "gateway.autoscaling.enabled"),
    "monitoring": "monitoring.enabled",
    "kserve": "kserve.enabled",
    "ingress": "ingress.enabled",
}


@dataclass(frozen=True)
class Case:
    flags: dict[str, bool]

    @property
    def id(self) -> str:
        return "-".join(f"{k}{'+' if v else '-'}" for k, v in self.flags.items())

    @property
    def sets(self) -> dict[str, str]:
        sets = {}
        for flag, keys in FLAGS.items():
            for key in keys if isinstance(keys, tuple) else (keys,):
                sets[key] = str(self.flags[flag]).lower()
        return sets

    @property
    def valid(self) -> bool:
        return not (self.flags["hpa"] and not self.flags["monitoring"] and not self.flags["kserve"])


MATRIX = [
    Case(dict(zip(FLAGS, bits, strict=True))) for bits in itertools.product([True, False], repeat=len(FLAGS))
]
VALUES_FILES = sorted((CHART / "ci").glob("*.yaml")) + sorted((ROOT / "infra" / "helm").glob("values-*.yaml"))
