"""The Bitrix24 source against the fake portal over loopback HTTP."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from exporter.config import Bitrix24Config, Secret
from exporter.errors import SourceFailure
from exporter.ratelimit import LeakyBucket
from exporter.simulator.bitrix24 import LEGACY_KEYS, PortalSimulator, SimUser
from exporter.snapshot import ApiTelemetry, CounterQuery, PortalSnapshot
from exporter.sources.bitrix24 import ROLES, Bitrix24Source
from exporter.sources.bitrix24_client import BatchCall, Bitrix24Client, OperationPause, parse_batch
from exporter.sources.retries import RetryPolicy
from tests.conftest import (
    FAST_RETRY,
    NO_PAUSE,
    NO_WAIT,
    AnswerServer,
    AnswerServers,
    Events,
    eventually,
    named,
    replaying,
)

# rate-limit answers retried until the portal's one-request-per-100-ms bucket lets every batch through
PATIENT = RetryPolicy(attempts=3, rate_limit_attempts=200, base_delay=0.01, max_delay=0.05)

SECRET = "s3cretw3bhook"


def readings_by_key(data: PortalSnapshot) -> dict[tuple[int, int, str, str], float]:
    return {(r.user_id, r.group_id, r.role, r.counter): r.value for r in data.readings}


async def test_batch_packs_600_commands_into_12_calls(portal_factory):
    server = await portal_factory(users=120)
    source = server.source()
    data = (await source.collect()).data
    assert len(data.users) == 120
    assert server.sim.calls["batch"] - 1 == 12  # one more batch carries user.get pages 2-3
    assert server.sim.commands == 600 + 2
    assert server.sim.max_batch == 50
    assert server.sim.calls["tasks.task.counters.get"] == 0  # never one call per command


async def test_readings_match_the_portal_for_every_user_group_and_role(portal_factory):
    server = await portal_factory(users=12, groups=2)
    source = server.source(groups=(0, 1, 2))
    data = (await source.collect()).data
    got = readings_by_key(data)
    expected = {}
    roles = {"all": "view_all", "responsible": "view_role_responsible", "accomplice": "view_role_accomplice",
             "auditor": "view_role_auditor", "originator": "view_role_originator"}
    for user in server.sim.users:
        if not user.active:
            continue
        for group in (0, 1, 2):
            for role, kind in roles.items():
                for counter, value in server.sim.counters(user.user_id, group, kind).items():
                    expected[(user.user_id, group, role, counter)] = float(value)
    assert got == expected


async def test_user_names_come_from_user_get(portal_factory):
    server = await portal_factory(users=3)
    data = await source_collect(server)
    names = {u.user_id: u.name for u in data.users}
    assert names == {u.user_id: f"{u.name} {u.last_name}" for u in server.sim.users if u.active}


async def source_collect(server, **overrides):
    return (await server.source(**overrides).collect()).data


async def cycle_failure(server, **overrides) -> SourceFailure:
    """The SourceFailure a cycle of a source for `server` must end in."""
    with pytest.raises(SourceFailure) as failure:
        await source_collect(server, **overrides)
    return failure.value


async def test_inactive_users_are_not_monitored(portal_factory):
    server = await portal_factory(users=5, inactive=2)
    data = await source_collect(server)
    assert {u.user_id for u in data.users} == {1, 2, 3, 4, 5}


async def test_extranet_users_are_not_monitored(portal_factory):
    # user.get shows the webhook an extranet user (no department) who shares a workgroup with its owner;
    # the listing asks for employees only (docs/api-notes.md#b24-user-get-active)

    server = await portal_factory(users=5, inactive=0)
    server.sim.users.append(SimUser(51, "Ext", "Mate", email="mate@partner.example"))
    group = server.sim.workgroup(1)
    assert group is not None
    assert group.is_member(server.sim.user_id)
    group.members[51] = "K"
    async with httpx.AsyncClient() as client:  # the portal does show the user to this webhook
        shown = (await client.post(server.webhook + "user.get", json={"FILTER": {"ACTIVE": True}})).json()
    assert 51 in {int(r["ID"]) for r in shown["result"]}
    data = await source_collect(server)
    assert {u.user_id for u in data.users} == {1, 2, 3, 4, 5}
    assert {q.user_id for q in data.counters} == {1, 2, 3, 4, 5}


async def test_explicit_user_list_is_used_with_names(portal_factory):
    server = await portal_factory(users=8)
    data = await source_collect(server, users=(2, 5))
    assert [(u.user_id, u.name) for u in data.users] == [
        (uid, f"{u.name} {u.last_name}") for uid in (2, 5) for u in server.sim.users if u.user_id == uid]
    assert {r.user_id for r in data.readings} == {2, 5}


async def test_mentioned_is_a_counter_and_an_unlifted_total_is_not(portal_factory):
    # module sources from 2026 build `mentioned` for every role, and a per-role `total` the REST layer
    # normally lifts out of the result (docs/api-notes.md#b24-counters-keys)
    server = await portal_factory(users=1, inactive=0)
    server.sim.overrides[(1, 0, "view_all")] = {"total": 9, "expired": 4, "new_comments": 5, "mentioned": 2}
    data = await source_collect(server, roles=("all",))
    assert dict(data.counters[CounterQuery(1, 0, "all")]) == {"expired": 4.0, "new_comments": 5.0, "mentioned": 2.0}


async def test_legacy_portal_counters_are_emitted_as_returned(portal_factory):
    server = await portal_factory(users=2, legacy=True)
    data = await source_collect(server)
    by_role: dict[str, set[str]] = {}
    for r in data.readings:
        by_role.setdefault(r.role, set()).add(r.counter)
    assert by_role["responsible"] == set(LEGACY_KEYS["view_role_responsible"])
    assert by_role["auditor"] == {"expired"}
    assert by_role["all"] == {"wo_deadline", "expired", "expired_soon", "not_viewed", "wait_ctrl"}


async def test_string_numbers_are_read_as_numbers(portal_factory):
    server = await portal_factory(users=2, string_numbers=True)
    server.sim.overrides[(1, 0, "view_all")] = {"expired": 7, "new_comments": 3}
    data = await source_collect(server, roles=("all",))
    got = readings_by_key(data)
    assert got[(1, 0, "all", "expired")] == 7.0
    assert got[(1, 0, "all", "new_comments")] == 3.0


async def test_hidden_user_gets_no_series_and_is_counted(portal_factory):
    server = await portal_factory(users=6, hidden=2)
    data = await source_collect(server)
    assert data.hidden_users == 2
    hidden = server.sim.hidden
    assert hidden
    assert not {r.user_id for r in data.readings} & hidden
    assert {u.user_id for u in data.users} >= hidden  # still listed as monitored users


async def test_error_in_one_command_costs_only_that_command(portal_factory):
    server = await portal_factory(users=4)
    server.sim.command_errors[3] = "ERROR_CORE"
    data = await source_collect(server)
    assert data.failed_commands == 5  # five roles of user 3
    assert {r.user_id for r in data.readings} == {1, 2, 4}


async def test_failed_command_keeps_its_last_good_values(portal_factory):
    server = await portal_factory(users=3)
    source = server.source()
    first = readings_by_key((await source.collect()).data)
    server.sim.command_errors[2] = "ERROR_CORE"
    second = readings_by_key((await source.collect()).data)
    assert {k: v for k, v in second.items() if k[0] == 2} == {k: v for k, v in first.items() if k[0] == 2}


async def test_removed_user_disappears_from_the_snapshot(portal_factory):
    server = await portal_factory(users=4)
    source = server.source()
    await source.collect()
    server.sim.users[1].active = False  # user 2 is dismissed
    data = (await source.collect()).data
    assert 2 not in {u.user_id for u in data.users}
    assert 2 not in {r.user_id for r in data.readings}


async def test_pacing_meets_no_rate_limit_answer_in_steady_state(portal_factory):
    # a scaled-down bucket (20/s, burst 10) so the test runs in about a second: 26 calls per cycle
    server = await portal_factory(users=250, rate=20.0, burst=10, latency=0.005)
    source = server.source(max_concurrency=8)
    for _ in range(2):
        data = (await source.collect()).data
        assert len(data.users) == 250
    assert server.sim.rejected == 0
    assert server.sim.calls["batch"] >= 2 * 26


async def test_rate_limit_answer_is_retried(portal_factory):
    # the portal's bucket is much smaller than the client believes: some calls get QUERY_LIMIT_EXCEEDED. One
    # request per 100 ms, so that the 10 batches sent at once meet it however slowly a loaded machine lets
    # the simulator take them in (at 50/s and a burst of 3 a loaded run spaced them out and none was refused)
    server = await portal_factory(users=100, rate=10.0, burst=1)
    from exporter.config import RateLimit

    source = server.source(rate_limit=RateLimit(1000.0, 50), max_concurrency=10, retry=PATIENT)
    data = (await source.collect()).data
    assert server.sim.rejected > 0
    assert len({r.user_id for r in data.readings}) == 100
    counts = source.telemetry.counts()
    assert counts.errors["QUERY_LIMIT_EXCEEDED"] == server.sim.rejected
    requests = counts.requests
    assert requests[("batch", "rate_limited")] > 0
    assert sum(n for (_, outcome), n in requests.items() if outcome == "rate_limited") == server.sim.rejected


@pytest.mark.parametrize("status", [429, 503])
async def test_rate_limit_is_recognised_by_error_code_not_status(portal_factory, status):
    server = await portal_factory(users=60, rate=10.0, burst=1, status_for_rate_limit=status)
    from exporter.config import RateLimit

    source = server.source(rate_limit=RateLimit(1000.0, 50), max_concurrency=6, retry=PATIENT)
    data = (await source.collect()).data
    assert server.sim.rejected > 0
    assert len(data.users) == 60


async def test_operation_time_limit_pauses_the_method_until_reset(portal_factory):
    server = await portal_factory(users=2)
    source = server.source()
    server.sim.fault = "operation_time_limit"
    server.sim.fault_retry_after = 0.3

    async def lift_after_the_first_refusal() -> None:
        await eventually(lambda: server.sim.calls["user.get"] >= 1)
        server.sim.fault = None

    lifter = asyncio.create_task(lift_after_the_first_refusal())
    data = (await source.collect()).data
    await lifter
    assert len(data.users) == 2
    assert server.sim.calls["user.get"] >= 2  # refused, paused, asked again


async def test_bad_webhook_secret_fails_the_cycle_as_auth(portal_factory):
    server = await portal_factory(users=2)
    server.sim.secret = "rotated"
    failure = await cycle_failure(server)
    assert failure.reason == "auth"
    assert "simsecret" not in str(failure)


@pytest.mark.parametrize("scopes", [{"user"}, {"user", "department", "sonet_group"}])
async def test_a_webhook_without_the_task_scope_fails_the_cycle_as_auth(portal_factory, scopes):
    # inside a batch each command is checked for its scope on its own: the batch answers 200 with an
    # insufficient_scope error per counters command, and a cycle of nothing but those is not a success
    server = await portal_factory(users=3, scopes=set(scopes))
    failure = await cycle_failure(server)
    assert failure.reason == "auth"
    assert "insufficient_scope" in str(failure)


async def test_one_users_refused_commands_do_not_fail_the_cycle(portal_factory):
    server = await portal_factory(users=3)
    server.sim.command_errors[2] = "ACCESS_DENIED"  # refused for one user only: the others' counters stand
    data = await source_collect(server)
    assert {q.user_id for q in data.counters} == {1, 3}
    assert data.failed_commands == 5


async def test_html_answer_fails_the_cycle_cleanly(portal_factory):
    server = await portal_factory(users=2)
    server.sim.fault = "html"
    assert (await cycle_failure(server)).reason == "invalid_response"


async def test_commands_blocked_by_operation_limit_are_retried_after_the_pause(portal_factory):
    server = await portal_factory(users=3)
    server.sim.command_errors[2] = "OPERATION_TIME_LIMIT"
    source = server.source()

    async def lift_after_the_first_batch() -> None:
        # the portal answers a batch in one go, so once it counted commands, user 2's were refused; the
        # client then pauses the method for max_operation_pause (0.3 s), far longer than one poll (0.02 s)
        await eventually(lambda: server.sim.commands > 0)
        del server.sim.command_errors[2]

    lifter = asyncio.create_task(lift_after_the_first_batch())
    data = (await source.collect()).data
    await lifter
    assert 2 in {r.user_id for r in data.readings}
    assert data.failed_commands == 0
    assert server.sim.calls["batch"] == 2  # the first pass, then the retry of the five blocked commands


async def test_operating_seconds_are_reported_per_method(portal_factory):
    server = await portal_factory(users=2, operating_per_command=0.5)
    source = server.source()
    await source.collect()
    data = (await source.collect()).data
    assert data.operating_seconds["tasks.task.counters.get"] >= 0.5 * 10


async def test_users_are_all_found_when_batch_refuses_user_get(portal_factory):
    server = await portal_factory(users=130, batch_command_errors={"user.get": "ACCESS_DENIED"})
    data = await source_collect(server)
    assert len(data.users) == 130
    assert server.sim.calls["user.get"] == 3  # the first page, then pages 2 and 3 directly


def batches(commands: int) -> int:
    return math.ceil(commands / 50)


def active_ids(sim: PortalSimulator) -> set[int]:
    return {u.user_id for u in sim.users if u.active}


@pytest.mark.parametrize("met_in", ["first_listing", "wave"])
@pytest.mark.parametrize("code", ["QUERY_LIMIT_EXCEEDED", "operation_time_limit", "INTERNAL_SERVER_ERROR"])
async def test_a_passing_error_of_user_pages_inside_batch_keeps_the_next_listing_batched(
        portal_factory, logs: Events, met_in: str, code: str) -> None:
    server = await portal_factory(users=130)
    sim = server.sim
    source = server.source()
    if met_in == "wave":
        await source.collect()  # the next cycle asks for every user page in its wave
    sim.batch_command_errors["user.get"] = code
    data = (await source.collect()).data  # the pages that failed inside their batch come directly
    assert {u.user_id for u in data.users} == active_ids(sim)
    assert sim.calls["user.get"] >= 2
    del sim.batch_command_errors["user.get"]
    sim.reset_counts()
    data = (await source.collect()).data
    assert {u.user_id for u in data.users} == active_ids(sim)
    assert sim.calls["user.get"] == 0  # every page inside the wave again, not one call per page from now on
    assert sim.commands_by_method["user.get"] == 3
    assert named(logs, "bitrix24_pages_batch_refused") == []


async def test_a_batch_of_user_pages_that_fails_outright_keeps_the_next_listing_batched(portal_factory,
                                                                                       logs: Events) -> None:
    failing = True

    @web.middleware
    async def fail_batches_while_on(request: web.Request, handler: Handler) -> web.StreamResponse:
        if failing and request.path.endswith("/batch"):
            return web.json_response({"error": "INTERNAL_SERVER_ERROR", "error_description": "x"}, status=500)
        return await handler(request)

    server = await portal_factory(users=130, middlewares=[fail_batches_while_on])
    sim = server.sim
    source = server.source(groups=(0,))  # no structure batch: the first batch of a cycle is user pages 2-3

    async def heal_once_pages_come_directly() -> None:
        nonlocal failing
        await eventually(lambda: sim.calls["user.get"] == 3)  # the batch failed every try: pages 2-3 directly
        failing = False

    healer = asyncio.create_task(heal_once_pages_come_directly())
    data = (await source.collect()).data
    await healer
    assert {u.user_id for u in data.users} == active_ids(sim)
    sim.reset_counts()
    data = (await source.collect()).data
    assert {u.user_id for u in data.users} == active_ids(sim)
    assert sim.calls["user.get"] == 0
    assert sim.commands_by_method["user.get"] == 3
    assert named(logs, "bitrix24_pages_batch_refused") == []


@pytest.mark.parametrize("code", ["ERROR_BATCH_METHOD_NOT_ALLOWED", "error_method_not_found", "Access_Denied"])
async def test_user_get_refused_inside_batch_is_listed_directly_from_then_on(portal_factory, logs: Events,
                                                                             code: str) -> None:
    server = await portal_factory(users=130)
    sim = server.sim
    sim.batch_command_errors["user.get"] = code
    source = server.source()
    for _ in range(2):
        sim.reset_counts()
        data = (await source.collect()).data
        assert {u.user_id for u in data.users} == active_ids(sim)
        assert sim.calls["user.get"] == 3
    assert sim.commands_by_method["user.get"] == 3  # the second cycle tried no batch
    assert [e["code"] for e in named(logs, "bitrix24_pages_batch_refused")] == [code]


async def test_user_pages_are_read_by_their_lengths_when_batches_carry_no_result_total(portal_factory) -> None:
    # a bucket of 1000/s: eight cycles of ~15 batches would take a minute at 2/s
    server = await portal_factory(users=130, batch_totals=False, rate=1000.0, burst=1000)
    sim = server.sim
    source = server.source()
    await source.collect()  # page 1 comes directly, with its `total`: the next cycles ask for 3 pages at once

    async def cycle() -> PortalSnapshot:
        sim.reset_counts()
        data = (await source.collect()).data
        assert {u.user_id for u in data.users} == active_ids(sim)
        assert {r.user_id for r in data.readings} == active_ids(sim)
        return data

    async def steady(pages: int) -> None:
        await cycle()
        assert sim.calls["user.get"] == 0
        assert sim.commands_by_method["user.get"] == pages
        assert sim.calls["batch"] == batches(pages + len(active_ids(sim)) * len(ROLES))

    def join(n: int) -> None:
        first = max(u.user_id for u in sim.users) + 1
        sim.users += [SimUser(first + i, "Late", f"Joiner{i}", departments=[1]) for i in range(n)]

    for _ in range(2):
        await steady(pages=3)
    join(30)  # 160: the last page asked for (101-150) is full now
    await cycle()
    assert sim.calls["user.get"] == 1  # page 151-200 directly, once
    await steady(pages=4)
    for leaver in sim.users[40:]:
        leaver.active = False  # 40 left: the first page is short
    await cycle()
    assert sim.calls["user.get"] == 1  # the short first page once more directly, none of the empty ones
    await steady(pages=1)


async def test_a_counted_listing_that_fills_its_last_page_asks_for_one_page_more_in_the_wave(portal_factory) -> None:
    server = await portal_factory(users=100, batch_totals=False)
    sim = server.sim
    source = server.source()
    await source.collect()
    await source.collect()  # pages 1-2 in the wave, both full: is there a third? asked for directly, empty
    for _ in range(2):
        sim.reset_counts()
        data = (await source.collect()).data
        assert len(data.users) == 100
        assert sim.calls["user.get"] == 0  # the empty third page came in the wave
        assert sim.commands_by_method["user.get"] == 3


async def test_a_batch_whose_commands_were_all_blocked_pauses_until_the_batchs_reset_time(
        answer_server: AnswerServers, logs: Events) -> None:
    """Commands blocked by OPERATION_TIME_LIMIT have no `result_time`: the reset time is only in the batch's
    own `time` (docs/api-notes.md#b24-operation-time-limit)."""
    blocked = {"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked due to operation time limit."}
    reset_in = 200
    body = {"result": {"result": [], "result_error": {"c0": blocked, "c1": blocked}, "result_total": [],
                       "result_next": [], "result_time": []},
            "time": {"start": int(time.time()), "operating": 512.4, "operating_reset_at": int(time.time()) + reset_in}}
    server = await answer_server(replaying([body]))
    client = Bitrix24Client(f"{server.url}/rest/1/{SECRET}/", LeakyBucket(1000.0, 1000), ApiTelemetry(),
                            timeout=2.0, max_concurrency=2, retry=FAST_RETRY,
                            pause=OperationPause(default=60.0, least=1.0, most=600.0))
    try:
        commands = {f"c{i}": f"tasks.task.counters.get?userId={i + 1}" for i in range(2)}
        result = await client.batch(BatchCall(commands), pause_key="tasks.task.counters.get")
        assert set(result.errors) == {"c0", "c1"}
        held = asyncio.ensure_future(client.call("tasks.task.counters.get", {}))  # the method's next call
        try:
            [paused] = await eventually(lambda: named(logs, "bitrix24_method_paused"))
            assert paused["seconds"] == pytest.approx(reset_in, abs=2)  # not OperationPause.default
            assert len(server.requests) == 1  # held back, not sent
        finally:
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)
    finally:
        await client.aclose()


