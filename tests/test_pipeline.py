"""The pipelined Bitrix24 cycle against the fake portal over loopback HTTP: after the first cycle, the user
listing travels with the known users' counters in one wave of batches; new users cost one more wave, users who
left are gone from the snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from exporter.config import RateLimit
from exporter.exposition import Exposition
from exporter.render import Family
from exporter.scheduler import SourceLoop, spread
from exporter.simulator.bitrix24 import PortalSimulator, SimUser, create_app, generate_portal
from exporter.snapshot import CounterQuery, PortalSnapshot, SourceKey, Store
from exporter.sources.bitrix24 import EXTRA_PER_BATCH, ROLES, Bitrix24Source, counters_command
from exporter.sources.bitrix24_client import command
from tests.conftest import FAST_PAUSE, FAST_RETRY, PortalServer, eventually

COUNTERS = "tasks.task.counters.get"
PAGE = 50


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_source() -> AsyncIterator[Callable[..., Bitrix24Source]]:
    """`make_source(server, clock=Clock(), **config)`: a source with fast retries, closed after the test."""
    made: list[Bitrix24Source] = []

    def make(server: PortalServer, *, clock: Callable[[], float] | None = None, **overrides: Any) -> Bitrix24Source:
        source = Bitrix24Source(server.config(**overrides), retry=FAST_RETRY, pause=FAST_PAUSE,
                                clock=clock or Clock())
        made.append(source)
        return source

    yield make
    for source in made:
        await source.aclose()


def readings(data: PortalSnapshot) -> dict[tuple[int, int, str, str], float]:
    return {(r.user_id, r.group_id, r.role, r.counter): r.value for r in data.readings}


def truth(sim: PortalSimulator, groups: tuple[int, ...] = (0,)) -> dict[tuple[int, int, str, str], float]:
    """Every active, visible user's counters as the portal computes them now."""
    return {(u.user_id, g, role, counter): float(value)
            for u in sim.users if u.active and u.user_id not in sim.hidden
            for g in groups for role, kind in ROLES.items()
            for counter, value in sim.counters(u.user_id, g, kind).items()}


def batches(commands: int) -> int:
    return math.ceil(commands / 50)


def steady(sim: PortalSimulator) -> None:
    """Forget what the first cycle did, so the next one is counted alone."""
    sim.reset_counts()
    sim.max_in_flight = 0


async def test_steady_state_of_a_100_user_portal_is_one_wave(portal_factory, make_source):
    server = await portal_factory(users=100, latency=0.2)
    sim = server.sim
    source = make_source(server)
    await source.collect()
    steady(sim)
    cycle = await source.collect()
    users = 100
    commands = users * len(ROLES) + users // PAGE  # counters, and both user.get pages inside the batches
    assert sim.commands == commands
    assert cycle.calls == sim.calls["batch"] == batches(commands) == 11
    assert sum(sim.calls.values()) == cycle.calls  # nothing directly: no user.get page 1, no department.get
    assert sim.max_in_flight == cycle.calls  # every request at once: one round trip
    assert readings(cycle.data) == truth(sim)
    assert sim.rejected == 0


@pytest.mark.parametrize("users_inside_batch", [True, False])
async def test_a_cycle_cancelled_at_any_step_leaves_no_coroutine_unawaited(portal_factory, make_source,
                                                                           users_inside_batch):
    """Shutdown or the cycle's deadline may cancel a pipelined cycle at any step, even before the wave has
    begun: nothing it made may be left to the garbage collector's "coroutine ... was never awaited"
    (seen in fresh-clone runs). The cycle is cancelled after 0, 1, 2, ... turns of the event loop."""
    import gc
    import warnings

    server = await portal_factory(users=60)
    server.sim.batch_command_errors = {} if users_inside_batch else {"user.get": "ACCESS_DENIED"}
    source = make_source(server)
    await source.collect()  # the next cycles are pipelined
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for turns in range(40):
            cycle = asyncio.ensure_future(source.collect())
            for _ in range(turns):
                await asyncio.sleep(0)
            cycle.cancel()
            await asyncio.gather(cycle, return_exceptions=True)
            gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


