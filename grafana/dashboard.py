"""The tasks-exporter Grafana dashboard, built with grafana-foundation-sdk so it is reviewed as code.

Regenerate the committed JSON after any change (tests/test_dashboard.py compares the two):

    python grafana/dashboard.py --write        # or: python grafana/dashboard.py > grafana/tasks-exporter.json

Every query must return at least one series while the exporter runs healthy against its demo simulator and
Prometheus evaluates prometheus/rules.yml (some panels read the series those recording rules write).
Queries over series that exist only after a fault (errors, rate-limit answers, failed cycles) therefore end
in `or on(...) (0 * <a series that always exists>)`, which draws a zero line instead of "No data".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m
from grafana_foundation_sdk.models import prometheus as prom_m

OUTPUT = Path(__file__).with_name("tasks-exporter.json")
UID = "tasks-exporter"
TITLE = "Tasks exporter: Bitrix24 tasks and Pachca reminders"
DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")
DAY = 86400.0

# --- PromQL building blocks -----------------------------------------------------------------------
# Variables are only ever used in the plain `label=~"$var"` form, so a test can substitute them.

B24 = 'portal=~"$portal", user_id=~"$user", group_id=~"$workgroup"'
TASKS = f'bitrix24_tasks{{{B24}, role=~"$role"}}'
EXPIRED = f'bitrix24_tasks{{{B24}, role=~"$role", counter="expired"}}'
# Appended to a vector labelled (portal, user_id): adds the user's display name as label `name`.
WITH_B24_NAME = (' * on(portal, user_id) group_left(name) '
                 'max by (portal, user_id, name) (bitrix24_user_info{portal=~"$portal"})')

WS = 'workspace=~"$workspace"'
PERFORMER_OVERDUE = f"sum by (workspace, performer_id) (pachca_performer_reminders_overdue{{{WS}}})"
# pachca_user_info is keyed by user_id; performers by performer_id. label_replace copies one to the other.
PACHCA_NAMES = (f"label_replace(max by (workspace, user_id, name) (pachca_user_info{{{WS}}}), "
                '"performer_id", "$1", "user_id", "(.+)")')

# Series that exist for every configured source/target once it has run; `0 * ...` makes them zero lines.
ZERO_PER_SOURCE = "(0 * max by (source) (tasks_exporter_source_up))"
ZERO_PER_TARGET = "(0 * max by (source, target) (tasks_exporter_source_up))"
ZERO_PER_WORKSPACE = f"(0 * max by (workspace) (pachca_reminder_oldest_overdue_seconds{{{WS}}}))"
ZERO_PER_PORTAL = '(0 * max by (portal) (bitrix24_users{portal=~"$portal"}))'
RATE = "[$__rate_interval]"
REQUESTS = "tasks_exporter_api_requests_total"

# The organisation view. A department's subtree is one selector: bitrix24_user_department has a series for each
# of a user's own departments and for every department above them, so joining a per-user vector to it and
# summing by department_id counts everyone below the department too.
PORTAL = 'portal=~"$portal"'
# Series recorded by prometheus/rules.yml: a panel reading them reads a few hundred sums, not every user's series
# (bench/RESULTS.md, issue 12). The rules file must be loaded with the alerts.
SUBTREE_RESPONSIBLE_EXPIRED = f"sum by (portal, department_id) (department:bitrix24_tasks:sum{{{PORTAL}}})"
PORTAL_TOTALS = 'portal:bitrix24_tasks:sum{portal=~"$portal", group_id=~"$workgroup"}'
TEAM_TOTALS = 'team:bitrix24_tasks:sum{workspace=~"$workspace", tag=~"$team"}'
WITH_DEPARTMENT_NAME = (" * on(portal, department_id) group_left(name) "
                        f"max by (portal, department_id, name) (bitrix24_department_info{{{PORTAL}}})")
# The users of the selected departments and of those below them; `and` keeps a user in two of them once.
IN_DEPARTMENT = f'bitrix24_user_department{{{PORTAL}, department_id=~"$department"}}'
GROUP_EXPIRED = (f'sum by (portal, group_id) (bitrix24_tasks{{{PORTAL}, group_id!="0", role=~"$role", '
                 'counter="expired"})')
WITH_GROUP_NAME = (" * on(portal, group_id) group_left(name, kind) "
                   f"max by (portal, group_id, name, kind) (bitrix24_group_info{{{PORTAL}}})")
# One person across both tools: tasks_exporter_person_info, keyed for a join from either side. The per-user and
# per-performer vectors are always the "one" side of those joins, so a user matched in several pairs still works.
PERSON = 'tasks_exporter_person_info{person=~"$person", portal=~"$portal", workspace=~"$workspace"}'
PERSON_BY_B24_USER = (f'max by (portal, user_id, person) (label_replace({PERSON}, "user_id", "$1", '
                      '"bitrix24_user_id", "(.+)"))')
PERSON_BY_PERFORMER = (f'max by (workspace, performer_id, person) (label_replace({PERSON}, "performer_id", "$1", '
                       '"pachca_user_id", "(.+)"))')
ZERO_PER_PERSON = f"(0 * max by (person) ({PERSON}))"
# Pachca employee tags (teams), keyed by performer_id for a join with the per-performer reminder counts.
TEAM_TAGS = 'pachca_user_tag{workspace=~"$workspace", tag=~"$team"}'
TEAM_MEMBERS = f'label_replace({TEAM_TAGS}, "performer_id", "$1", "user_id", "(.+)")'


# --- small builders -------------------------------------------------------------------------------


def query(expr: str, legend: str = "__auto", *, ref: str = "A", instant: bool = False,
          as_table: bool = False) -> prom_b.Dataquery:
    q = prom_b.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE).legend_format(legend)
    if instant:
        q = q.instant()
    if as_table:
        q = q.format(prom_m.PromQueryFormat.TABLE)
    return q


def steps(*pairs: tuple[float | None, str]) -> dash_b.ThresholdsConfig:
    """Absolute thresholds; the first pair's value is None (the base colour)."""
    return (dash_b.ThresholdsConfig().mode(dash_m.ThresholdsMode.ABSOLUTE)
            .steps([dash_m.Threshold(value=v, color=c) for v, c in pairs]))


