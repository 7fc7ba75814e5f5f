"""The organisation view against answers shaped like recorded ones, for the odd shapes the fake portal does not
produce: ids as ints or strings, "0" and "" for none, missing paging keys, empty batch sections as lists,
error codes in either case. Plus the pure parts: ancestors, subtrees, the command plan."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from exporter.config import Bitrix24Config, Secret
from exporter.org import Department, ancestors, memberships, subtree
from exporter.snapshot import ApiTelemetry, CounterQuery
from exporter.sources.bitrix24 import Bitrix24Source
from exporter.sources.bitrix24_structure import Structure, parse_ids, plan_queries
from tests.conftest import FAST_RETRY, Clock, Received, answering

WEBHOOK_PATH = "/rest/1/s3cr3t/"
COUNTERS = {"expired": {"counter": 1, "code": 6291456}, "new_comments": {"counter": "2", "code": 12582912}}
Answer = tuple[int, Any, dict[str, Any]]  # status, result or error body, extra top-level keys (total, next)


class RecordedPortal:
    """Answers per method with recorded-style bodies; `batch` runs its commands through the same handlers
    and writes empty sections as `[]`, as PHP does. Records every method called, directly or in a batch.
    `refused_in_batch`: methods a portal or proxy allows only directly: their commands inside a batch answer
    ACCESS_DENIED, or with `whole_batch` the batch itself is refused (ERROR_BATCH_METHOD_NOT_ALLOWED).
    `failing_in_batch`: method -> the code its commands inside a batch answer while it is there."""

    def __init__(self, handlers: dict[str, Callable[[dict[str, Any]], Answer]],
                 refused_in_batch: frozenset[str] = frozenset(), *, whole_batch: bool = False) -> None:
        self.handlers = handlers
        self.refused_in_batch = refused_in_batch
        self.whole_batch = whole_batch
        self.failing_in_batch: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []  # direct calls: method, JSON body
        self.commands: Counter[str] = Counter()

    def respond(self, request: Received) -> web.Response:
        """An AnswerServer's `respond`."""
        method = request.path.rsplit("/", 1)[-1]
        body = request.json()
        self.requests.append((method, body))
        if method == "batch":
            if self.whole_batch and any(c.partition("?")[0] in self.refused_in_batch for c in body["cmd"].values()):
                return web.json_response({"error": "ERROR_BATCH_METHOD_NOT_ALLOWED",
                                          "error_description": "Method is not allowed for batch usage"}, status=400)
            return web.json_response({"result": self._batch(body["cmd"]), "time": {"start": 1}})
        status, result, extra = self._run(method, body)
        if status != 200:
            return web.json_response(result, status=status)
        return web.json_response({"result": result, **extra, "time": {"start": 1}})

    def _run(self, method: str, params: dict[str, Any]) -> Answer:
        self.commands[method] += 1
        return self.handlers[method](params)

    def _batch(self, cmd: dict[str, str]) -> dict[str, Any]:
        sections: dict[str, dict[str, Any]] = {k: {} for k in ("result", "result_error", "result_total",
                                                                "result_next", "result_time")}
        for key, text in cmd.items():
            method, _, query = text.partition("?")
            if method in self.refused_in_batch:
                sections["result_error"][key] = {"error": "ACCESS_DENIED", "error_description": "not in batch"}
                continue
            if method in self.failing_in_batch:
                sections["result_error"][key] = {"error": self.failing_in_batch[method], "error_description": ""}
                continue
            status, result, extra = self._run(method, dict(parse_qsl(query)))
            if status != 200:
                sections["result_error"][key] = result
                continue
            sections["result"][key] = result
            for name in ("total", "next"):
                if name in extra:
                    sections[f"result_{name}"][key] = extra[name]
        return {name: section or [] for name, section in sections.items()}


def ok(result: Any, **extra: Any) -> Answer:
    return 200, result, extra


def error(status: int, code: str, description: str = "") -> Answer:
    return status, {"error": code, "error_description": description}, {}


