"""The Pachca half of the organisation view: departments, employee tags and e-mails from GET /users, read on
their own interval, rendered as pachca_user_info / pachca_user_tag, and joined with Bitrix24 users by e-mail."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from exporter.app import running
from exporter.collector import SnapshotCollector
from exporter.config import Config, PachcaConfig, PeopleConfig, PeoplePair, Secret
from exporter.people import normalize_email
from exporter.render import render
from exporter.simulator import serve
from exporter.simulator.bitrix24_users import generate_people
from exporter.simulator.pachca import DEMO_TOKEN, PREFIX, PachcaSimulator, create_app, generate_workspace
from exporter.snapshot import ApiTelemetry, PachcaUser, PortalSnapshot, PortalUser, ReminderTally, SourceKey, Store
from tests.conftest import (
    FAST_RETRY,
    NOW,
    AnswerServers,
    Clock,
    Events,
    MakePachcaSource,
    Received,
    check_metrics,
    exposition,
    labels,
    named,
    register,
    samples,
    scrape_until,
)


@pytest.fixture
def sim() -> PachcaSimulator:
    return generate_workspace(60, seed=7, now=NOW)


def users_page(users: list[dict[str, Any]], cursor: str = "end", has_next: bool = False) -> web.Response:
    return web.json_response({"data": users, "meta": {"paginate": {
        "next_page": cursor, "prev_page": "p", "has_next": has_next, "has_prev": False}}})


def user(uid: int, **fields: Any) -> dict[str, Any]:
    """A User as GET /users documents it; `fields` override (a value of `...` drops the key)."""
    record = {"id": uid, "first_name": "Anna", "last_name": "Petrova", "nickname": f"user{uid}",
              "email": f"user{uid}@example.com", "phone_number": None, "department": "Sales", "title": None,
              "role": "user", "suspended": False, "invite_status": "confirmed", "inviter_id": None,
              "list_tags": [], "custom_properties": [], "user_status": None, "bot": False, "sso": False,
              "created_at": "2025-01-01T00:00:00.000Z", "last_activity_at": None, "time_zone": None,
              "image_url": None}
    record.update(fields)
    return {k: v for k, v in record.items() if v is not ...}


async def routed(answer_server: AnswerServers, tasks: Callable[[], web.Response],
                 users: Callable[[], web.Response]) -> str:
    """The base URL of a workspace on loopback whose GET /users answers `users()`, and the rest `tasks()`."""
    def answer(request: Received) -> web.Response:
        return users() if request.path.endswith("/users") else tasks()
    return (await answer_server(answer)).url + PREFIX


def no_tasks() -> web.Response:
    return users_page([])


# --- the user directory -----------------------------------------------------------------------------


async def test_departments_tags_and_emails_come_from_users_with_nulls_as_empty(sim: PachcaSimulator,
                                                                               pachca_source: MakePachcaSource) -> None:
    tally = (await pachca_source().collect()).data
    by_id = {u.user_id: u for u in tally.users}
    assert set(by_id) == {u["id"] for u in sim.users}
    for raw in sim.users:
        got = by_id[raw["id"]]
        assert got.department == (raw["department"] or "").strip()
        assert got.tags == tuple(raw["list_tags"])
        assert got.email == (raw["email"] or "").strip().lower()
        assert (got.bot, got.suspended) == (raw["bot"], raw["suspended"])
    # the generated workspace has each awkward value, so the loop above checked it
    departments = [raw["department"] for raw in sim.users]
    assert None in departments
    assert "" in departments
    assert any(raw["email"] is None for raw in sim.users)
    assert any(not raw["list_tags"] for raw in sim.users)
    assert tally.users_read_at == NOW


async def test_odd_user_records_cost_only_their_own_fields(pachca_source: MakePachcaSource,
                                                           answer_server: AnswerServers) -> None:
    records = [
        user(1, first_name=None, last_name=None, department=None, list_tags=None, email=None),
        user(2, last_name="", department="  Backend  ", list_tags=["Design", "", 7, "Design", " On-call "],
             email="  Anna.P@Example.COM "),
        user(3, department=..., list_tags=..., email=..., bot=..., suspended=...),  # keys missing altogether
        user(4, department=12, title=""),
        {"id": "5", "first_name": "string id"}, "not a user", {"first_name": "no id"},
    ]
    source = pachca_source(base_url=await routed(answer_server, no_tasks, lambda: users_page(records)))
    tally = (await source.collect()).data
    assert tally.users == (
        PachcaUser(1, "user1", "", (), ""),
        PachcaUser(2, "Anna", "Backend", ("Design", "On-call"), "anna.p@example.com"),
        PachcaUser(3, "Anna Petrova", "", (), ""),
        PachcaUser(4, "Anna Petrova", "", (), "user4@example.com"),
    )


@pytest.mark.parametrize("short_pages", [False, True])
async def test_users_are_walked_by_cursor_and_end_on_has_next_false(pachca_source: MakePachcaSource,
                                                                    short_pages: bool) -> None:
    sim = generate_workspace(5, seed=3, now=NOW, users=120)
    sim.short_pages = short_pages  # pages shorter than limit mid-stream must not end the walk
    async with serve(create_app(sim)) as url:
        tally = (await pachca_source(base_url=url + PREFIX).collect()).data
    assert [u.user_id for u in tally.users] == sorted(u["id"] for u in sim.users)
    user_requests = [r for r in sim.requests if r.path == "/users"]
    assert all(r.query.get("limit") == "50" for r in user_requests)
    assert len(user_requests) == len({r.query.get("cursor") for r in user_requests})  # each cursor once
    if not short_pages:  # 50 + 50 + 20, the last with has_next: false: no request for an empty fourth page
        assert len(user_requests) == 3
    else:
        assert len(user_requests) > 3


async def test_429_on_users_waits_retry_after_and_reads_them(pachca_source: MakePachcaSource,
                                                             answer_server: AnswerServers) -> None:
    answers = iter([web.json_response({"errors": [
        {"key": "token", "value": None, "message": "Too many requests", "code": "rate_limit", "payload": None}]},
        status=429, headers={"Retry-After": "0.05"}), users_page([user(1, list_tags=["Design"])])])
    telemetry = ApiTelemetry()
    source = pachca_source(telemetry=telemetry, base_url=await routed(answer_server, no_tasks, lambda: next(answers)))
    tally = (await source.collect()).data
    assert [(u.user_id, u.tags) for u in tally.users] == [(1, ("Design",))]
    counts = telemetry.counts()
    assert counts.requests[("GET /users", "rate_limited")] == 1
    assert counts.requests[("GET /users", "success")] == 1
    assert counts.errors == {"rate_limit": 1}
    assert counts.rate_limit_wait_seconds >= 0.05


async def test_missing_users_scope_turns_departments_and_tags_off_with_one_warning(
        sim: PachcaSimulator, pachca_source: MakePachcaSource, logs: Events) -> None:
    sim.tokens = {DEMO_TOKEN: frozenset({"tasks:read"})}
    clock = Clock()
    source = pachca_source(clock=clock)
    first = (await source.collect()).data
    clock.now += 2 * 3600  # past the structure interval: still no second try
    second = (await source.collect()).data
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["pachca_user_names_off"]
    assert warnings[0]["scope"] == "users:read"
    assert sim.count("/users") == 1
    assert first.total == second.total == 60
    text = exposition(second)
    assert samples(text, "pachca_user_info") == {}
    assert samples(text, "pachca_user_tag") == {}
    assert samples(text, "pachca_users_last_read_timestamp_seconds") == {}
    assert sum(samples(text, "pachca_reminders").values()) == 60


async def test_names_false_keeps_departments_and_tags_but_no_names(sim: PachcaSimulator,
                                                                   pachca_source: MakePachcaSource) -> None:
    tally = (await pachca_source(names=False).collect()).data
    text = exposition(tally)
    info = samples(text, "pachca_user_info")
    assert info
    assert all(dict(found)["name"] == "" for found in info)
    departments = {dict(found)["user_id"]: dict(found)["department"] for found in info}
    expected = {str(u["id"]): (u["department"] or "") for u in sim.users if not u["bot"] and not u["suspended"]}
    assert {uid: d for uid, d in departments.items() if uid in expected} == expected
    assert samples(text, "pachca_user_tag")
    for raw in sim.users:  # no personal name of anyone reaches the text
        for part in (raw["first_name"], raw["last_name"]):
            assert not part or f'"{part}' not in text


# --- structure on its own interval ------------------------------------------------------------------


async def test_users_are_reread_on_the_structure_interval_not_every_cycle(sim: PachcaSimulator,
                                                                          pachca_source: MakePachcaSource) -> None:
    clock = Clock()
    source = pachca_source(clock=clock, structure_interval=600.0)
    first = (await source.collect()).data
    sim.users[0]["department"] = "Renamed"
    sim.users[0]["list_tags"] = ["Night shift"]
    clock.now += 599
    before = (await source.collect()).data
    assert sim.count("/users") == 1
    assert before.users == first.users
    clock.now += 1
    after = (await source.collect()).data
    assert sim.count("/users") == 2
    assert sim.count("/tasks") == 3 * 2  # two pages of tasks every cycle
    renamed = next(u for u in after.users if u.user_id == sim.users[0]["id"])
    assert (renamed.department, renamed.tags) == ("Renamed", ("Night shift",))
    assert after.users_read_at == NOW + 600


async def test_failing_refresh_keeps_the_last_good_users_and_never_fails_the_counts(pachca_source: MakePachcaSource,
                                                                                    answer_server: AnswerServers,
                                                                                    logs: Events) -> None:
    users: list[Callable[[], web.Response]] = [lambda: users_page([user(1, department="Sales")])]
    clock = Clock()
    telemetry = ApiTelemetry()
    source = pachca_source(clock=clock, telemetry=telemetry,
                           base_url=await routed(answer_server, no_tasks, lambda: users[0]()))
    good = (await source.collect()).data
    users[0] = lambda: web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")
    clock.now += 3600
    later = (await source.collect()).data
    assert later.users == good.users
    assert later.users_read_at == NOW
    failed = named(logs, "pachca_user_names_failed")
    assert len(failed) == 1
    assert failed[0]["kept_users"] == 1
    assert telemetry.counts().requests[("GET /users", "server_error")] == FAST_RETRY.attempts


# --- rendering --------------------------------------------------------------------------------------


def test_info_lists_active_users_and_bots_or_deactivated_users_only_while_they_perform() -> None:
    users = (PachcaUser(1, "Anna", "Sales", ("Design", "On-call")), PachcaUser(2, "Bot", bot=True),
             PachcaUser(3, "Idle bot", bot=True), PachcaUser(4, "Gone", suspended=True),
             PachcaUser(5, "Gone but busy", "Ops", ("Backend",), suspended=True))
    tally = ReminderTally(by_status={}, overdue={}, due_soon={}, without_due_date={},
                          performer={(2, "undone"): 1, (5, "done"): 2}, performer_overdue={},
                          oldest_overdue_seconds=0, total=3, pages=1, users=users, users_read_at=NOW)
    text = exposition(tally)
    info = {dict(found)["user_id"]: (dict(found)["name"], dict(found)["department"])
            for found in samples(text, "pachca_user_info")}
    assert info == {"1": ("Anna", "Sales"), "2": ("Bot", ""), "5": ("Gone but busy", "Ops")}
    tags = sorted((dict(found)["user_id"], dict(found)["tag"]) for found in samples(text, "pachca_user_tag"))
    assert tags == [("1", "Design"), ("1", "On-call"), ("5", "Backend")]
    assert samples(text, "pachca_users_last_read_timestamp_seconds") == {labels(workspace="team"): NOW}


# --- one person across both tools -------------------------------------------------------------------


def demo_portal(count: int = 12) -> PortalSnapshot:
    """The Bitrix24 simulator's default people, as the Bitrix24 source reports them (e-mails normalised)."""
    people = generate_people(count)
    return PortalSnapshot(tuple(PortalUser(p.user_id, f"{p.name} {p.last_name}", normalize_email(p.email))
                                for p in people), counters={}, hidden_users=0, failed_commands=0)


