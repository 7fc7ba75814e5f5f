"""The committed Grafana dashboard is what grafana/dashboard.py builds, and its queries fit the metric contract."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import (
    RECORDING_RULES,
    ROOT,
    contract_metric_names,
    load_dashboard_generator,
    metric_names,
    promtool,
    recorded_metric_names,
)

pytest.importorskip("grafana_foundation_sdk", reason="grafana-foundation-sdk is in the test/dashboard extras")

GENERATOR = ROOT / "grafana" / "dashboard.py"
COMMITTED = ROOT / "grafana" / "tasks-exporter.json"


generator = load_dashboard_generator()


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return json.loads(generator.render())


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel, including panels nested in collapsed rows."""
    found = []
    for panel in board["panels"]:
        found.extend(p for p in [panel, *panel.get("panels", [])] if p["type"] != "row")
    return found


def test_committed_json_is_what_the_generator_builds() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == generator.render(), (
        "grafana/tasks-exporter.json is stale: run `python grafana/dashboard.py --write`")


def test_dashboard_uses_a_current_schema(board: dict[str, Any]) -> None:
    assert board["schemaVersion"] >= 41  # Grafana 12.x
    assert board["uid"] == "tasks-exporter"


def test_every_panel_has_a_description_a_unit_and_queries(board: dict[str, Any]) -> None:
    for panel in _panels(board):
        title = panel["title"]
        assert panel.get("description", "").strip(), f"{title}: no description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"
        assert panel.get("targets"), f"{title}: no targets"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{title}: empty expr"
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title


def test_tables_merge_their_queries_before_organizing_the_columns(board: dict[str, Any]) -> None:
    merged = [p for p in _panels(board) if p["type"] == "table"
              and any(t["id"] == "merge" for t in p.get("transformations", []))]
    assert {p["title"] for p in merged} >= {"People of the department", "Task counters per user",
                                            "People across Bitrix24 and Pachca"}
    for panel in merged:
        # organize before merge would hide a join key before the rows are joined on it
        assert [t["id"] for t in panel["transformations"]] == ["merge", "organize"], panel["title"]


@pytest.mark.parametrize("title", ["People of the department", "Task counters per user"])
def test_per_user_tables_join_on_user_id_and_hide_it(board: dict[str, Any], title: str) -> None:
    (panel,) = [p for p in _panels(board) if p["title"] == title]
    for target in panel["targets"]:  # every column's query keeps the keys the rows are merged on
        assert target["expr"].startswith("sum by (portal, user_id) ("), f"{title}/{target['refId']}"
    organize = panel["transformations"][-1]["options"]
    assert organize["excludeByName"] == {"Time": True, "user_id": True}
    # name first, then portal: the portal variable can select several portals
    columns = sorted(organize["indexByName"], key=organize["indexByName"].__getitem__)
    assert columns == ["name", "portal", *(f"Value #{t['refId']}" for t in panel["targets"])]
    assert "user_id" in panel["description"]


