"""checkov over the chart (rendered by helm, which must be on PATH or checkov scans nothing) and
over infra/aks and infra/images (Bicep, Dockerfile): no failed check; every skip is listed, with
its reason, in infra/checkov.yaml."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.charts.toolbox import CHART, ROOT, run

pytestmark = pytest.mark.k8s

CONFIG = ROOT / "infra" / "checkov.yaml"


def checkov(tools, *args: str) -> list[dict]:
    result = run(
        [tools.path("checkov"), "--config-file", str(CONFIG), "--output", "json", *args], tools, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # One JSON document per scanned directory, concatenated; each a report or a list of reports.
    reports, decoder, text, position = [], json.JSONDecoder(), result.stdout.strip(), 0
    while position < len(text):
        document, position = decoder.raw_decode(text, position)
        reports += document if isinstance(document, list) else [document]
        position = len(text) - len(text[position:].lstrip())
    return reports


def summaries(reports: list[dict]) -> dict[str, dict]:
    """Summary per check type, added up over the scanned directories."""
    found: dict[str, dict] = {}
    for report in reports:
        total = found.setdefault(report["check_type"], {"passed": 0, "failed": 0, "resource_count": 0})
        for key in total:
            total[key] += report["summary"][key]
    return found


@pytest.fixture(scope="module")
def chart_reports(tools):
    return checkov(tools, "--directory", str(CHART), "--framework", "helm")


@pytest.fixture(scope="module")
def infra_reports(tools):
    # infra/azureml belongs to the training side and is not scanned here.
    folders = [arg for folder in ("aks", "images") for arg in ("--directory", str(ROOT / "infra" / folder))]
    return checkov(tools, *folders, "--framework", "bicep", "dockerfile")


def test_chart_scan_covers_the_rendered_objects_and_passes(chart_reports):
    summary = summaries(chart_reports)["helm"]
    assert summary["resource_count"] >= 20, "checkov scanned (almost) nothing: is helm on PATH?"
    assert summary["failed"] == 0
    assert summary["passed"] > 200


def test_bicep_and_dockerfile_scans_pass(infra_reports):
    found = summaries(infra_reports)
    assert set(found) == {"bicep", "dockerfile"}
    for check_type, summary in found.items():
        assert summary["resource_count"] > 0, check_type
        assert summary["failed"] == 0, check_type
    assert found["bicep"]["resource_count"] >= 10


def test_skips_live_in_one_place_with_reasons(chart_reports, infra_reports):
    text = CONFIG.read_text()
    skipped = yaml.safe_load(text)["skip-check"]
    lines = text.splitlines()
    for check in skipped:
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {check}")
        # The reason is the comment block just above the check (shared by a run of related checks).
        above = [line.strip() for line in lines[:index] if line.strip()]
        assert above[-1].startswith("#") or above[-1].startswith("- CKV"), check
    # No inline suppressions elsewhere: the config is the only place.
    for folder in (CHART, ROOT / "infra" / "aks", ROOT / "infra" / "images", ROOT / "infra" / "helm"):
        for path in folder.rglob("*"):
            if path.is_file() and path != CONFIG and path.suffix in {".yaml", ".tpl", ".bicep", ".json", ""}:
                assert "checkov:skip" not in path.read_text(errors="ignore"), path
