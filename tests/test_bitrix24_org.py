"""The organisation view of a portal against the fake portal over loopback HTTP: departments, workgroups,
their members, the scope and privacy keys, and the structure's own refresh interval."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from exporter.simulator.bitrix24 import PortalSimulator, SimDepartment, special_group_ids
from exporter.simulator.bitrix24_org import MEMBER_ROLES, can_view_tasks, visible_to
from exporter.sources.bitrix24 import ROLES
from tests.conftest import Clock, Events, check_metrics, exposition, labels, named, samples, series

ROLE_NAMES = {"A": "owner", "E": "moderator", "K": "member"}
COUNTERS = "tasks.task.counters.get"


def three_levels(sim: PortalSimulator) -> None:
    """Company (head 1) > Sales (head 2) > Moscow (head 4); Company > Engineering (no head) > Backend (head 5).
    User 3 sits in Moscow and Backend, user 5 in Sales and in Moscow below it."""
    sim.departments = [
        SimDepartment(1, "Company", None, head=1), SimDepartment(2, "Sales", 1, head=2),
        SimDepartment(3, "Engineering", 1), SimDepartment(4, "Moscow", 2, head=4),
        SimDepartment(5, "Backend", 3, head=5),
    ]
    places = {1: [1], 2: [2], 3: [4, 5], 4: [4], 5: [2, 4]}
    for user in sim.users:
        user.departments = places.get(user.user_id, [])


# --- company structure ---------------------------------------------------------------------------


async def test_users_belong_to_their_departments_and_every_department_above(portal_factory):
    server = await portal_factory(users=5, inactive=0)
    three_levels(server.sim)
    text = exposition((await server.source().collect()).data)
    assert series(text, "bitrix24_department_info", "department_id", "name", "parent_id", "head_user_id") == {
        ("1", "Company", "", "1"), ("2", "Sales", "1", "2"), ("3", "Engineering", "1", ""),
        ("4", "Moscow", "2", "4"), ("5", "Backend", "3", "5"),
    }
    assert series(text, "bitrix24_user_department", "user_id", "department_id", "direct") == {
        ("1", "1", "true"),
        ("2", "2", "true"), ("2", "1", "false"),
        # two departments with a common ancestor: Company once
        ("3", "4", "true"), ("3", "5", "true"), ("3", "2", "false"), ("3", "3", "false"), ("3", "1", "false"),
        # the head of Moscow is a member of Moscow like anyone else
        ("4", "4", "true"), ("4", "2", "false"), ("4", "1", "false"),
        # Sales is direct, so it is never also an ancestor of Moscow
        ("5", "2", "true"), ("5", "4", "true"), ("5", "1", "false"),
    }
    assert len(samples(text, "bitrix24_user_department")) == 14  # each (user, department) once


async def test_renamed_or_removed_department_changes_at_the_next_structure_refresh(portal_factory):
    server = await portal_factory(users=5, inactive=0)
    three_levels(server.sim)
    clock = Clock()
    source = server.source(clock=clock, structure_interval=600.0)
    await source.collect()
    server.sim.department(3).name = "R&D"
    server.sim.department(5).active = False
    clock.now += 599
    before = exposition((await source.collect()).data)
    assert ("3", "Engineering") in series(before, "bitrix24_department_info", "department_id", "name")
    clock.now += 1
    after = exposition((await source.collect()).data)
    assert series(after, "bitrix24_department_info", "department_id", "name") == {
        ("1", "Company"), ("2", "Sales"), ("3", "R&D"), ("4", "Moscow")}
    # user 3 reached Engineering only through Backend; user 5 was only in Backend
    assert series(after, "bitrix24_user_department", "user_id", "department_id", "direct") >= {("3", "4", "true")}
    assert not {("3", "5"), ("3", "3"), ("5", "5")} & series(after, "bitrix24_user_department", "user_id",
                                                             "department_id")


async def test_structure_is_read_on_its_own_interval(portal_factory):
    server = await portal_factory(users=12, groups=3)
    clock = Clock()
    source = server.source(clock=clock, groups=None, structure_interval=3600.0)
    structure_methods = ("department.get", "sonet_group.get", "sonet_group.user.get")
    for _ in range(3):
        await source.collect()
        clock.now += 1000
    first = {m: server.sim.commands_by_method[m] for m in structure_methods}
    assert all(first.values())
    counters_before = server.sim.commands_by_method[COUNTERS]
    await source.collect()  # 3000 s later: still cached
    assert {m: server.sim.commands_by_method[m] for m in structure_methods} == first
    assert server.sim.commands_by_method[COUNTERS] > counters_before  # counters are read every cycle
    clock.now += 600
    await source.collect()
    assert {m: server.sim.commands_by_method[m] for m in structure_methods} == {m: 2 * n for m, n in first.items()}


async def test_failed_structure_refresh_keeps_the_last_good_one_and_is_reported(portal_factory):
    broken = MethodFails("department.get")
    server = await portal_factory(users=6, middlewares=[broken.middleware])
    clock = Clock()
    source = server.source(clock=clock)
    good = exposition((await source.collect()).data)
    broken.failing = True
    clock.now += 3600
    data = (await source.collect()).data  # the counters cycle itself succeeds
    text = exposition(data)
    assert series(text, "bitrix24_department_info", "department_id", "name") == \
        series(good, "bitrix24_department_info", "department_id", "name")
    assert samples(text, "tasks_exporter_structure_up") == {labels(source="bitrix24", target="acme"): 0.0}
    failures = samples(text, "tasks_exporter_structure_failures_total")
    assert failures[labels(source="bitrix24", target="acme", reason="server_error")] == 1
    assert samples(text, "tasks_exporter_structure_last_success_timestamp_seconds") == \
        samples(good, "tasks_exporter_structure_last_success_timestamp_seconds")
    broken.failing = False
    again = exposition((await source.collect()).data)  # a failed refresh is tried again on the next cycle
    assert set(samples(again, "tasks_exporter_structure_up").values()) == {1.0}


class MethodFails:
    """A middleware for the fake portal: one method answers 500 while `failing` is set."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.failing = False

        @web.middleware
        async def fail(request: web.Request, handler: Handler) -> web.StreamResponse:
            if self.failing and request.path.endswith("/" + self.method):
                return web.json_response({"error": "INTERNAL_SERVER_ERROR", "error_description": "down"},
                                         status=500)
            return await handler(request)

        self.middleware = fail