def override(key: str, value: Any) -> dash_m.DynamicConfigValue:
    return dash_m.DynamicConfigValue(id_val=key, value=value)


def last_value() -> common_b.ReduceDataOptions:
    return common_b.ReduceDataOptions().values(False).calcs(["lastNotNull"])


def graph(title: str, description: str, unit: str, *, w: int, h: int = 8) -> timeseries.Panel:
    legend = (common_b.VizLegendOptions().show_legend(True).display_mode(common_m.LegendDisplayMode.LIST)
              .placement(common_m.LegendPlacement.BOTTOM))
    tooltip = (common_b.VizTooltipOptions().mode(common_m.TooltipDisplayMode.MULTI)
               .sort(common_m.SortOrder.DESCENDING))
    return (timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
            .span(w).height(h).legend(legend).tooltip(tooltip).fill_opacity(10).line_width(1).min(0)
            .thresholds(steps((None, "green"))))


def bars(title: str, description: str, unit: str, *, w: int, h: int = 8) -> bargauge.Panel:
    return (bargauge.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
            .span(w).height(h).orientation(common_m.VizOrientation.HORIZONTAL)
            .display_mode(common_m.BarGaugeDisplayMode.GRADIENT).reduce_options(last_value())
            .show_unfilled(True).min(0))


def single(title: str, description: str, unit: str, *, w: int, h: int) -> stat.Panel:
    return (stat.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
            .span(w).height(h).reduce_options(last_value()).text_mode(common_m.BigValueTextMode.VALUE_AND_NAME)
            .color_mode(common_m.BigValueColorMode.VALUE).graph_mode(common_m.BigValueGraphMode.NONE))


def joined_table(title: str, description: str, keys: tuple[str, ...], headers: Mapping[str, str], *, w: int,
                 h: int, hidden: tuple[str, ...] = ()) -> table.Panel:
    """One row per value of the `keys` labels (the first columns, in order), one column per query (refId ->
    header), from instant table queries. `merge` joins the queries on the labels they share, so a join key
    nobody needs to read stays in the queries and `organize` hides it afterwards (`hidden`)."""
    visible = [*keys, *(f"Value #{ref}" for ref in headers)]
    transformations = [
        dash_m.DataTransformerConfig(id_val="merge", options={}),
        dash_m.DataTransformerConfig(id_val="organize", options={
            "excludeByName": dict.fromkeys(["Time", *hidden], True),
            "indexByName": {field: i for i, field in enumerate(visible)},
            "renameByName": {f"Value #{ref}": header for ref, header in headers.items()}}),
    ]
    return (table.Panel().title(title).description(description).datasource(DATASOURCE).unit("short")
            .span(w).height(h).transformations(transformations))