async def test_a_cycle_past_its_deadline_leaves_no_request_running(portal_factory):
    server = await portal_factory(users=400, latency=0.2)
    source = server.source(max_concurrency=2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(source.collect(), 0.5)  # the scheduler's cycle deadline does exactly this
    received = server.sim.received
    # nothing of the cycle is left that could send later: no task but this test's and the portal's own
    assert [t.get_coro() for t in asyncio.all_tasks() if t is not asyncio.current_task()
            and "aiohttp" not in t.get_coro().cr_code.co_filename] == []
    await eventually(lambda: server.sim.in_flight == 0)  # the portal answered what was cut off
    assert server.sim.received == received  # and no request went out after the deadline


# --- single odd answers (replayed by an AnswerServer) -------------------------------------------------

Replay = Callable[..., Awaitable[tuple[Bitrix24Source, AnswerServer]]]


@pytest.fixture
async def replay(answer_server: AnswerServers) -> AsyncIterator[Replay]:
    """A source whose every request gets the same answer: `source, server = await replay(body, status)`."""
    made: list[Bitrix24Source] = []

    async def make(body: Any, status: int = 200,
                   headers: dict[str, str] | None = None) -> tuple[Bitrix24Source, AnswerServer]:
        server = await answer_server(replaying([body], status, headers))
        config = Bitrix24Config(name="p", webhook_url=Secret(f"{server.url}/rest/1/{SECRET}/"))
        made.append(Bitrix24Source(config, retry=NO_WAIT, pause=NO_PAUSE))
        return made[-1], server

    yield make
    for source in made:
        await source.aclose()


async def test_redirect_is_not_followed_and_fails_naming_the_new_host(
        replay: Replay, answer_server: AnswerServers) -> None:
    elsewhere = await answer_server(replaying([{"result": []}]))
    moved = elsewhere.url.replace("127.0.0.1", "localhost")  # the same loopback, by another name
    source, server = await replay(b"", 302, {"Location": f"{moved}/rest/1/{SECRET}/user.get"})
    with pytest.raises(SourceFailure) as failure:
        await source.collect()
    assert failure.value.reason == "api_error"
    assert "to localhost" in failure.value.detail
    assert SECRET not in failure.value.detail
    assert (len(server.requests), elsewhere.requests) == (1, [])  # tried once, never followed
    counts = source.telemetry.counts()
    requests, errors = counts.requests, counts.errors
    assert (requests, errors) == ({("user.get", "api_error"): 1}, {"http_302": 1})


@pytest.mark.parametrize(("location", "named"), [
    (f"/rest/1/{SECRET}/user.get", "redirect to 127.0.0.1,"),  # relative: resolved against the request's URL
    ("http://[::1", "redirect without a usable Location,"),
])
async def test_redirect_names_the_host_a_relative_or_broken_location_leads_to(replay: Replay, location: str,
                                                                               named: str) -> None:
    source, server = await replay(b"", 301, {"Location": location})
    with pytest.raises(SourceFailure) as failure:
        await source.collect()
    assert named in failure.value.detail
    assert SECRET not in failure.value.detail
    assert len(server.requests) == 1


@pytest.mark.parametrize(("code", "status", "reason", "tries"), [
    ("expired_token", 401, "auth", 1),  # recorded in lower case
    ("Insufficient_Scope", 403, "auth", 1),
    ("query_limit_exceeded", 503, "rate_limited", NO_WAIT.rate_limit_attempts),  # recorded in upper case
    ("Operation_Time_Limit", 429, "rate_limited", NO_WAIT.rate_limit_attempts),
])
async def test_error_codes_are_matched_in_any_case(replay: Replay, code: str, status: int, reason: str,
                                                   tries: int) -> None:
    source, server = await replay({"error": code, "error_description": "x"}, status)
    with pytest.raises(SourceFailure) as failure:
        await source.collect()
    assert failure.value.reason == reason
    assert len(server.requests) == tries
    assert source.telemetry.counts().requests == {("user.get", reason): tries}


@pytest.mark.parametrize("body", [b"<html><body><h1>429 Too Many Requests</h1></body></html>",
                                  {"error": "TOO_MANY_REQUESTS", "error_description": "slow down"}])
async def test_a_proxys_own_429_is_a_rate_limit(replay: Replay, body: Any) -> None:
    # a proxy or load balancer in front of the portal limits in its own words, or with an HTML page
    source, server = await replay(body, 429, {"Content-Type": "text/html"} if isinstance(body, bytes) else None)
    with pytest.raises(SourceFailure) as failure:
        await source.collect()
    assert failure.value.reason == "rate_limited"
    assert len(server.requests) == NO_WAIT.rate_limit_attempts  # waited and asked again, as for the portal's


def test_a_command_error_with_an_empty_code_is_counted_as_unknown() -> None:
    answer = {"result": {"result": [], "result_error": {"c0": {"error": "", "error_description": "x"},
                                                        "c1": {"error": "0", "error_description": "y"}}}}
    assert parse_batch(answer).errors == {"c0": ("unknown", "x"), "c1": ("0", "y")}


@pytest.mark.parametrize(("body", "status", "detail"), [
    ({"error": "", "error_description": "Wrong socialnetwork group ID"}, 200,
     "http_200: Wrong socialnetwork group ID"),
    ({"error": "0", "error_description": "Group not found or access denied."}, 400,
     "0: Group not found or access denied."),
    ({"error": {"code": "", "message": "Access denied"}}, 200, "http_200: Access denied"),  # REST 3.0 shape
])
async def test_empty_and_zero_error_codes_are_errors(replay: Replay, body: Any, status: int, detail: str) -> None:
    source, server = await replay(body, status)
    with pytest.raises(SourceFailure) as failure:
        await source.collect()
    assert (failure.value.reason, failure.value.detail) == ("api_error", detail)
    assert len(server.requests) == 1  # an error the API stated is not retried like an unreadable answer


async def test_command_error_codes_are_matched_in_any_case(portal_factory):
    server = await portal_factory(users=3)
    server.sim.command_errors[2] = "internal_server_error"  # worth one more pass, in whatever case
    data = (await source_collect(server, roles=("all",)))
    assert data.failed_commands == 1
    assert server.sim.calls["batch"] == 2  # the first pass, then the one failed command again