def users(records: list[dict[str, Any]]) -> Callable[[dict[str, Any]], Answer]:
    def answer(params: dict[str, Any]) -> Answer:
        if "ID" in params:
            return ok([r for r in records if str(r["ID"]) == str(params["ID"])])
        start = int(params.get("start", 0))
        page = records[start:start + 50]
        if not page:
            return ok([])  # an empty result has no total (docs/api-notes.md#org-user-get-fields)
        extra = {"total": len(records)} | ({"next": start + 50} if start + 50 < len(records) else {})
        return ok(page, **extra)
    return answer


def counters(_params: dict[str, Any]) -> Answer:
    return ok(COUNTERS, total=1)


@contextlib.asynccontextmanager
async def source(portal: RecordedPortal, *, clock: Callable[[], float] = time.monotonic,
                 **config: Any) -> AsyncIterator[Bitrix24Source]:
    """A source for `portal`, which answers on loopback for the duration of the block."""
    async with answering(portal.respond) as server:
        src = Bitrix24Source(Bitrix24Config(name="acme", webhook_url=Secret(server.url + WEBHOOK_PATH), **config),
                             ApiTelemetry(), retry=FAST_RETRY, clock=clock)
        try:
            yield src
        finally:
            await src.aclose()


async def collect(portal: RecordedPortal, **config: Any) -> Any:
    async with source(portal, **config) as src:
        return (await src.collect()).data


# --- departments ---------------------------------------------------------------------------------


def department_pages(records: list[dict[str, Any]], *, total: bool = True) -> Callable[[dict[str, Any]], Answer]:
    def answer(params: dict[str, Any]) -> Answer:
        start = int(params.get("start", 0))
        more = {"next": start + 50} if start + 50 < len(records) else {}
        return ok(records[start:start + 50], **({"total": len(records)} if total else {}), **more)
    return answer


async def test_departments_with_missing_or_empty_parent_and_head_keys_over_three_pages():
    tree = [{"ID": "1", "NAME": "Company", "SORT": 500, "UF_HEAD": "1"},  # a root: no PARENT key
            {"ID": 2, "NAME": "Sales", "SORT": 500, "PARENT": 1, "UF_HEAD": ""},  # ints, and "" for no head
            {"ID": "3", "NAME": "Branch", "SORT": 500, "PARENT": "0", "UF_HEAD": "0"},  # "0" for none
            {"ID": "4", "NAME": "Odd", "SORT": 500, "PARENT": None, "UF_HEAD": None}]
    tree += [{"ID": str(i), "NAME": f"Team {i}", "SORT": 500, "PARENT": "2"} for i in range(5, 121)]
    portal = RecordedPortal({"department.get": department_pages(tree), "tasks.task.counters.get": counters,
                             "user.get": users([{"ID": "1", "ACTIVE": True, "NAME": "Anna", "UF_DEPARTMENT": [120]}])})
    data = await collect(portal)
    by_id = {d.dept_id: d for d in data.org.departments}
    assert len(by_id) == 120
    assert [(by_id[i].parent_id, by_id[i].head_user_id) for i in (1, 2, 3, 4)] == [
        (None, 1), (1, None), (None, None), (None, None)]
    assert by_id[120].parent_id == 2
    assert {(m.dept_id, m.direct) for m in data.org.user_departments} == {(120, True), (2, False), (1, False)}
    # page 1 directly, pages 2 and 3 in one batch (whose result_total/result_next may be [] or objects)
    assert [m for m, _ in portal.requests if m in ("department.get", "batch")][:2] == ["department.get", "batch"]
    assert portal.commands["department.get"] == 3


@pytest.mark.parametrize("whole_batch", [False, True], ids=["command_refused", "batch_refused"])
async def test_department_pages_a_portal_refuses_inside_batch_are_read_directly(whole_batch: bool) -> None:
    tree = [{"ID": str(i), "NAME": f"D{i}", "SORT": 500, **({"PARENT": "1"} if i > 1 else {})} for i in range(1, 121)]
    portal = RecordedPortal({"department.get": department_pages(tree), "tasks.task.counters.get": counters,
                             "user.get": users([])}, refused_in_batch=frozenset({"department.get"}),
                            whole_batch=whole_batch)
    data = await collect(portal)
    assert len(data.org.departments) == 120
    # page 1 directly, pages 2 and 3 refused in the batch and then asked for directly
    assert [m for m, _ in portal.requests if m in ("department.get", "batch")] == [
        "department.get", "batch", "department.get", "department.get"]