def matrix(title: str, description: str, row_field: str, header: str, *, w: int, h: int) -> table.Panel:
    """A table of rows (`row_field`) x counters from a long instant table (row label, counter, Value)."""
    transformations = [
        dash_m.DataTransformerConfig(id_val="groupingToMatrix", options={
            "columnField": "counter", "rowField": row_field, "valueField": "Value", "emptyValue": "null"}),
        dash_m.DataTransformerConfig(id_val="organize", options={
            "renameByName": {f"{row_field}\\counter": header}}),
    ]
    return (table.Panel().title(title).description(description).datasource(DATASOURCE).unit("short")
            .span(w).height(h).transformations(transformations))


# --- variables ------------------------------------------------------------------------------------

# A Prometheus `query_result(...)` option renders each series as `metric{l1="v1",l2="v2"} value ts`, labels in
# Prometheus' sorted order (..., name, portal, user_id). The named groups make the option's text the user's name
# and its value the user_id, so panels filter with `user_id=~"$user"` and need no join on names.
USER_QUERY = 'query_result(bitrix24_user_info{portal=~"$portal"})'
USER_REGEX = '/[{,]name="(?<text>[^"]*)".*[{,]user_id="(?<value>[^"]*)"/'
# The same for departments (department_id sorts before name) and workgroups (group_id before name).
DEPARTMENT_QUERY = 'query_result(bitrix24_department_info{portal=~"$portal"})'
DEPARTMENT_REGEX = '/[{,]department_id="(?<value>[^"]*)".*[{,]name="(?<text>[^"]*)"/'
WORKGROUP_QUERY = 'query_result(bitrix24_group_info{portal=~"$portal"})'
WORKGROUP_REGEX = '/[{,]group_id="(?<value>[^"]*)".*[{,]name="(?<text>[^"]*)"/'
ALL = dash_m.VariableOption(text="All", value="$__all")


def label_values(name: str, label: str, selector: str, description: str) -> dash_b.QueryVariable:
    expr = f"label_values({selector}, {label})"
    return (dash_b.QueryVariable(name).description(description).datasource(DATASOURCE).query(expr)
            .definition(expr).refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dash_m.VariableSort.NATURAL_ASC))


def named(name: str, label: str, expr: str, regex: str, description: str) -> dash_b.QueryVariable:
    """A variable listing each series of `expr` by its `name` label, with an id label as the value."""
    return (dash_b.QueryVariable(name).label(label).datasource(DATASOURCE).query(expr).definition(expr)
            .regex(regex).refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dash_m.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC).multi(True).description(description))


def variables() -> list[Builder[dash_m.VariableModel]]:
    datasource = (dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus")
                  .description("The Prometheus that scrapes tasks-exporter."))
    portal = (label_values("portal", "portal", "bitrix24_user_info", "Bitrix24 portals (names from the config).")
              .label("Portal").multi(True).include_all(True).all_value(".*").current(ALL))
    user = (dash_b.QueryVariable("user").label("User").datasource(DATASOURCE).query(USER_QUERY)
            .definition(USER_QUERY).regex(USER_REGEX).refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dash_m.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
            .multi(True).include_all(True).all_value(".*").current(ALL)
            .description("Bitrix24 users shown by name; the value is the user_id. The regex takes `name` as "
                         "text and `user_id` as value from each bitrix24_user_info series of a query_result."))
    role = (dash_b.CustomVariable("role").label("Role").values("all,responsible,accomplice,auditor,originator")
            .current(dash_m.VariableOption(text="all", value="all"))
            .description("Role the Bitrix24 counters are read for; `all` is every role together."))
    # No "All" department: the top department (the whole company) is one of the options, and selecting it
    # reads one bitrix24_user_department series per user instead of every user's whole chain.
    department = named("department", "Department", DEPARTMENT_QUERY, DEPARTMENT_REGEX,
                       "Bitrix24 departments by name (bitrix24_department_info); the value is the department_id. "
                       "A department includes every department below it: pick the top one for the whole "
                       "company.")
    workgroup = (named("workgroup", "Workgroup", WORKGROUP_QUERY, WORKGROUP_REGEX,
                       "Bitrix24 workgroups and projects by name (bitrix24_group_info); the value is the group_id. "
                       "All is group_id 0, the counters Bitrix24 reports for all groups together (do not add "
                       "groups up).")
                 .include_all(True).all_value("0").current(ALL))
    workspace = (label_values("workspace", "workspace", "pachca_reminders", "Pachca workspaces (config names).")
                 .label("Workspace").multi(True).include_all(True).all_value(".*").current(ALL))
    team = (label_values("team", "tag", 'pachca_user_tag{workspace=~"$workspace"}',
                         "Pachca employee tags (teams) from pachca_user_tag.")
            .label("Team").multi(True).include_all(True).all_value(".*").current(ALL))
    person = (label_values("person", "person",
                           'tasks_exporter_person_info{portal=~"$portal", workspace=~"$workspace"}',
                           "People matched across Bitrix24 and Pachca by the `people` section: the e-mail, or "
                           "the Bitrix24 name with `label: name`.")
              .label("Person").multi(True).include_all(True).all_value(".*").current(ALL))
    return [datasource, portal, department, workgroup, user, role, workspace, team, person]