async def test_a_cycle_that_changed_nothing_hands_over_the_last_snapshots_objects(portal_factory, make_source):
    """A render keeps the text it made of an object while it is the same object (exporter/incremental.py)."""
    server = await portal_factory(users=10)
    source = make_source(server)
    first = (await source.collect()).data
    second = (await source.collect()).data
    assert (second.counters, second.users, second.org) == (first.counters, first.users, first.org)
    assert second.counters is first.counters
    assert second.users is first.users
    assert second.org is first.org
    server.sim.overrides[(3, 0, "view_all")] = {"expired": 9, "new_comments": 0}
    third = (await source.collect()).data
    assert third.counters is not second.counters
    assert third.users is second.users


async def test_a_user_added_between_cycles_gets_counters_in_one_more_wave(portal_factory, make_source):
    server = await portal_factory(users=10)
    sim = server.sim
    source = make_source(server)
    await source.collect()
    sim.users.append(SimUser(500, "Nina", "Newcomer", email="nina@example.com", departments=[1]))
    steady(sim)
    data = (await source.collect()).data
    assert 500 in {u.user_id for u in data.users}
    assert readings(data) == truth(sim)
    assert {uid for uid, _ in sim.counter_reads} == {u.user_id for u in sim.users if u.active}
    assert all(n == len(ROLES) for n in sim.counter_reads.values())  # nobody's counters asked twice
    # the first wave: page 1 and the 10 known users' counters; the second: the newcomer's
    assert sim.calls["batch"] == batches(1 + 10 * len(ROLES)) + 1
    assert sim.commands_by_method["user.get"] == 1


async def test_a_user_who_left_is_gone_with_no_series(portal_factory, make_source):
    server = await portal_factory(users=10)
    sim = server.sim
    source = make_source(server)
    first = (await source.collect()).data
    assert any(r.user_id == 4 for r in first.readings)
    leaver = next(u for u in sim.users if u.user_id == 4)
    leaver.active = False
    steady(sim)
    data = (await source.collect()).data
    assert 4 not in {u.user_id for u in data.users}
    assert 4 not in {r.user_id for r in data.readings}
    assert readings(data) == truth(sim)
    assert sim.calls["batch"] == batches(1 + 10 * len(ROLES))  # read in the one wave, then discarded
    sim.users.remove(leaver)  # gone from the portal altogether: still nothing
    data = (await source.collect()).data
    assert 4 not in {r.user_id for r in data.readings} | {u.user_id for u in data.users}


async def test_a_portal_that_grows_past_a_page_lists_every_user(portal_factory, make_source):
    server = await portal_factory(users=49)
    sim = server.sim
    source = make_source(server)
    await source.collect()
    sim.users += [SimUser(600 + i, "Late", f"Joiner{i}", departments=[1]) for i in range(3)]  # 52 active: two pages now
    data = (await source.collect()).data
    assert len(data.users) == 52
    assert readings(data) == truth(sim)
    steady(sim)
    await source.collect()  # the listing now asks for both pages in the wave
    assert sim.commands_by_method["user.get"] == 2
    assert sim.calls["user.get"] == 0
    assert sim.calls["batch"] == batches(2 + 52 * len(ROLES))