async def test_a_passing_error_of_department_pages_inside_batch_keeps_the_next_refresh_batched() -> None:
    tree = [{"ID": str(i), "NAME": f"D{i}", "SORT": 500, **({"PARENT": "1"} if i > 1 else {})} for i in range(1, 121)]
    portal = RecordedPortal({"department.get": department_pages(tree), "tasks.task.counters.get": counters,
                             "user.get": users([])})
    portal.failing_in_batch["department.get"] = "QUERY_LIMIT_EXCEEDED"
    clock = Clock()
    async with source(portal, clock=clock) as src:
        first = (await src.collect()).data
        del portal.failing_in_batch["department.get"]
        portal.requests.clear()
        clock.now += 7200  # the structure is due again
        second = (await src.collect()).data
    assert len(first.org.departments) == len(second.org.departments) == 120
    # page 1 directly, pages 2 and 3 in a batch again (not one call per page from the first error on)
    assert [m for m, b in portal.requests if m == "department.get"
            or (m == "batch" and any(c.startswith("department.get") for c in b["cmd"].values()))] == [
        "department.get", "batch"]


async def test_department_pages_are_followed_by_next_when_total_is_missing():
    tree = [{"ID": str(i), "NAME": f"D{i}", "SORT": 500, **({"PARENT": "1"} if i > 1 else {})} for i in range(1, 76)]
    portal = RecordedPortal({"department.get": department_pages(tree, total=False),
                             "tasks.task.counters.get": counters, "user.get": users([])})
    data = await collect(portal)
    assert len(data.org.departments) == 75


async def test_department_get_is_sent_without_upper_case_sort_or_order():
    portal = RecordedPortal({"department.get": department_pages([{"ID": "1", "NAME": "C", "SORT": 500}]),
                             "tasks.task.counters.get": counters, "user.get": users([])})
    await collect(portal)
    [(_, body)] = [(m, b) for m, b in portal.requests if m == "department.get"]
    # an upper-case top-level SORT or ORDER is also read as a filter (docs/api-notes.md#org-department-get)
    assert not {"SORT", "ORDER"} & set(body)


@pytest.mark.parametrize("code", ["insufficient_scope", "INSUFFICIENT_SCOPE"])
@pytest.mark.parametrize("status", [401, 403])
async def test_department_scope_error_in_either_case_or_status_turns_departments_off(code, status):
    portal = RecordedPortal({"department.get": lambda _: error(status, code, "The request requires higher "
                                                                "privileges than provided by the webhook token"),
                             "tasks.task.counters.get": counters,
                             "user.get": users([{"ID": "7", "ACTIVE": True, "UF_DEPARTMENT": [1]}])})
    data = await collect(portal)
    assert data.org.departments == ()
    assert data.org.user_departments == ()
    assert data.structure is not None
    assert data.structure.up
    assert [u.user_id for u in data.users] == [7]


# --- users ---------------------------------------------------------------------------------------


async def test_user_records_of_every_recorded_shape():
    records = [{"ID": "1", "ACTIVE": True, "NAME": "Anna", "EMAIL": "  Anna@Example.COM ", "UF_DEPARTMENT": ["2", 3]},
               {"ID": "2", "ACTIVE": True, "NAME": "Boris", "UF_DEPARTMENT": False},  # no EMAIL key: NULL
               {"ID": "3", "ACTIVE": True, "LAST_NAME": "Solo"},  # no UF_DEPARTMENT at all
               {"ID": "4", "ACTIVE": True, "NAME": "Vera", "EMAIL": "vera@example.com", "UF_DEPARTMENT": []}]
    tree = [{"ID": "1", "NAME": "C", "SORT": 500}, {"ID": "2", "NAME": "S", "SORT": 500, "PARENT": "1"},
            {"ID": "3", "NAME": "E", "SORT": 500, "PARENT": "1"}]
    portal = RecordedPortal({"department.get": department_pages(tree), "tasks.task.counters.get": counters,
                             "user.get": users(records)})
    data = await collect(portal)
    assert [(u.user_id, u.email, u.departments) for u in data.users] == [
        (1, "anna@example.com", (2, 3)), (2, "", ()), (3, "", ()), (4, "vera@example.com", ())]
    assert {(m.user_id, m.dept_id, m.direct) for m in data.org.user_departments} == {
        (1, 2, True), (1, 3, True), (1, 1, False)}