# --- the organisation ------------------------------------------------------------------------------


def organisation_panels() -> list[Builder[Any]]:
    departments = (bars("Departments by overdue tasks", "The 15 Bitrix24 departments whose people are "
                        "responsible for most expired tasks (all groups), every department below included; each "
                        "task counts once, for its responsible person, and the role variable is not applied. "
                        "Reads department:bitrix24_tasks:sum, which prometheus/rules.yml records (bitrix24_tasks "
                        "joined with bitrix24_user_department), named via bitrix24_department_info.",
                        "short", w=8, h=9)
                   .thresholds(steps((None, "green"), (10, "yellow"), (50, "red")))
                   .with_target(query(f"topk(15, {SUBTREE_RESPONSIBLE_EXPIRED}{WITH_DEPARTMENT_NAME})", "{{name}}",
                                      instant=True)))
    # The department filter is applied to the names (one series per user), not to the counters (one per user
    # and counter): the same rows for less work (bench/RESULTS.md, issue 12).
    in_department_names = (f" * on(portal, user_id) group_left(name) (max by (portal, user_id, name) "
                           f"(bitrix24_user_info{{{PORTAL}}}) and on(portal, user_id) {IN_DEPARTMENT})")
    people = person_counters("People of the department", "Expired tasks and unread comments (all groups, the "
                             "chosen role) of every person in the selected departments and the departments below "
                             f"them. {PERSON_COLUMNS_NOTE}",
                             lambda counter: f'bitrix24_tasks{{{PORTAL}, group_id="0", role=~"$role", '
                                             f'counter="{counter}"}}', in_department_names, w=8)
    workgroups = (bars("Workgroups by overdue tasks", "The 15 Bitrix24 workgroups and projects with most expired "
                       "tasks summed over their monitored members (the chosen role), named via "
                       "bitrix24_group_info. With `groups: auto` only members' counters are read.",
                       "short", w=8, h=9)
                  .thresholds(steps((None, "green"), (10, "yellow"), (50, "red")))
                  .with_target(query(f"topk(15, {GROUP_EXPIRED}{WITH_GROUP_NAME})", "{{name}} ({{kind}})",
                                     instant=True)))
    return [dash_b.Row("Organisation"), departments, people, workgroups, *people_panels()]


# The per-person tables read one query per column, each joined with the names by itself: one query for every
# counter and name of a 5,000-user company answered in 220-266 ms, one counter with the names in ~85 ms
# (bench/RESULTS.md, issue 12). The columns are the counters current portals report (docs/api-notes.md).
PERSON_COLUMNS = {"A": "expired", "B": "new_comments"}
PERSON_COLUMNS_NOTE = ("An older portal's other counters (wo_deadline, expired_soon, not_viewed, wait_ctrl) "
                       "are in Counters over time.")
# portal stays visible: the portal variable can select several portals, and user ids and names repeat across them.
PERSON_ROWS_NOTE = ("Each row shows the user's name and portal (several portals can be selected); the user_id the "
                    "columns are merged on is hidden.")


def person_counters(title: str, description: str, selector: Callable[[str], str], names: str, *,
                    w: int) -> table.Panel:
    """One row per Bitrix24 user (merged on portal and user_id, shown by name and portal), a column per counter
    of PERSON_COLUMNS."""
    panel = (joined_table(title, f"{description} {PERSON_ROWS_NOTE}", ("name", "portal"), PERSON_COLUMNS,
                          hidden=("user_id",), w=w, h=9)
             .thresholds(steps((None, "text"), (1, "yellow"), (10, "red")))
             .cell_options(common_m.TableColorTextCellOptions())
             .sort_by([common_b.TableSortByFieldState().display_name("expired").desc(True)]))
    for ref, counter in PERSON_COLUMNS.items():
        panel = panel.with_target(query(f"sum by (portal, user_id) ({selector(counter)}){names}", ref=ref,
                                        instant=True, as_table=True))
    return panel