# --- workgroups ----------------------------------------------------------------------------------


def open_groups(sim: PortalSimulator) -> list[int]:
    """What `groups: auto` may read: active, not archived, visible to the webhook's user."""
    return sorted(g.group_id for g in sim.workgroups if g.active and not g.closed and visible_to(g, sim.user_id))


def members(sim: PortalSimulator, group_id: int) -> dict[int, str]:
    group = sim.workgroup(group_id)
    assert group is not None
    active = {u.user_id for u in sim.users if u.active}
    return {uid: role for uid, role in group.members.items() if role in MEMBER_ROLES and uid in active}


async def test_groups_auto_reads_counters_for_members_only(portal_factory):
    server = await portal_factory(users=30, groups=4)
    sim = server.sim
    data = (await server.source(groups=None).collect()).data
    probed = open_groups(sim)
    readable = [g for g in probed if can_view_tasks(sim.workgroup(g), sim.user_id, False)]
    assert special_group_ids(4)["members_only"] in set(probed) - set(readable)
    users = [u.user_id for u in sim.users if u.active]
    roles = len(ROLES)
    expected_reads = {(u, 0): roles for u in users}
    for g in readable:
        expected_reads.update({(u, g): roles for u in members(sim, g)})
    for g in probed:  # one probe per group, as the webhook's own user
        expected_reads[(sim.user_id, g)] = expected_reads.get((sim.user_id, g), 0) + 1
    assert dict(sim.counter_reads) == expected_reads
    assert sim.commands_by_method[COUNTERS] == sum(expected_reads.values())
    assert sim.commands_by_method[COUNTERS] < len(users) * roles * (1 + len(readable))  # every user x group
    assert sim.max_batch <= 50
    assert data.failed_commands == 0
    assert {(r.user_id, r.group_id) for r in data.readings} == {k for k in expected_reads if k[1] in {0, *readable}
                                                               and (k[1] == 0 or k[0] in members(sim, k[1]))}