EMAIL = PeopleConfig(match="email", pairs=(PeoplePair("acme", "team"),))


async def test_people_match_the_demo_portal_by_email(pachca_source: MakePachcaSource, logs: Events) -> None:
    """The workspace shares the portal's people with documented twists (see simulator.pachca.generate)."""
    tally = (await pachca_source().collect()).data
    text = exposition(tally, demo_portal(), people=EMAIL)
    portal = {p.user_id: normalize_email(p.email) for p in generate_people(12)}
    matched = {(dict(found)["bitrix24_user_id"], dict(found)["pachca_user_id"]): dict(found)["person"]
               for found in samples(text, "tasks_exporter_person_info")}
    # Pachca user 10 + i is portal user i: 3 differs in case, 6 has spaces, 7 is an unregistered invitee (still
    # matched); 4 is a bot, 8 deactivated, 9 has another e-mail, 10 and 11 share portal user 10's e-mail
    assert matched == {(str(i), str(10 + i)): portal[i] for i in (1, 2, 3, 5, 6, 7, 12)}
    states = {dict(found)["state"]: v for found, v in samples(text, "tasks_exporter_people").items()}
    assert states == {"matched": 7, "bitrix24_only": 4, "pachca_only": 1, "ambiguous": 3}
    shared = named(logs, "people_email_shared")
    assert [(e["side"], e["target"], e["user_ids"]) for e in shared] == [("pachca", "team", [20, 21])]
    assert all(portal[10] not in json.dumps(e, default=str) for e in logs)  # the e-mail itself is never logged