def b24_per_person(counter: str) -> str:
    """A Bitrix24 counter (all groups, the chosen role) per matched person, e.g. {person="a@x.io"} 3."""
    return (f"sum by (person) ({PERSON_BY_B24_USER} * on(portal, user_id) group_left sum by (portal, user_id) "
            f"(bitrix24_tasks{{{PORTAL}, group_id=\"0\", role=~\"$role\", counter=\"{counter}\"}}))")


def people_panels() -> list[Builder[Any]]:
    persons = (joined_table("People across Bitrix24 and Pachca", "One row per person matched by the `people` "
                            "section (tasks_exporter_person_info): their Bitrix24 expired tasks and unread "
                            "comments (all groups, the chosen role) next to their overdue Pachca reminders. A "
                            "person without overdue reminders reads 0; a blank cell is a user the exporter "
                            "does not read.", ("person",),
                            {"A": "Bitrix24 overdue", "B": "Bitrix24 unread comments", "C": "Pachca overdue"},
                            w=10, h=9)
               .thresholds(steps((None, "text"), (1, "yellow"), (10, "red")))
               .cell_options(common_m.TableColorTextCellOptions())
               .sort_by([common_b.TableSortByFieldState().display_name("Bitrix24 overdue").desc(True)])
               .with_target(query(b24_per_person("expired"), instant=True, as_table=True))
               .with_target(query(b24_per_person("new_comments"), ref="B", instant=True, as_table=True))
               .with_target(query(f"sum by (person) ({PERSON_BY_PERFORMER} * on(workspace, performer_id) "
                                  f"group_left {PERFORMER_OVERDUE}) or on(person) {ZERO_PER_PERSON}",
                                  ref="C", instant=True, as_table=True)))
    team_overdue = (f"sum by (tag) ({PERFORMER_OVERDUE} * on(workspace, performer_id) group_right {TEAM_MEMBERS}) "
                    f"or on(tag) (0 * count by (tag) ({TEAM_TAGS}))")
    teams = (joined_table("Pachca teams", "Each Pachca employee tag (list_tags, pachca_user_tag): how many "
                          "people carry it, their overdue Pachca reminders, and the Bitrix24 expired tasks "
                          "(role responsible: a task counts once however many of the team take part) of those "
                          "of them the `people` section matched (blank: nobody matched). The Bitrix24 column "
                          "reads team:bitrix24_tasks:sum, which prometheus/rules.yml records.", ("tag",),
                          {"A": "People", "B": "Pachca overdue", "C": "Bitrix24 overdue"}, w=9, h=9)
             .sort_by([common_b.TableSortByFieldState().display_name("Pachca overdue").desc(True)])
             .with_target(query(f"count by (tag) ({TEAM_TAGS})", instant=True, as_table=True))
             .with_target(query(team_overdue, ref="B", instant=True, as_table=True))
             .with_target(query(f"sum by (tag) ({TEAM_TOTALS})", ref="C", instant=True, as_table=True)))
    matched = (single("People matched", "Users of each portal and workspace pair by match state "
                      "(tasks_exporter_people): matched, bitrix24_only, pachca_only, and ambiguous (an e-mail "
                      "several users share). Many unmatched users mean differing e-mails in the two tools.",
                      "short", w=5, h=9)
               .thresholds(steps((None, "blue")))
               .with_target(query(f"sum by (state) (tasks_exporter_people{{{PORTAL}, {WS}}})", "{{state}}",
                                  instant=True)))
    return [persons, teams, matched]


# --- Bitrix24 -------------------------------------------------------------------------------------


