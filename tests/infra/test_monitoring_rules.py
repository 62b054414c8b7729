"""promtool over the chart's rules file (the one the PrometheusRule embeds), its unit tests (each
alert firing and staying silent), and the Grafana dashboard's queries against the recorded series."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.charts.toolbox import CHART, ROOT, RULES_FILE, run

pytestmark = pytest.mark.k8s

UNIT_TESTS = ROOT / "infra" / "monitoring" / "tests" / "rules_test.yaml"


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"] for rule in group["rules"]]


def test_promtool_check_rules(tools):
    result = run([tools.path("promtool"), "check", "rules", str(RULES_FILE)], tools)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(tools):
    result = run([tools.path("promtool"), "test", "rules", str(UNIT_TESTS)], tools)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_read_the_chart_rules_file_and_cover_every_alert():
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    assert [(UNIT_TESTS.parent / f).resolve() for f in tests["rule_files"]] == [RULES_FILE.resolve()]
    alerts = {r["alert"] for r in rules() if "alert" in r}
    cases: dict[str, set[str]] = {name: set() for name in alerts}
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            cases[case["alertname"]].add("fires" if case["exp_alerts"] else "silent")
    assert cases == {name: {"fires", "silent"} for name in alerts}


def test_promtool_notices_a_wrong_expectation(tools, tmp_path):
    """The unit tests can fail: a wrong expected value is reported."""
    broken = UNIT_TESTS.read_text().replace("value: 2000\n", "value: 2001\n", 1)
    path = tmp_path / "broken_test.yaml"
    path.write_text(broken.replace("../../../charts", str(CHART.parent)))
    result = run([tools.path("promtool"), "test", "rules", str(path)], tools)
    assert result.returncode != 0
    assert "2.001E+03" in result.stdout + result.stderr


def test_dashboard_queries_recorded_series():
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    recorded = {r["record"] for r in rules() if "record" in r}
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"prodseg:[a-z0-9_]+:[a-z0-9_]+", target["expr"]))
    assert used <= recorded, used - recorded
    # Every recorded series is on the dashboard.
    assert used == recorded