async def test_people_without_pairs_match_every_portal_with_every_workspace(
        pachca_source: MakePachcaSource) -> None:
    tally = (await pachca_source().collect()).data
    store = Store()
    for key, data in ((SourceKey("pachca", "team"), tally), (SourceKey("pachca", "ops"), tally),
                      (SourceKey("bitrix24", "acme"), demo_portal()), (SourceKey("bitrix24", "beta"), demo_portal())):
        register(store, key, 60)
        store.succeeded(key, data, 0.1)
    text = render(SnapshotCollector(store, people=PeopleConfig(match="email")).snapshot_families()).decode()
    matched = {(dict(found)["portal"], dict(found)["workspace"]): v for found, v in samples(
        text, "tasks_exporter_people").items() if dict(found)["state"] == "matched"}
    assert matched == {(p, w): 7 for p in ("acme", "beta") for w in ("team", "ops")}


async def test_people_label_name_and_names_false_portal(pachca_source: MakePachcaSource) -> None:
    tally = (await pachca_source().collect()).data
    by_name = PeopleConfig(match="email", label="name", pairs=EMAIL.pairs)
    by_names = samples(exposition(tally, demo_portal(), people=by_name), "tasks_exporter_person_info")
    names = {f"{p.name} {p.last_name}" for p in generate_people(12)}
    assert by_names
    assert all(dict(found)["person"] in names for found in by_names)
    # a portal with names: false reports empty names: person falls back to the e-mail, never a name
    blank = PortalSnapshot(tuple(PortalUser(u.user_id, "", u.email) for u in demo_portal().users), counters={},
                           hidden_users=0, failed_commands=0)
    anonymous = samples(exposition(tally, blank, people=by_name), "tasks_exporter_person_info")
    assert len(anonymous) == len(by_names)
    assert all("@" in dict(found)["person"] for found in anonymous)