async def test_group_names_kinds_and_members(portal_factory):
    server = await portal_factory(users=30, groups=4)
    sim = server.sim
    text = exposition((await server.source(groups=None).collect()).data)
    readable = [g for g in open_groups(sim) if can_view_tasks(sim.workgroup(g), sim.user_id, False)]
    expected = {(str(g), sim.workgroup(g).name, "project" if sim.workgroup(g).project else "group")
                for g in readable}
    assert series(text, "bitrix24_group_info", "group_id", "name", "kind") == expected
    assert {kind for _, _, kind in expected} == {"group", "project"}
    assert series(text, "bitrix24_group_member", "group_id", "user_id", "role") == {
        (str(g), str(u), ROLE_NAMES[role]) for g in readable for u, role in members(sim, g).items()}
    outsiders = special_group_ids(4)["with_outsiders"]
    group = sim.workgroup(outsiders)
    assert group is not None
    assert set(group.members) - set(members(sim, outsiders))  # invited, banned, dismissed
    assert not any(u == str(uid) for g, u, _ in series(text, "bitrix24_group_member", "group_id", "user_id", "role")
                   if g == str(outsiders) for uid in set(group.members) - set(members(sim, outsiders)))


async def test_max_groups_caps_the_groups_and_says_how_many_were_left_out(portal_factory, logs: Events):
    server = await portal_factory(users=30, groups=4)
    clock = Clock()
    source = server.source(clock=clock, groups=None, max_groups=2)
    text = exposition((await source.collect()).data)
    assert series(text, "bitrix24_group_info", "group_id") == {("1",), ("2",)}
    assert {g for _, g in server.sim.counter_reads} == {0, 1, 2}
    assert server.sim.commands_by_method["sonet_group.user.get"] == 2
    [warning] = named(logs, "bitrix24_groups_left_out")
    assert warning["left_out"] == len(open_groups(server.sim)) - 2
    clock.now += 3600
    await source.collect()
    assert len(named(logs, "bitrix24_groups_left_out")) == 1  # said once, not every refresh


@pytest.mark.parametrize("mode", ["auto", "listed"])
async def test_a_group_the_webhook_cannot_read_is_skipped_with_one_warning(portal_factory, logs: Events,
                                                                          mode):
    server = await portal_factory(users=20, groups=2)
    hidden = special_group_ids(2)["members_only"]
    clock = Clock()
    source = server.source(clock=clock, groups=None if mode == "auto" else (0, 1, hidden))
    data = (await source.collect()).data
    clock.now += 3600
    data = (await source.collect()).data
    assert [w["group_id"] for w in named(logs, "bitrix24_group_skipped")] == [hidden]
    assert data.failed_commands == 0
    assert {q.group_id for q in data.counters} >= {0, 1}
    assert hidden not in {q.group_id for q in data.counters}
    assert {u for u, g in server.sim.counter_reads if g == hidden} == {server.sim.user_id}  # the probes only
    assert str(hidden) not in {g for (g,) in series(exposition(data), "bitrix24_group_info", "group_id")}


async def test_listed_groups_keep_every_user_and_gain_names(portal_factory):
    server = await portal_factory(users=10, groups=3)
    data = (await server.source(groups=(0, 2, 3)).collect()).data
    users = {u.user_id for u in server.sim.users if u.active}
    assert {(q.user_id, q.group_id) for q in data.counters} == {(u, g) for u in users for g in (0, 2, 3)}
    text = exposition(data)
    assert series(text, "bitrix24_group_info", "group_id", "name") == {
        (str(g), server.sim.workgroup(g).name) for g in (2, 3)}


# --- scope and privacy ---------------------------------------------------------------------------


