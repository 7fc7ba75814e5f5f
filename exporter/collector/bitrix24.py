"""Bitrix24 portals' families: task counters, users, the company structure and workgroups, the REST budget."""

from __future__ import annotations

from collections.abc import Iterator

from exporter.render import Family, Row
from exporter.snapshot import PortalSnapshot, SourceState


def portal_of(state: SourceState) -> PortalSnapshot:
    """A Bitrix24 state's snapshot (the collector hands these functions portals' states only)."""
    assert isinstance(state.data, PortalSnapshot)
    return state.data


def portal_versions(state: SourceState) -> tuple[object, ...]:
    """What portal_families makes a portal's rows of: the parts of the snapshot that a cycle hands over as the
    same objects when nothing in them changed (counters, users; small numbers are the same int)."""
    data = portal_of(state)
    return data.counters, data.users, data.users, data.hidden_users, data.failed_commands


def portal_families(states: list[SourceState]) -> Iterator[Family]:
    """Each portal's task counters and users, e.g.

    bitrix24_tasks{portal="acme",user_id="1",group_id="0",role="all",counter="expired"} 3.0
    bitrix24_user_info{portal="acme",user_id="1",name="Anna Petrova"} 1.0
    """
    tasks = Family(
        "bitrix24_tasks", "Bitrix24 task counter (tasks.task.counters.get) per user, workgroup and role; "
        "group_id 0 is all groups. Muted tasks are not counted.",
        labels=["portal", "user_id", "group_id", "role", "counter"], rows=_task_rows(states))
    info = Family("bitrix24_user_info", "A monitored Bitrix24 user, value 1.",
                  labels=["portal", "user_id", "name"], rows=_user_rows(states))
    users = Family.gauge("bitrix24_users", "Users monitored in the last good cycle.", labels=["portal"])
    hidden = Family.gauge(
        "bitrix24_users_hidden", "Monitored users whose counters the webhook could not see (empty answer); "
        "reading other users' counters needs an administrator's webhook.", labels=["portal"])
    failed = Family.gauge("bitrix24_commands_failed",
                          "Batch commands that failed in the last good cycle (their last values are kept).",
                          labels=["portal"])
    for state in states:
        data, portal = portal_of(state), state.key.target
        users.add_metric([portal], len(data.users))
        hidden.add_metric([portal], data.hidden_users)
        failed.add_metric([portal], data.failed_commands)
    yield from (tasks, info, users, hidden, failed)


def budget_families(states: list[SourceState]) -> Iterator[Family]:
    """Each portal's REST budget, which moves at every cycle, e.g.

    bitrix24_method_operating_seconds{portal="acme",method="tasks.task.counters.get"} 1.5
    """
    operating = Family.gauge(
        "bitrix24_method_operating_seconds", "Execution time the portal has accounted to a REST method "
        "in its 10-minute window (time.operating); calls are blocked above the portal's limit.",
        labels=["portal", "method"])
    for state in states:
        for method, seconds in sorted(portal_of(state).operating_seconds.items()):
            operating.add_metric([state.key.target, method], seconds)
    yield operating


def org_families(states: list[SourceState]) -> Iterator[Family]:
    """The company structure and workgroups, to join against bitrix24_tasks by user_id or group_id, e.g.

    bitrix24_department_info{portal="acme",department_id="5",name="Sales",parent_id="1",head_user_id="7"} 1.0
    bitrix24_user_department{portal="acme",user_id="9",department_id="1",direct="false"} 1.0
    bitrix24_group_info{portal="acme",group_id="3",name="Website relaunch",kind="project"} 1.0
    bitrix24_group_member{portal="acme",group_id="3",user_id="9",role="moderator"} 1.0
    """
    departments = Family.gauge(
        "bitrix24_department_info", "A department of the company structure, value 1; parent_id is empty for a "
        "root and head_user_id for a department without a head.",
        labels=["portal", "department_id", "name", "parent_id", "head_user_id"])
    user_departments = Family(
        "bitrix24_user_department", "A monitored user in a department, value 1: direct=\"true\" for the "
        "user's own departments, \"false\" for every department above them.",
        labels=["portal", "user_id", "department_id", "direct"], rows=_user_department_rows(states))
    groups = Family.gauge("bitrix24_group_info", "A workgroup (kind group) or project whose counters are read, "
                          "value 1.", labels=["portal", "group_id", "name", "kind"])
    members = Family("bitrix24_group_member", "A monitored user in a workgroup as owner, moderator or member, "
                     "value 1.", labels=["portal", "group_id", "user_id", "role"], rows=_member_rows(states))
    for state in states:
        org, portal = portal_of(state).org, state.key.target
        for d in org.departments:
            departments.add_metric([portal, str(d.dept_id), d.name, _id(d.parent_id), _id(d.head_user_id)], 1)
        for g in org.groups:
            groups.add_metric([portal, str(g.group_id), g.name, g.kind], 1)
    yield from (departments, user_departments, groups, members)


def _id(value: int | None) -> str:
    return "" if value is None else str(value)


def _task_rows(states: list[SourceState]) -> Iterator[Row]:
    """bitrix24_tasks streams from the snapshots: the largest family is never held as rows."""
    for state in states:
        portal = state.key.target
        for q, values in portal_of(state).counters.items():
            user, group = str(q.user_id), str(q.group_id)
            for counter, value in values:
                yield (portal, user, group, q.role, counter), value


# The families with a row per user or per membership stream too: held as rows, bitrix24_user_department alone
# (23,500 rows at 5,000 users) took 5.5 MB at each render, as much again as the text it becomes.

def _user_rows(states: list[SourceState]) -> Iterator[Row]:
    for state in states:
        portal = state.key.target
        for u in portal_of(state).users:
            yield (portal, str(u.user_id), u.name), 1


def _user_department_rows(states: list[SourceState]) -> Iterator[Row]:
    for state in states:
        portal = state.key.target
        for ud in portal_of(state).org.user_departments:
            yield (portal, str(ud.user_id), str(ud.dept_id), "true" if ud.direct else "false"), 1


def _member_rows(states: list[SourceState]) -> Iterator[Row]:
    for state in states:
        portal = state.key.target
        for m in portal_of(state).org.members:
            yield (portal, str(m.group_id), str(m.user_id), m.role), 1