def bitrix24_panels() -> list[Builder[Any]]:
    top = (bars("Top users by expired tasks", "The 10 users with most expired (overdue) tasks for the chosen "
                "role and group: bitrix24_tasks{counter=\"expired\"}, named via bitrix24_user_info.",
                "short", w=8, h=9)
           .thresholds(steps((None, "green"), (3, "yellow"), (10, "red")))
           .with_target(query(f"topk(10, sum by (portal, user_id) ({EXPIRED}){WITH_B24_NAME})", "{{name}}",
                              instant=True)))
    per_user = person_counters("Task counters per user", "Expired tasks and unread comments per user (rows) "
                               f"for the chosen role and group. {PERSON_COLUMNS_NOTE}",
                               lambda counter: f'bitrix24_tasks{{{B24}, role=~"$role", counter="{counter}"}}',
                               WITH_B24_NAME, w=16)
    over_time = (graph("Counters over time", "Each Bitrix24 counter summed over the selected users, for the "
                       "chosen role and group.", "short", w=10)
                 .with_target(query(f"sum by (counter) ({TASKS})", "{{counter}}")))
    per_role = (matrix("Totals per role", "Each counter summed over every user of the selected portals, for "
                       "the chosen workgroup, one row per role (the user and role variables are not applied; "
                       "per-user figures are in Task counters per user). Reads portal:bitrix24_tasks:sum, which "
                       "prometheus/rules.yml records. `all` is what Bitrix24 reports for all roles at once, not "
                       "the sum of the other rows.", "role", "Role", w=8, h=8)
                .with_target(query(f"sum by (role, counter) ({PORTAL_TOTALS})", instant=True, as_table=True)))
    coverage = (single("Portal coverage", "Users monitored per portal; users whose counters the webhook could "
                       "not see (reading other users' counters needs an administrator's webhook); batch "
                       "commands that failed in the last good cycle.", "short", w=6, h=8)
                .thresholds(steps((None, "blue")))
                .with_target(query('sum by (portal) (bitrix24_users{portal=~"$portal"})', "{{portal}} users",
                                   instant=True))
                .with_target(query('sum by (portal) (bitrix24_users_hidden{portal=~"$portal"})',
                                   "{{portal}} hidden", ref="B", instant=True))
                .with_target(query('sum by (portal) (bitrix24_commands_failed{portal=~"$portal"})',
                                   "{{portal}} failed commands", ref="C", instant=True))
                .override_by_query("B", [override("thresholds", steps((None, "green"), (1, "orange")).build())])
                .override_by_query("C", [override("thresholds", steps((None, "green"), (1, "red")).build())]))
    return [dash_b.Row("Bitrix24 tasks"), top, per_user, over_time, per_role, coverage]


# --- Pachca ---------------------------------------------------------------------------------------


def pachca_panels() -> list[Builder[Any]]:
    by_status = (bars("Reminders by status and kind", "Pachca reminders by status and kind "
                      "(pachca_reminders summed over priorities).", "short", w=6)
                 .thresholds(steps((None, "blue")))
                 .with_target(query(f"sum by (kind, status) (pachca_reminders{{{WS}}})",
                                    "{{kind}} · {{status}}", instant=True)))
    trend = (graph("Overdue and due soon", "Open reminders past their due time, and open reminders due within "
                   "the configured due_soon window, per workspace (a zero line when there are none).",
                   "short", w=8)
             .with_target(query(f"sum by (workspace) (pachca_reminders_overdue{{{WS}}}) "
                                f"or on(workspace) {ZERO_PER_WORKSPACE}", "{{workspace}} overdue"))
             .with_target(query(f"sum by (workspace) (pachca_reminders_due_soon{{{WS}}}) "
                                f"or on(workspace) {ZERO_PER_WORKSPACE}", "{{workspace}} due soon", ref="B")))
    performers = (bars("Overdue by performer", "The 15 performers with most overdue open reminders, named from "
                       "pachca_user_info; a performer without a known name shows as its id. When nobody is "
                       "overdue a single 'nobody overdue' bar reads 0.", "short", w=6)
                  .thresholds(steps((None, "green"), (3, "yellow"), (10, "red")))
                  .with_target(query(
                      f"topk(15, ({PERFORMER_OVERDUE} * on(workspace, performer_id) group_left(name) "
                      f"{PACHCA_NAMES}) or on(workspace, performer_id) {PERFORMER_OVERDUE}) "
                      'or on() label_replace(vector(0), "name", "nobody overdue", "", "")',
                      "{{name}} {{performer_id}}", instant=True)))
    oldest = (single("Oldest overdue reminder", "How long each workspace's most overdue open reminder is past "
                     "its due time (0 when none). Yellow after a day, red after a week, when the "
                     "PachcaOverdueReminderTooOld alert fires.", "s", w=4, h=8)
              .graph_mode(common_m.BigValueGraphMode.AREA)
              .thresholds(steps((None, "green"), (DAY, "yellow"), (7 * DAY, "red")))
              .with_target(query(f"max by (workspace) (pachca_reminder_oldest_overdue_seconds{{{WS}}})",
                                 "{{workspace}}")))
    return [dash_b.Row("Pachca reminders"), by_status, trend, performers, oldest]