async def test_emails_are_kept_trimmed_and_lower_cased(portal_factory):
    server = await portal_factory(users=3)
    server.sim.users[1].email = "  Boris.Petrov@Example.COM "
    data = (await server.source().collect()).data
    by_id = {u.user_id: u for u in data.users}
    assert by_id[2].email == "boris.petrov@example.com"
    assert by_id[1].email == server.sim.users[0].email.lower()


async def test_names_false_keeps_ids_only(portal_factory):
    server = await portal_factory(users=12, groups=2)
    data = (await server.source(names=False, groups=None).collect()).data
    assert data.users
    assert all(u.name == "" and u.email == "" for u in data.users)
    text = exposition(data)
    assert {name for (name,) in series(text, "bitrix24_user_info", "name")} == {""}
    assert "@" not in text
    assert {name for (name,) in series(text, "bitrix24_department_info", "name")} >= {"Company", "Sales"}
    assert {name for (name,) in series(text, "bitrix24_group_info", "name")} >= {server.sim.workgroup(1).name}


async def test_include_departments_and_exclude_users_send_fewer_commands(portal_factory):
    server = await portal_factory(users=5, inactive=0)
    three_levels(server.sim)
    everyone = (await server.source(name="all").collect()).data
    sent_for_everyone = server.sim.commands_by_method[COUNTERS]
    server.sim.reset_counts()
    data = (await server.source(name="sales", include_departments=(2,), exclude_users=(4,)).collect()).data
    # Sales and Moscow below it: users 2, 3 (Moscow), 4 and 5, then 4 is excluded
    assert [u.user_id for u in data.users] == [2, 3, 5]
    assert {u for u, _ in server.sim.counter_reads} == {2, 3, 5}
    assert server.sim.commands_by_method[COUNTERS] == 3 * len(ROLES) < sent_for_everyone == 5 * len(ROLES)
    assert len(everyone.users) == 5
    assert {u for (u,) in series(exposition(data), "bitrix24_user_department", "user_id")} == {"2", "3", "5"}


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize(("scope", "feature"), [("department", "departments"), ("sonet_group", "workgroups")])
async def test_a_missing_scope_turns_only_its_feature_off(portal_factory, logs: Events, status, scope,
                                                          feature):
    server = await portal_factory(users=12, groups=2)
    server.sim.scopes.discard(scope)
    server.sim.status_for_scope_error = status
    clock = Clock()
    source = server.source(clock=clock, groups=None)
    data = (await source.collect()).data
    clock.now += 3600
    data = (await source.collect()).data
    [warning] = named(logs, "bitrix24_feature_off")
    assert (warning["feature"], warning["scope"]) == (feature, scope)
    text = exposition(data)
    has_departments = bool(series(text, "bitrix24_department_info", "department_id"))
    has_groups = bool(series(text, "bitrix24_group_info", "group_id"))
    assert (has_departments, has_groups) == (scope != "department", scope != "sonet_group")
    assert set(samples(text, "tasks_exporter_structure_up").values()) == {1.0}
    assert {q.group_id for q in data.counters} >= {0}
    assert len(data.users) == 12


async def test_without_an_email_scope_emails_are_off_with_one_warning(portal_factory, logs: Events):
    server = await portal_factory(users=4)
    server.sim.scopes -= {"user", "user_basic"}
    server.sim.scopes.add("user_brief")
    source = server.source()
    await source.collect()
    data = (await source.collect()).data
    assert [(w["feature"], w["scope"]) for w in named(logs, "bitrix24_feature_off")] == [("email", "user")]
    assert all(u.email == "" and u.name for u in data.users)
    assert series(exposition(data), "bitrix24_department_info", "department_id")


# --- the exposition ------------------------------------------------------------------------------


async def test_org_metrics_pass_promtool(portal_factory):
    server = await portal_factory(users=30, groups=4)
    text = exposition((await server.source(groups=None).collect()).data)
    assert series(text, "bitrix24_user_department", "user_id")
    await check_metrics(text)