class BatchLog:
    """A middleware for the fake portal, noting the methods of every `batch` it receives, in arrival order."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

        @web.middleware
        async def note(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not request.path.endswith("/batch"):
                return await handler(request)
            arrived = len(self.batches)
            self.batches.append([])
            response = await handler(request)  # the portal reads the body first (it must find it unread)
            commands = json.loads(await request.read())["cmd"].values()
            self.batches[arrived] = [c.partition("?")[0] for c in commands]
            return response

        self.middleware = note


async def test_a_large_portals_listing_is_spread_over_the_wave_at_no_extra_call(portal_factory):
    """A batch of 50 user.get pages is one answer of 2,500 full user records (~17 MB decoded at once)."""
    sent = BatchLog()
    server = await portal_factory(users=1000, hidden=0, latency=0.0, rate_limited=False, middlewares=[sent.middleware])
    sim = server.sim
    source = server.source(rate_limit=RateLimit(1000.0, 1000))
    await source.collect()
    steady(sim)
    sent.batches.clear()
    data = (await source.collect()).data
    pages = 1000 // PAGE
    assert sim.calls["batch"] == batches(pages + 1000 * len(ROLES))  # as few calls as the commands need
    assert sum(b.count("user.get") for b in sent.batches) == pages
    assert max(b.count("user.get") for b in sent.batches) == EXTRA_PER_BATCH
    assert all(len(b) == 50 for b in sent.batches[:-1])
    assert len(data.users) == 1000
    assert readings(data) == truth(sim)


async def test_an_unchanged_portals_next_snapshot_shares_the_last_ones_values(portal_factory, make_source):
    """The snapshot being served and the next one are both alive while the next cycle runs: what did not
    change is held once (users, their departments, and each distinct counter set)."""
    server = await portal_factory(users=60, latency=0.0)
    sim = server.sim
    source = make_source(server)
    first = (await source.collect()).data
    second = (await source.collect()).data
    assert all(a is b for a, b in zip(first.users, second.users, strict=True))
    assert second.org is first.org
    assert len(second.org.user_departments) > len(second.users)  # each user is in a department and those above
    assert len({id(values) for values in second.counters.values()}) == len(set(second.counters.values()))
    assert readings(second) == truth(sim)
    renamed = sim.users[0]
    renamed.last_name = "Renamed"
    third = (await source.collect()).data
    assert third.users[0].name.endswith("Renamed")
    assert third.users[1] is second.users[1]
    assert third.org is second.org  # the same users and departments: only a name changed


async def test_user_get_refused_inside_batch_lists_directly_alongside_the_wave(portal_factory, make_source):
    server = await portal_factory(users=60, batch_command_errors={"user.get": "ACCESS_DENIED"})
    sim = server.sim
    source = make_source(server)
    for _ in range(3):
        data = (await source.collect()).data
        assert len(data.users) == 60
        assert readings(data) == truth(sim)
    steady(sim)
    await source.collect()
    assert sim.calls["user.get"] == 2  # both pages directly, no batch tried any more
    assert sim.commands_by_method["user.get"] == 2
    assert sim.calls["batch"] == batches(60 * len(ROLES))


async def test_explicit_users_names_travel_with_their_counters(portal_factory, make_source):
    server = await portal_factory(users=8)
    sim = server.sim
    source = make_source(server, users=(2, 5))
    await source.collect()
    steady(sim)
    data = (await source.collect()).data
    assert sim.calls["batch"] == 1
    assert sum(sim.calls.values()) == 1
    assert [(u.user_id, u.name) for u in data.users] == [
        (u.user_id, f"{u.name} {u.last_name}") for u in sim.users if u.user_id in (2, 5)]
    assert {r.user_id for r in data.readings} == {2, 5}


async def test_hidden_users_and_failed_commands_keep_their_rules(portal_factory, make_source):
    server = await portal_factory(users=8, hidden=2)
    sim = server.sim
    source = make_source(server)
    first = (await source.collect()).data
    sim.command_errors[3] = "ERROR_CORE"
    sim.overrides[(3, 0, "view_all")] = {"expired": 99, "new_comments": 99}
    data = (await source.collect()).data
    assert data.hidden_users == 2
    assert data.failed_commands == len(ROLES)
    kept = {k: v for k, v in readings(first).items() if k[0] == 3}
    assert kept
    assert {k: v for k, v in readings(data).items() if k[0] == 3} == kept


async def test_a_structure_refresh_that_is_due_brings_new_members_counters(portal_factory, make_source):
    server = await portal_factory(users=20, groups=2, special_groups=False)
    sim = server.sim
    clock = Clock()
    source = make_source(server, clock=clock, groups=None, structure_interval=600.0)
    await source.collect()
    group = sim.workgroup(1)
    assert group is not None
    joiner = next(u.user_id for u in sim.users if u.active and u.user_id not in group.members)
    group.members[joiner] = "K"
    data = (await source.collect()).data  # not due yet: the old membership
    assert joiner not in {r.user_id for r in data.readings if r.group_id == 1}
    clock.now += 601
    steady(sim)
    data = (await source.collect()).data
    assert sim.commands_by_method["department.get"] >= 1  # refreshed in this cycle
    assert {k for k in readings(data) if k[0] == joiner and k[1] == 1} == {
        (joiner, 1, role, counter) for role, kind in ROLES.items() for counter in sim.counters(joiner, 1, kind)}
    members = {(r.user_id, r.group_id) for r in data.readings if r.group_id}
    assert members == {(uid, g.group_id) for g in sim.workgroups for uid in g.members
                       if g.is_member(uid) and any(u.user_id == uid and u.active for u in sim.users)}


@contextlib.asynccontextmanager
async def portal_counting_connections(sim: PortalSimulator, *, idle_close: float = 75.0
                                      ) -> AsyncIterator[tuple[PortalServer, set[Any]]]:
    """The fake portal on loopback, with the set of client connections (peer addresses) its requests came on;
    it closes a connection idle for `idle_close` seconds."""
    peers: set[Any] = set()

    @web.middleware
    async def note_peer(request: web.Request, handler: Any) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        response: web.StreamResponse = await handler(request)
        return response

    app = create_app(sim)
    app.middlewares.append(note_peer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=idle_close)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield PortalServer(sim, f"http://127.0.0.1:{sock.getsockname()[1]}"), peers
    finally:
        await runner.cleanup()


async def test_a_cycle_an_interval_after_the_last_reuses_its_connections(make_source):
    """11 requests at once need 11 connections; kept from one cycle to the next (past the client's default of 5 s
    idle), a steady-state cycle opens none: no handshakes before its one round trip."""
    async with portal_counting_connections(generate_portal(100, inactive=1, hidden=0)) as (server, peers):
        source = make_source(server, interval=6.0)
        await source.collect()
        await source.collect()
        opened = set(peers)
        await asyncio.sleep(5.5)  # idle, as between two cycles (not waiting for a condition)
        peers.clear()
        assert (await source.collect()).calls == 11
        assert peers
        assert peers <= opened


async def test_connections_the_portal_closed_while_idle_are_replaced_without_a_fault(make_source):
    async with portal_counting_connections(generate_portal(100, inactive=1, hidden=0), idle_close=0.2) as (
            server, peers):
        source = make_source(server)
        await source.collect()
        opened = set(peers)
        await asyncio.sleep(0.6)  # idle for longer than the portal keeps a connection
        cycle = await source.collect()
        assert readings(cycle.data) == truth(server.sim)
        assert not peers <= opened  # new connections
        outcomes = {outcome for _, outcome in source.telemetry.counts().requests}
        assert outcomes == {"success"}


def test_counters_command_is_the_batch_query_string_of_its_parameters():
    query = CounterQuery(17, 3, "responsible")
    assert counters_command(query) == command(COUNTERS, {"userId": 17, "groupId": 3, "type": ROLES["responsible"]})


# --- many portals in one process: spread cycles, paced renders -----------------------------------


def test_sources_get_their_own_slots_in_the_interval():
    phases = [spread(SourceKey("bitrix24", f"portal{i:03d}")) for i in range(100)]
    assert all(0 <= p < 1 for p in phases)
    assert spread(SourceKey("bitrix24", "portal000")) == phases[0]  # the same after a restart
    assert {int(p * 10) for p in phases} == set(range(10))  # every tenth of the interval has some


async def test_the_second_cycle_waits_for_the_sources_slot_once(portal_factory):
    server = await portal_factory(users=3)
    source = server.source(interval=0.2)
    store = Store()
    store.register(source)
    loop = SourceLoop(source, store, phase=0.9)
    starts: list[float] = []  # when each finished cycle began (the scheduler's own record), however slow it ran
    store.on_change(lambda: starts.append(loop.cycle_started or math.nan))
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await eventually(lambda: len(starts) >= 3, timeout=20.0)
    stop.set()
    await task
    assert starts[1] - starts[0] >= 0.2 * 1.9 - 1e-3  # the interval and 0.9 of it
    assert starts[2] - starts[1] >= 0.2 - 1e-3
    assert loop.failures == 0


def _gauge(value: float) -> list[Family]:
    family = Family.gauge("pipeline_test_value", "The value the test set last.", [])
    family.add_metric([], value)
    return [family]


async def test_changes_while_renders_are_paced_are_coalesced():
    """With render_share 0.2 a render that used 50 ms of CPU is followed by 250 ms before the next one begins,
    and every change in between joins that next render (however loaded the machine is). The gap is checked
    from the moment the render read the snapshot, which a loaded machine may delay past the render's start:
    150 ms leaves 100 ms for that, and without pacing the gap would be the 50 ms of the render itself."""
    current = [0.0]
    starts: list[float] = []

    def snapshot() -> list[Family]:
        value = current[0]
        starts.append(time.monotonic())
        spent = time.thread_time() + 0.05  # the CPU cost of a big render, in its worker thread
        while time.thread_time() < spent:
            pass
        return _gauge(value)

    exposition = Exposition(snapshot, render_share=0.2)
    exposition.render_now()
    current[0] = 1.0
    exposition.invalidate()
    await eventually(lambda: len(starts) == 2)  # the first paced render has begun
    for n in range(2, 21):  # 19 changes while it runs or while the next one is held back
        current[0] = float(n)
        exposition.invalidate()
    await eventually(lambda: b"pipeline_test_value 20.0" in exposition.parts(False)[0], timeout=10.0)
    assert len(starts) == 3  # the 19 changes made one render
    assert starts[2] - starts[1] >= 0.15


async def test_a_render_that_waits_without_using_the_cpu_does_not_hold_back_the_next():
    """On a loaded machine a render waits for a core: 300 ms of waiting at render_share 0.02 would hold the
    next render back 15 s if waiting counted as cost; it is CPU time that counts, so the next change shows
    at once."""
    current = [0.0]

    def snapshot() -> list[Family]:
        time.sleep(0.3 if current[0] == 1.0 else 0.0)  # waiting, not working
        return _gauge(current[0])

    exposition = Exposition(snapshot)
    current[0] = 1.0
    exposition.invalidate()
    await eventually(lambda: b"pipeline_test_value 1.0" in exposition.parts(False)[0])
    assert exposition.render_seconds < 0.1
    current[0] = 2.0
    exposition.invalidate()
    await eventually(lambda: b"pipeline_test_value 2.0" in exposition.parts(False)[0], timeout=5.0)


async def test_the_gap_after_a_costly_render_is_capped():
    """50 ms of CPU at render_share 0.001 would hold the next render back 50 s; max_render_gap bounds it."""
    current = [0.0]

    def snapshot() -> list[Family]:
        spent = time.thread_time() + 0.05
        while time.thread_time() < spent:
            pass
        return _gauge(current[0])

    exposition = Exposition(snapshot, render_share=0.001, max_render_gap=0.3)
    current[0] = 1.0
    exposition.invalidate()
    await eventually(lambda: b"pipeline_test_value 1.0" in exposition.parts(False)[0])
    current[0] = 2.0
    exposition.invalidate()
    await eventually(lambda: b"pipeline_test_value 2.0" in exposition.parts(False)[0], timeout=5.0)


def test_gzip_scrapes_are_one_stream_of_the_body_and_the_live_part():
    exposition = Exposition(lambda: _gauge(7.0), lambda: _gauge_named("pipeline_test_live", 3.0), live_ttl=60.0)
    exposition.render_now()
    first, second = exposition.parts(True), exposition.parts(True)
    assert first == second
    text = gzip.decompress(b"".join(first))
    assert text == b"".join(exposition.parts(False))
    assert b"pipeline_test_value 7.0" in text
    assert b"pipeline_test_live 3.0" in text


def _gauge_named(name: str, value: float) -> list[Family]:
    family = Family.gauge(name, "A value the test set.", [])
    family.add_metric([], value)
    return [family]