# --- exporter health ------------------------------------------------------------------------------


def health_state_panels() -> list[Builder[Any]]:
    up_down = dash_m.ValueMap(options={"0": dash_m.ValueMappingResult(text="DOWN", color="red", index=0),
                                       "1": dash_m.ValueMappingResult(text="UP", color="green", index=1)})
    up = (single("Source up", "UP when the source's last collection cycle succeeded (tasks_exporter_source_up). "
                 "A DOWN source keeps serving its last good data; the failed cycles panel shows why.",
                 "none", w=4, h=6)
          .color_mode(common_m.BigValueColorMode.BACKGROUND).mappings([up_down])
          .thresholds(steps((None, "red"), (1, "green")))
          .with_target(query("max by (source, target) (tasks_exporter_source_up)", "{{source}} {{target}}",
                             instant=True)))
    age = (single("Since last successful cycle", "time() - tasks_exporter_source_last_success_timestamp_seconds"
                  ": should stay below the interval plus one cycle. Yellow at 3 min, red at 10 min (for the "
                  "default 60s interval); the TasksExporterDataStale alert fires above 3 intervals.",
                  "s", w=5, h=6)
           .graph_mode(common_m.BigValueGraphMode.AREA)
           .thresholds(steps((None, "green"), (180, "yellow"), (600, "red")))
           .with_target(query("time() - max by (source, target) "
                              "(tasks_exporter_source_last_success_timestamp_seconds)", "{{source}} {{target}}")))
    duration = (graph("Cycle duration", "Wall time of each source's last collection cycle (solid) against its "
                      "configured interval (dashed); a cycle longer than the interval delays the next one.",
                      "s", w=5, h=6)
                .with_target(query("max by (source, target) "
                                   "(tasks_exporter_source_collection_duration_seconds)", "{{target}}"))
                .with_target(query("max by (source, target) (tasks_exporter_source_interval_seconds)",
                                   "{{target}} interval", ref="B"))
                .override_by_query("B", [override("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})]))
    bound = (bars("Cycle bound vs interval", "The least time the API's rate limit allows for one cycle of the "
                  "current size (tasks_exporter_source_cycle_bound_seconds), as a share of the interval. Above "
                  "100% cycles run back to back and data is older than the interval: lengthen the interval or "
                  "monitor fewer users, groups or roles.", "percentunit", w=5, h=6)
             .thresholds(steps((None, "green"), (0.8, "yellow"), (1, "red"))).max(1.5)
             .with_target(query("max by (source, target) (tasks_exporter_source_cycle_bound_seconds) "
                                "/ max by (source, target) (tasks_exporter_source_interval_seconds)",
                                "{{source}} {{target}}", instant=True)))
    operating = (graph("Bitrix24 method operating time", "Execution time each portal has accounted to a REST "
                       "method in its 10-minute window (time.operating). Bitrix24 blocks a method above 480 s "
                       "(dashed line). A zero line for a portal without the data.", "s", w=5, h=6)
                 .thresholds(steps((None, "green"), (480, "red")))
                 .thresholds_style(common_b.GraphThresholdsStyleConfig()
                                   .mode(common_m.GraphThresholdsStyleMode.DASHED))
                 .with_target(query('max by (portal, method) (bitrix24_method_operating_seconds{portal=~"$portal"})'
                                    f" or on(portal) {ZERO_PER_PORTAL}", "{{portal}} {{method}}")))
    return [up, age, duration, bound, operating]


def health_traffic_panels() -> list[Builder[Any]]:
    requests = (graph("API requests by outcome", "Requests per second to the Bitrix24 and Pachca APIs by "
                      "outcome: success, auth, rate_limited, server_error, timeout, network_error, "
                      "invalid_response, api_error.", "reqps", w=6)
                .with_target(query(f"sum by (source, outcome) (rate({REQUESTS}{RATE}))", "{{source}} {{outcome}}"))
                .override_by_regexp(".* success", [override("color", {"mode": "fixed", "fixedColor": "green"})]))
    errors = (graph("API errors", "Requests per second that did not succeed, by outcome (A), and errors the APIs "
                    "answered by API error code, batch commands included (B). Zero lines when healthy.",
                    "reqps", w=6)
              .with_target(query(f'sum by (source, outcome) (rate({REQUESTS}{{outcome!="success"}}{RATE})) '
                                 f"or on(source) {ZERO_PER_SOURCE}", "{{source}} {{outcome}}"))
              .with_target(query(f"sum by (source, code) (rate(tasks_exporter_api_errors_total{RATE})) "
                                 f"or on(source) {ZERO_PER_SOURCE}", "{{source}} code {{code}}", ref="B")))
    limited = (graph("Rate limiting", "Requests per second the API answered as rate limited (left axis), and "
                     "the share of time spent waiting for the client-side rate limit or a method pause (right "
                     "axis). Waiting is normal; rate-limit answers should be rare.", "reqps", w=6)
               .with_target(query(f'sum by (source, target) (rate({REQUESTS}{{outcome="rate_limited"}}{RATE})) '
                                  f"or on(source, target) {ZERO_PER_TARGET}", "{{target}} rate limited"))
               .with_target(query("sum by (source, target) "
                                  f"(rate(tasks_exporter_rate_limit_wait_seconds_total{RATE}))",
                                  "{{target}} waiting", ref="B"))
               .override_by_query("B", [override("unit", "percentunit"),
                                        override("custom.axisPlacement", "right")]))
    failures = (graph("Failed cycles by reason", "Collection cycles that failed per rate interval, by reason: "
                      "auth, rate_limited, server_error, timeout, network_error, invalid_response, api_error, "
                      "deadline, internal. A zero line per source when none failed.", "short", w=6)
                .draw_style(common_m.GraphDrawStyle.BARS).fill_opacity(60)
                .with_target(query(f"sum by (source, reason) (increase(tasks_exporter_source_failures_total{RATE}))"
                                   f" or on(source) {ZERO_PER_SOURCE}", "{{source}} {{reason}}")))
    return [requests, errors, limited, failures]


# --- the dashboard --------------------------------------------------------------------------------


def build() -> dash_m.Dashboard:
    board = (dash_b.Dashboard(TITLE).uid(UID).tags(["tasks-exporter", "bitrix24", "pachca"])
             .description("Bitrix24 task counters and Pachca reminders from tasks-exporter, and the exporter's "
                          "own health. Generated by grafana/dashboard.py: edit that, not the JSON.")
             .editable().tooltip(dash_m.DashboardCursorSync.CROSSHAIR).time("now-6h", "now").refresh("1m")
             .timezone("browser").variables(variables()))
    rows = [*organisation_panels(), *bitrix24_panels(), *pachca_panels(), dash_b.Row("Exporter health"),
            *health_state_panels(), *health_traffic_panels()]
    for item in rows:
        board = board.with_row(item) if isinstance(item, dash_b.Row) else board.with_panel(item)
    model = board.build()
    for panel_id, panel in enumerate(model.panels or [], start=1):
        panel.id_val = panel_id
    return model


def render() -> str:
    """The dashboard JSON exactly as committed at grafana/tasks-exporter.json."""
    return json.dumps(build(), cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


# --- helpers for tests that run the queries -------------------------------------------------------


def panel_queries(board: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(panel title, refId, expr) of every target in a dashboard JSON, row-nested panels included."""
    for panel in board.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner.get("title", ""), target.get("refId", ""), target["expr"]


def defaults() -> dict[str, str]:
    """What each variable interpolates to when the dashboard opens: its `allValue` for All, else its value."""
    found: dict[str, str] = {}
    for builder in variables():
        variable = builder.build()
        current = variable.current.value if variable.current is not None else None
        if current == "$__all":
            found[variable.name] = variable.all_value or ".*"
        elif isinstance(current, str):
            found[variable.name] = current
    return found


def concrete(expr: str, values: Mapping[str, str] | None = None, *, rate_interval: str = "1m") -> str:
    """The PromQL Grafana would send: dashboard variables replaced by `values` (default: what the dashboard
    opens with, see `defaults`) and `$__rate_interval` by `rate_interval`. `$1` in label_replace stays."""
    values = {**defaults(), **(values or {})}
    names = {variable.build().name for variable in variables()}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name == "__rate_interval":
            return rate_interval
        return values.get(name, ".*") if name in names else match.group(0)

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print (or --write) the tasks-exporter Grafana dashboard.")
    parser.add_argument("--write", action="store_true", help=f"write {OUTPUT} instead of printing")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        OUTPUT.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
