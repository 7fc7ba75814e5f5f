"""The shipped Prometheus rules and example config are valid, unit-tested, and only use metrics the exporter exposes
or the recording rules (prometheus/rules.yml) record."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, contract_metric_names, metric_names, promtool, recorded_metric_names

PROMETHEUS = ROOT / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
RECORDING = PROMETHEUS / "rules.yml"
RECORDING_TEST = PROMETHEUS / "rules_test.yml"
DASHBOARD = ROOT / "grafana" / "tasks-exporter.json"
CONFIG = PROMETHEUS / "prometheus.yml"
EXPECTED_ALERTS = {
    "TasksExporterAbsent", "TasksExporterSourceDown", "TasksExporterDataStale",
    "TasksExporterCycleBoundExceedsInterval", "TasksExporterRateLimited", "TasksExporterAuthFailure",
    "TasksExporterConfigReloadFailed", "TasksExporterRecordingRulesMissing",
    "Bitrix24UserTooManyExpiredTasks", "Bitrix24DepartmentOverdueTasks", "PachcaOverdueRemindersPilingUp",
    "PachcaOverdueReminderTooOld", "PersonOverdueInBothTools",
}


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _recording_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RECORDING.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, check=False,
                          cwd=ROOT)


def test_the_expected_alerts_exist() -> None:
    assert {rule["alert"] for rule in _rules()} == EXPECTED_ALERTS


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    for rule in _rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{name}: no {key}"
        runbook = rule["annotations"]["runbook"]
        for part in ("Meaning:", "Check:", "Fix:"):
            assert part in runbook, f"{name}: runbook lacks {part!r}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == EXPECTED_ALERTS
    assert quiet == EXPECTED_ALERTS


def test_metric_names_skip_labels_that_look_like_metrics() -> None:
    expr = ('tasks_exporter_person_info{bitrix24_user_id!=""} * on(portal, bitrix24_user_id) group_left(name) '
            'label_replace(max by (workspace, pachca_user_id) (pachca_user_info), "x", "$1", "bitrix24_a", "(.+)")')
    assert metric_names(expr) == {"tasks_exporter_person_info", "pachca_user_info"}


def test_metric_names_include_recorded_names() -> None:
    expr = 'sum by (role) (portal:bitrix24_tasks:sum{group_id=~"$g"}) > on(a) group_left(b) max_over_time(x[1h:5m])'
    assert metric_names(expr) == {"portal:bitrix24_tasks:sum"}


def test_alerts_use_only_metrics_the_exporter_exposes_or_the_rules_record() -> None:
    contract = contract_metric_names() | recorded_metric_names()
    for rule in _rules():
        used = metric_names(rule["expr"])
        assert used or 'up{job="tasks-exporter"}' in rule["expr"], f"{rule['alert']} uses no exporter metric"
        assert used <= contract, f"{rule['alert']}: neither exposed nor recorded: {sorted(used - contract)}"


def test_recording_rules_read_exporter_metrics_and_are_named_level_metric_operations() -> None:
    contract = contract_metric_names()
    for rule in _recording_rules():
        name, used = rule["record"], metric_names(rule["expr"])
        found = re.fullmatch(r"[a-z_]+:([a-z0-9_]+):[a-z0-9_]+", name)
        assert found, f"{name}: not level:metric:operations"
        assert found[1] in used, f"{name}: the metric in its name is not what it reads ({sorted(used)})"
        assert used <= contract, f"{name}: reads metrics the collector does not expose: {sorted(used - contract)}"


def test_every_recorded_series_is_read_by_the_dashboard_or_an_alert() -> None:
    readers = [rule["expr"] for rule in _rules()]
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    readers += [target["expr"] for panel in board["panels"] for inner in [panel, *panel.get("panels", [])]
                for target in inner.get("targets", [])]
    used = set().union(*(metric_names(expr) for expr in readers))
    assert recorded_metric_names() <= used, f"recorded but never read: {sorted(recorded_metric_names() - used)}"


def test_every_recording_rule_has_a_unit_test_of_what_it_records() -> None:
    expected: set[str] = set()
    for case in yaml.safe_load(RECORDING_TEST.read_text(encoding="utf-8"))["tests"]:
        for check in case.get("promql_expr_test", []):
            expected |= {sample["labels"].split("{", 1)[0] for sample in check.get("exp_samples", [])}
    assert expected == recorded_metric_names()


def test_scrape_config_matches_the_rules() -> None:
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "tasks-exporter"
    assert job["scrape_interval"] == "30s"
    assert config["rule_files"] == ["rules.yml", "alerts.yml"]  # recorded series first: the alerts read them
    assert 'job="tasks-exporter"' in next(r["expr"] for r in _rules() if r["alert"] == "TasksExporterAbsent")


@pytest.mark.integration
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


@pytest.mark.integration
def test_promtool_check_recording_rules() -> None:
    result = _promtool("check", "rules", str(RECORDING.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_recording_rules())} rules found" in result.stdout


@pytest.mark.integration
@pytest.mark.parametrize("tests", [ALERTS_TEST, RECORDING_TEST], ids=lambda path: path.name)
def test_promtool_unit_tests_pass(tests: Path) -> None:
    result = _promtool("test", "rules", str(tests.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.integration
def test_promtool_check_config() -> None:
    result = _promtool("check", "config", str(CONFIG.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