async def test_a_portal_that_ignores_the_user_type_filter_still_lists_employees_only():
    records = [{"ID": "1", "ACTIVE": True, "NAME": "Anna", "USER_TYPE": "employee"},
               {"ID": "2", "ACTIVE": True, "NAME": "Partner", "USER_TYPE": "extranet"},
               {"ID": "3", "ACTIVE": True, "NAME": "Mail", "USER_TYPE": "email"},
               {"ID": "4", "ACTIVE": True, "NAME": "Old"}]  # no USER_TYPE: no intranet module to say
    portal = RecordedPortal({"tasks.task.counters.get": counters, "user.get": users(records)})
    data = await collect(portal, departments=False, groups=(0,))
    assert [u.user_id for u in data.users] == [1, 4]
    first = next(body for method, body in portal.requests if method == "user.get")
    assert first["FILTER"] == {"ACTIVE": True, "USER_TYPE": "employee"}


async def test_a_portal_without_users_answers_an_empty_list_without_total():
    portal = RecordedPortal({"department.get": department_pages([{"ID": "1", "NAME": "C", "SORT": 500}]),
                             "tasks.task.counters.get": counters, "user.get": users([])})
    data = await collect(portal)
    assert data.users == ()
    assert data.counters == {}
    assert [d.name for d in data.org.departments] == ["C"]


# --- workgroups ----------------------------------------------------------------------------------


def group_record(group_id: int, name: str, *, project: bool = False, closed: bool = False,
                 active: bool = True) -> dict[str, Any]:
    return {"ID": str(group_id), "SITE_ID": "s1", "NAME": name, "ACTIVE": "Y" if active else "N", "VISIBLE": "Y",
            "OPENED": "Y", "CLOSED": "Y" if closed else "N", "OWNER_ID": "1", "NUMBER_OF_MEMBERS": "3",
            "PROJECT": "Y" if project else "N", "DATE_CREATE": "2025-01-10T10:00:00+03:00"}


GROUPS = [group_record(5, "Sales team"), group_record(8, "Website", project=True),
          group_record(9, "Old", closed=True), group_record(10, "Off", active=False), group_record(11, "Board")]
MEMBERS = {5: [{"USER_ID": "1", "ROLE": "A"}, {"USER_ID": "2", "ROLE": "E"}, {"USER_ID": "3", "ROLE": "K"},
               {"USER_ID": "4", "ROLE": "Z"}],  # an invitation, which the API should not even send
           8: [{"USER_ID": "2", "ROLE": "A"}, {"USER_ID": "5", "ROLE": "T"}]}


def sonet_group_get(params: dict[str, Any]) -> Answer:
    """Ignores the filter, as a portal that does not know a key would: the reader must re-check ACTIVE/CLOSED."""
    wanted = params.get("FILTER[ID]")
    rows = [g for g in GROUPS if wanted is None or g["ID"] == str(wanted)]
    start = int(params.get("start", 0))
    return ok(rows[start:start + 50], total=len(rows))


def sonet_group_user_get(params: dict[str, Any]) -> Answer:
    group = int(params["ID"])
    if group == 11:
        return error(400, "", "Socialnetwork group not found")
    return ok(MEMBERS.get(group, []))


def counters_in_groups(params: dict[str, Any]) -> Answer:
    if str(params.get("groupId")) == "8":
        return error(400, "0", "Group not found or access denied.")
    return counters(params)


def org_portal() -> RecordedPortal:
    people = [{"ID": str(i), "ACTIVE": True, "NAME": f"U{i}", "EMAIL": f"u{i}@example.com"} for i in range(1, 6)]
    return RecordedPortal({"department.get": department_pages([]), "user.get": users(people),
                           "sonet_group.get": sonet_group_get, "sonet_group.user.get": sonet_group_user_get,
                           "tasks.task.counters.get": counters_in_groups})