def test_panel_ids_are_unique(board: dict[str, Any]) -> None:
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_layout_fits_a_24_column_grid_without_overlaps(board: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        pos, title = panel["gridPos"], panel["title"]
        assert pos["x"] + pos["w"] <= 24, title
        assert pos["h"] <= 10, f"{title} is taller than 10 units"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{title} overlaps {taken.get((x, y))}"
                taken[(x, y)] = title


def test_rows_cover_bitrix24_pachca_and_exporter_health(board: dict[str, Any]) -> None:
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Organisation", "Bitrix24 tasks", "Pachca reminders", "Exporter health"]


def test_variables(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "portal", "department", "workgroup", "user", "role", "workspace",
                              "team", "person"}
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["portal"]["query"] == "label_values(bitrix24_user_info, portal)"
    assert variables["workspace"]["query"] == "label_values(pachca_reminders, workspace)"
    assert variables["role"]["query"].split(",") == ["all", "responsible", "accomplice", "auditor", "originator"]
    assert variables["team"]["query"] == 'label_values(pachca_user_tag{workspace=~"$workspace"}, tag)'
    assert variables["person"]["query"].startswith("label_values(tasks_exporter_person_info{")
    assert variables["person"]["query"].endswith("}, person)")
    for name in ("portal", "workgroup", "user", "workspace", "team", "person"):
        assert variables[name]["multi"], name
        assert variables[name]["includeAll"], name
        assert variables[name]["allValue"] == ("0" if name == "workgroup" else ".*"), name
    # a department is picked by name; the top one is the whole company, so there is no costly "All"
    assert variables["department"]["multi"]
    assert not variables["department"].get("includeAll")


def _option(board: dict[str, Any], name: str, rendered: str) -> tuple[str, str]:
    """(text, value) Grafana takes from one rendered query_result() line with the variable's regex."""
    variable = next(v for v in board["templating"]["list"] if v["name"] == name)
    js_regex = variable["regex"]
    assert js_regex.startswith("/")
    assert js_regex.endswith("/")
    found = re.compile(js_regex[1:-1].replace("(?<", "(?P<")).search(rendered)
    assert found is not None, (name, rendered)
    return found["text"], found["value"]


def test_department_variable_shows_names_and_filters_by_department_id(board: dict[str, Any]) -> None:
    rendered = ('bitrix24_department_info{department_id="13",head_user_id="5",instance="localhost:9866",'
                'job="tasks-exporter",name="Platform, core",parent_id="7",portal="main"} 1 1700000000000')
    assert _option(board, "department", rendered) == ("Platform, core", "13")
    without_head = rendered.replace('head_user_id="5"', 'head_user_id=""').replace('parent_id="7"', 'parent_id=""')
    assert _option(board, "department", without_head) == ("Platform, core", "13")


def test_workgroup_variable_shows_names_and_all_means_group_zero(board: dict[str, Any]) -> None:
    rendered = ('bitrix24_group_info{group_id="6",instance="localhost:9866",job="tasks-exporter",kind="project",'
                'name="Office move",portal="main"} 1 1700000000000')
    assert _option(board, "workgroup", rendered) == ("Office move", "6")
    assert generator.concrete('bitrix24_tasks{group_id=~"$workgroup"}') == 'bitrix24_tasks{group_id=~"0"}'


def test_user_variable_shows_names_and_filters_by_user_id(board: dict[str, Any]) -> None:
    user = next(v for v in board["templating"]["list"] if v["name"] == "user")
    js_regex = user["regex"]
    assert js_regex.startswith("/")
    assert js_regex.endswith("/")
    pattern = re.compile(js_regex[1:-1].replace("(?<", "(?P<"))
    # How Grafana renders one series of query_result(): labels in Prometheus' sorted order.
    option = ('bitrix24_user_info{instance="localhost:9866",job="tasks-exporter",name="Иван Петров",'
              'portal="main",user_id="17"} 1 1700000000000')
    found = pattern.search(option)
    assert found is not None
    assert (found["text"], found["value"]) == ("Иван Петров", "17")
    assert user["query"].startswith("query_result(bitrix24_user_info")


def test_variables_are_used_only_as_simple_regex_matchers(board: dict[str, Any]) -> None:
    names = {v["name"] for v in board["templating"]["list"]} - {"datasource"}
    for title, ref, expr in generator.panel_queries(board):
        for name in re.findall(r"\$\{?(\w+)", expr):
            if name in ("__rate_interval", "1"):  # `$1` is label_replace's capture group
                continue
            assert name in names, f"{title}/{ref}: unknown variable ${name}"
            assert f'=~"${name}"' in expr, f"{title}/{ref}: ${name} not used as =~\"${name}\""


def test_every_metric_in_the_queries_is_in_the_collector_contract_or_recorded(board: dict[str, Any]) -> None:
    contract = contract_metric_names() | recorded_metric_names()
    assert "bitrix24_tasks" in contract
    assert "tasks_exporter_api_requests_total" in contract
    for title, ref, expr in generator.panel_queries(board):
        unknown = metric_names(expr) - contract
        assert not unknown, f"{title}/{ref} uses metrics neither exposed nor recorded: {sorted(unknown)}"


def test_the_heaviest_panels_read_recorded_series(board: dict[str, Any]) -> None:
    # Each of these read 16,000-50,000 series at 5,000 users (bench/RESULTS.md, issue 12).
    for title, ref in (("Departments by overdue tasks", "A"), ("Totals per role", "A"), ("Pachca teams", "C")):
        (expr,) = [expr for t, r, expr in generator.panel_queries(board) if (t, r) == (title, ref)]
        assert metric_names(expr) & recorded_metric_names(), title
        assert "bitrix24_tasks" not in metric_names(expr), title


def test_concrete_substitutes_variables_and_keeps_capture_groups() -> None:
    expr = 'label_replace(rate(x{portal=~"$portal"}[$__rate_interval]), "a", "$1", "b", "(.+)")'
    assert generator.concrete(expr, {"portal": "main"}) == (
        'label_replace(rate(x{portal=~"main"}[1m]), "a", "$1", "b", "(.+)")')


@pytest.mark.integration
def test_every_query_parses_with_promtool(board: dict[str, Any], tmp_path: Path) -> None:
    tool = promtool()
    queries = list(generator.panel_queries(board))
    rules = [{"record": f"dashboard:query_{n}", "expr": generator.concrete(expr)}
             for n, (_, _, expr) in enumerate(queries)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# --- what the organisation queries compute, evaluated by promtool on a small company ---------------------

# Company (1) > Sales (2) > Sales Moscow (5); Company > Engineering (3). User 4 works in Sales Moscow and
# Engineering. (user_id, expired tasks in group 0 for role all and for role responsible, direct departments,
# all departments)
STAFF = ((1, 1, 1, "1", "1"), (2, 3, 2, "2", "2 1"), (3, 5, 4, "5", "5 2 1"), (4, 7, 6, "5 3", "5 3 2 1"))
DEPARTMENTS = {"1": ("Company", ""), "2": ("Sales", "1"), "5": ("Sales Moscow", "2"), "3": ("Engineering", "1")}


def _company_series() -> list[dict[str, str]]:
    job = 'job="tasks-exporter", instance="x:9866", portal="main"'
    series = []
    for user_id, expired, responsible, direct, every in STAFF:
        series.append({"series": f'bitrix24_user_info{{{job}, user_id="{user_id}", name="User {user_id}"}}',
                       "values": "1x5"})
        for counter, value in (("expired", expired), ("new_comments", 10 * user_id)):
            series.append({"series": f'bitrix24_tasks{{{job}, user_id="{user_id}", group_id="0", role="all", '
                                     f'counter="{counter}"}}', "values": f"{value}x5"})
        series.append({"series": f'bitrix24_tasks{{{job}, user_id="{user_id}", group_id="0", role="responsible", '
                                 f'counter="expired"}}', "values": f"{responsible}x5"})
        # other roles and groups must not leak into the group-0 figures
        series.append({"series": f'bitrix24_tasks{{{job}, user_id="{user_id}", group_id="0", role="auditor", '
                                 'counter="expired"}', "values": "100x5"})
        for dept in every.split():
            series.append({"series": f'bitrix24_user_department{{{job}, user_id="{user_id}", department_id="{dept}", '
                                     f'direct="{str(dept in direct.split()).lower()}"}}', "values": "1x5"})
    for dept, (name, parent) in DEPARTMENTS.items():
        series.append({"series": f'bitrix24_department_info{{{job}, department_id="{dept}", name="{name}", '
                                 f'parent_id="{parent}", head_user_id=""}}', "values": "1x5"})
    for group_id, name, kind, members in (("1", "Sales team", "group", ((2, 2), (3, 4))),
                                          ("2", "Website", "project", ((4, 1),))):
        series.append({"series": f'bitrix24_group_info{{{job}, group_id="{group_id}", name="{name}", kind="{kind}"}}',
                       "values": "1x5"})
        for user_id, expired in members:
            series.append({"series": f'bitrix24_tasks{{{job}, user_id="{user_id}", group_id="{group_id}", '
                                     'role="all", counter="expired"}', "values": f"{expired}x5"})
    return series + _people_series()


# People in both tools: anna (Bitrix24 user 2; Pachca user 12 in `team`, tags Backend and On-call, and user 7
# in `ops`) and boris (Bitrix24 user 3; Pachca user 13, tag Backend, nothing overdue). Pachca user 15 is matched
# from two portals under two names (`label: name`), so one performer is two persons. Pachca user 14 (tag
# Design) and Bitrix24 user 4 are matched with nobody.
PEOPLE = (("anna@example.com", "main", "2", "team", "12"), ("anna@example.com", "main", "2", "ops", "7"),
          ("boris@example.com", "main", "3", "team", "13"), ("Carol Ivanova", "main", "5", "team", "15"),
          ("Carol I.", "second", "5", "team", "15"))
TAGS = (("team", "12", "Backend"), ("team", "12", "On-call"), ("team", "13", "Backend"), ("team", "14", "Design"))
OVERDUE_REMINDERS = (("team", "12", 4), ("ops", "7", 1), ("team", "14", 6), ("team", "15", 2))


def _people_series() -> list[dict[str, str]]:
    job = 'job="tasks-exporter", instance="x:9866"'
    series = [{"series": f'tasks_exporter_person_info{{{job}, person="{person}", portal="{portal}", '
                         f'bitrix24_user_id="{b24}", workspace="{ws}", pachca_user_id="{pachca}"}}', "values": "1x5"}
              for person, portal, b24, ws, pachca in PEOPLE]
    series += [{"series": f'pachca_user_tag{{{job}, workspace="{ws}", user_id="{uid}", tag="{tag}"}}',
                "values": "1x5"} for ws, uid, tag in TAGS]
    series += [{"series": f'pachca_performer_reminders_overdue{{{job}, workspace="{ws}", performer_id="{uid}"}}',
                "values": f"{n}x5"} for ws, uid, n in OVERDUE_REMINDERS]
    series += [{"series": f'tasks_exporter_people{{{job}, portal="main", workspace="{ws}", state="{state}"}}',
                "values": f"{n}x5"} for ws, state, n in (("team", "matched", 2), ("ops", "matched", 1),
                                                         ("team", "pachca_only", 1), ("ops", "bitrix24_only", 3))]
    return series


def _expect(board: dict[str, Any], title: str, values: dict[str, str],
            samples: list[tuple[dict[str, str], float]], ref: str = "A") -> dict[str, Any]:
    (expr,) = [expr for t, r, expr in generator.panel_queries(board) if (t, r) == (title, ref)]
    return {"expr": generator.concrete(expr, values), "eval_time": "2m",
            "exp_samples": [{"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}",
                             "value": value} for labels, value in samples]}


@pytest.mark.integration
def test_organisation_queries_count_subtrees_teams_and_people(board: dict[str, Any], tmp_path: Path) -> None:
    main = {"portal": "main"}
    tests = [
        # role responsible whatever the role variable: recorded by department:bitrix24_tasks:sum
        *(_expect(board, "Departments by overdue tasks", {"role": role}, [
            ({**main, "department_id": "1", "name": "Company"}, 13),
            ({**main, "department_id": "2", "name": "Sales"}, 12),
            ({**main, "department_id": "5", "name": "Sales Moscow"}, 10),
            ({**main, "department_id": "3", "name": "Engineering"}, 6)]) for role in ("all", "auditor")),
        # every user of the portal whatever the user variable, for the chosen workgroup: portal:bitrix24_tasks:sum
        *(_expect(board, "Totals per role", {"user": user}, [
            ({"role": "all", "counter": "expired"}, 16), ({"role": "all", "counter": "new_comments"}, 100),
            ({"role": "responsible", "counter": "expired"}, 13), ({"role": "auditor", "counter": "expired"}, 400)])
          for user in (".*", "2")),
        _expect(board, "Totals per role", {"workgroup": "1"}, [({"role": "all", "counter": "expired"}, 6)]),
        # a column per counter, each its own query; the department's people and those of the ones below it
        _expect(board, "People of the department", {"department": "5|3"}, [
            ({**main, "user_id": "3", "name": "User 3"}, 5), ({**main, "user_id": "4", "name": "User 4"}, 7)]),
        _expect(board, "People of the department", {"department": "5|3"}, [
            ({**main, "user_id": "3", "name": "User 3"}, 30), ({**main, "user_id": "4", "name": "User 4"}, 40)],
            ref="B"),
        _expect(board, "People of the department", {"department": "3"}, [
            ({**main, "user_id": "4", "name": "User 4"}, 7)]),
        _expect(board, "People of the department", {"department": "2", "role": "responsible"}, [
            ({**main, "user_id": "2", "name": "User 2"}, 2), ({**main, "user_id": "3", "name": "User 3"}, 4),
            ({**main, "user_id": "4", "name": "User 4"}, 6)]),
        _expect(board, "Task counters per user", {"user": "1|4"}, [
            ({**main, "user_id": "1", "name": "User 1"}, 10), ({**main, "user_id": "4", "name": "User 4"}, 40)],
            ref="B"),
        _expect(board, "Workgroups by overdue tasks", {}, [
            ({**main, "group_id": "1", "name": "Sales team", "kind": "group"}, 6),
            ({**main, "group_id": "2", "name": "Website", "kind": "project"}, 1)]),
    ]
    anna, boris = {"person": "anna@example.com"}, {"person": "boris@example.com"}
    both = "People across Bitrix24 and Pachca"
    tests += [
        _expect(board, both, {}, [(anna, 3), (boris, 5)], ref="A"),
        _expect(board, both, {}, [(anna, 20), (boris, 30)], ref="B"),
        _expect(board, both, {}, [(anna, 5), (boris, 0), ({"person": "Carol Ivanova"}, 2),
                                  ({"person": "Carol I."}, 2)], ref="C"),  # anna: both workspaces
        _expect(board, both, {"person": "boris@example.com"}, [(boris, 0)], ref="C"),
        _expect(board, "Pachca teams", {}, [({"tag": "Backend"}, 2), ({"tag": "On-call"}, 1),
                                            ({"tag": "Design"}, 1)], ref="A"),
        _expect(board, "Pachca teams", {}, [({"tag": "Backend"}, 4), ({"tag": "On-call"}, 4),
                                            ({"tag": "Design"}, 6)], ref="B"),
        # role responsible whatever the role variable: recorded by team:bitrix24_tasks:sum
        *(_expect(board, "Pachca teams", {"role": role}, [({"tag": "Backend"}, 6), ({"tag": "On-call"}, 2)],
                  ref="C") for role in ("all", "auditor")),
        _expect(board, "Pachca teams", {"team": "On-call"}, [({"tag": "On-call"}, 2)], ref="C"),
        _expect(board, "People matched", {}, [({"state": "matched"}, 3), ({"state": "pachca_only"}, 1),
                                              ({"state": "bitrix24_only"}, 3)]),
    ]
    path = tmp_path / "organisation_test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(RECORDING_RULES)], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": _company_series(), "promql_expr_test": tests}]}), encoding="utf-8")
    result = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