async def test_shared_email_is_logged_once_however_often_it_renders(pachca_source: MakePachcaSource,
                                                                    logs: Events) -> None:
    tally = (await pachca_source().collect()).data
    store = Store()
    for key, data in ((SourceKey("pachca", "team"), tally), (SourceKey("bitrix24", "acme"), demo_portal())):
        register(store, key, 60)
        store.succeeded(key, data, 0.1)
    collector = SnapshotCollector(store, people=EMAIL)
    for _ in range(3):
        render(collector.snapshot_families())
    assert len(named(logs, "people_email_shared")) == 1


async def test_people_wait_for_both_sides(sim: PachcaSimulator, pachca_source: MakePachcaSource) -> None:
    sim.tokens = {DEMO_TOKEN: frozenset({"tasks:read"})}
    tally = (await pachca_source().collect()).data  # users never read: matching would call everyone bitrix24_only
    text = exposition(tally, demo_portal(), people=EMAIL)
    assert samples(text, "tasks_exporter_people") == {}
    assert samples(text, "tasks_exporter_person_info") == {}
    assert "# TYPE tasks_exporter_people gauge" in text


def test_people_families_have_no_series_without_the_people_section() -> None:
    tally = ReminderTally(by_status={}, overdue={}, due_soon={}, without_due_date={}, performer={},
                          performer_overdue={}, oldest_overdue_seconds=0, total=0, pages=0, users_read_at=NOW)
    text = exposition(tally, demo_portal())
    assert samples(text, "tasks_exporter_people") == {}
    assert samples(text, "tasks_exporter_person_info") == {}


async def test_org_metrics_pass_promtool_check_metrics(pachca_source: MakePachcaSource) -> None:
    text = exposition((await pachca_source().collect()).data, demo_portal(), people=EMAIL)
    assert samples(text, "pachca_user_tag")
    assert samples(text, "tasks_exporter_person_info")
    await check_metrics(text)


async def test_running_exporter_serves_the_org_families_and_people(portal_factory: Any) -> None:
    """Config -> sources -> store -> collector -> HTTP: the `people` section reaches the collector."""
    portal = await portal_factory(users=12, inactive=0)
    workspace = generate_workspace(60, seed=7)
    async with serve(create_app(workspace)) as url:
        config = Config(bitrix24=(portal.config(name="acme"),),
                        pachca=(PachcaConfig(name="team", token=Secret(DEMO_TOKEN), base_url=url + PREFIX),),
                        people=EMAIL)
        async with running(config) as exp:
            text = await scrape_until(exp.url, lambda t: "tasks_exporter_people{" in t and "bitrix24_tasks{" in t)
    info = samples(text, "pachca_user_info")
    assert {dict(found)["department"] for found in info} >= {"", "Sales"}
    assert samples(text, "pachca_user_tag")
    states = {dict(found)["state"]: v for found, v in samples(text, "tasks_exporter_people").items()}
    assert set(states) == {"matched", "bitrix24_only", "pachca_only", "ambiguous"}
    # every user lands in one state: 12 monitored Bitrix24 users, 10 active Pachca users (a bot, one deactivated)
    assert states["matched"] * 2 + states["bitrix24_only"] + states["pachca_only"] + states["ambiguous"] == 12 + 10
    await check_metrics(text)