async def test_groups_auto_keeps_open_readable_groups_and_members_with_their_roles():
    portal = org_portal()
    data = await collect(portal, groups=None, roles=("all",))
    # 9 archived and 10 inactive are dropped here; 11 has no member list and 8 no readable tasks
    assert [(g.group_id, g.name, g.kind) for g in data.org.groups] == [(5, "Sales team", "group")]
    assert [(m.group_id, m.user_id, m.role) for m in data.org.members] == [
        (5, 1, "owner"), (5, 2, "moderator"), (5, 3, "member")]
    assert sorted((q.user_id, q.group_id) for q in data.counters) == [
        (1, 0), (1, 5), (2, 0), (2, 5), (3, 0), (3, 5), (4, 0), (5, 0)]
    assert data.failed_commands == 0
    [(_, body)] = [(m, b) for m, b in portal.requests if m == "sonet_group.get"]
    assert body["FILTER"] == {"ACTIVE": "Y", "CLOSED": "N"}
    assert "ORDER" in body  # upper-case keys only


async def test_listed_groups_gain_names_and_skip_the_ones_the_webhook_cannot_read():
    portal = org_portal()
    data = await collect(portal, groups=(0, 5, 8), roles=("all",))
    assert {q.group_id for q in data.counters} == {0, 5}
    assert {(q.user_id, q.group_id) for q in data.counters} == {(u, g) for u in range(1, 6) for g in (0, 5)}
    assert [(g.group_id, g.name) for g in data.org.groups] == [(5, "Sales team")]
    sent = {(m, b.get("groupId")) for m, b in portal.requests if m == "tasks.task.counters.get"}
    assert sent == set()  # every counters command, the probes included, went in a batch


async def test_a_transient_error_in_a_member_list_keeps_the_last_good_structure():
    portal = org_portal()
    clock = Clock()
    async with source(portal, groups=None, roles=("all",), clock=clock) as src:
        first = (await src.collect()).data
        portal.handlers["sonet_group.user.get"] = lambda _: error(503, "QUERY_LIMIT_EXCEEDED", "Too many requests")
        clock.now += 7200
        second = (await src.collect()).data
    assert second.org.groups == first.org.groups
    assert second.org.members == first.org.members
    assert second.structure is not None
    assert not second.structure.up
    assert second.structure.failures == {"rate_limited": 1}


# --- the pure parts ------------------------------------------------------------------------------


TREE = {1: Department(1, "Company"), 2: Department(2, "Sales", 1), 3: Department(3, "Moscow", 2),
        4: Department(4, "Loop A", 5), 5: Department(5, "Loop B", 4)}


def test_ancestors_stop_at_the_root_and_at_a_loop():
    assert list(ancestors(3, TREE)) == [2, 1]
    assert list(ancestors(4, TREE)) == [5]


def test_a_department_the_tree_does_not_hold_gives_no_membership():
    assert memberships(7, [99, 3], TREE) == memberships(7, [3], TREE)


def test_subtree_includes_the_roots_and_everything_below():
    assert subtree([2], TREE) == {2, 3}
    assert subtree([42], TREE) == {42}


@pytest.mark.parametrize(("raw", "ids"), [([1, "2", "2"], (1, 2)), (False, ()), (None, ()), ([], ()), ("5", (5,)),
                                          (["0", "", None, "x", 3.0], (3,)), ({"0": "4"}, (4,))])
def test_department_lists_of_any_recorded_shape(raw, ids):
    assert parse_ids(raw) == ids


def test_auto_plan_reads_group_zero_for_everyone_and_groups_for_their_members():
    structure = Structure(counter_groups=(5, 8), members={5: ((1, "owner"), (3, "member")), 8: ((3, "owner"),)})
    assert plan_queries([1, 2, 3], structure, ["all"], auto=True) == [
        CounterQuery(1, 0, "all"), CounterQuery(1, 5, "all"), CounterQuery(2, 0, "all"),
        CounterQuery(3, 0, "all"), CounterQuery(3, 5, "all"), CounterQuery(3, 8, "all")]
    assert len(plan_queries([1, 2, 3], structure, ["all"], auto=False)) == 6
