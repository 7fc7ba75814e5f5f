"""PachcaSource against the fake Pachca API over loopback: the tally, the cursor walk, retries, auth, names."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web

from exporter.errors import SourceFailure
from exporter.simulator.pachca import DEMO_TOKEN, PREFIX, PachcaSimulator, generate_workspace
from exporter.snapshot import ApiTelemetry, PachcaUser, ReminderTally
from exporter.sources.pachca import PachcaSource
from tests.conftest import FAST_RETRY, NOW, AnswerServers, Clock, Events, MakePachcaSource, Received, Respond, named

DAY = 86400.0


@pytest.fixture
def sim() -> PachcaSimulator:
    return generate_workspace(180, seed=7, now=NOW)


Answered = Callable[..., Awaitable[PachcaSource]]


@pytest.fixture
def answered(pachca_source: MakePachcaSource, answer_server: AnswerServers) -> Answered:
    """`await answered(respond, **options)`: a source for a workspace on loopback that answers with `respond`."""
    async def make(respond: Respond, **options: Any) -> PachcaSource:
        return pachca_source(base_url=(await answer_server(respond)).url + PREFIX, **options)
    return make


def page(data: list[Any], *, next_page: str | None = "c1", has_next: bool | None = None) -> web.Response:
    paginate: dict[str, Any] = {"next_page": next_page}
    if has_next is not None:
        paginate["has_next"] = has_next
    return web.json_response({"data": data, "meta": {"paginate": paginate}})


def reminder(rid: int = 1, *, status: str = "undone", kind: str = "call", priority: Any = 1,
             due_at: str | None = "2026-05-28T10:00:00.000Z", performers: list[Any] | None = None,
             all_day: bool = False) -> dict[str, Any]:
    return {"id": rid, "kind": kind, "content": "x", "due_at": due_at, "priority": priority, "user_id": 11,
            "chat_id": None, "status": status, "created_at": "2026-05-01T10:00:00.000Z",
            "performer_ids": [11] if performers is None else performers, "all_day": all_day,
            "custom_properties": []}


# --- the expected tally, counted the plain way ------------------------------------------------------


def expected_tally(reminders: list[dict[str, Any]], users: list[dict[str, Any]], now: float,
                   due_soon: float, pages: int, read_users: bool = True) -> ReminderTally:
    """What the source must report, computed with a plain loop that shares no code with it."""
    by_status: dict[tuple[str, str, str], int] = {}
    overdue: dict[tuple[str, str], int] = {}
    soon: dict[str, int] = {}
    no_due: dict[str, int] = {}
    performer: dict[tuple[int, str], int] = {}
    performer_overdue: dict[int, int] = {}
    oldest = 0.0

    def bump(counts: dict[Any, int], key: Any) -> None:
        counts[key] = counts.get(key, 0) + 1

    for r in reminders:
        status, kind, priority = r["status"], r["kind"], str(r["priority"])
        bump(by_status, (status, kind, priority))
        for pid in set(r["performer_ids"]):
            bump(performer, (pid, status))
        if r["due_at"] is None:
            bump(no_due, status)
            continue
        due = datetime.strptime(r["due_at"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
        if status == "undone" and due < now:
            bump(overdue, (kind, priority))
            for pid in set(r["performer_ids"]):
                bump(performer_overdue, pid)
            oldest = max(oldest, now - due)
        elif status == "undone" and due <= now + due_soon:
            bump(soon, kind)
    directory = tuple(
        PachcaUser(u["id"], " ".join(part for part in (u["first_name"], u["last_name"]) if part) or u["nickname"],
                   department=(u["department"] or "").strip(), tags=tuple(u["list_tags"]),
                   email=(u["email"] or "").strip().lower(), bot=u["bot"], suspended=u["suspended"])
        for u in sorted(users, key=lambda u: u["id"]))
    return ReminderTally(by_status=by_status, overdue=overdue, due_soon=soon, without_due_date=no_due,
                         performer=performer, performer_overdue=performer_overdue,
                         oldest_overdue_seconds=oldest, total=len(reminders), pages=pages, users=directory,
                         users_read_at=now if read_users else None)


def names(tally: ReminderTally) -> dict[int, str]:
    return {u.user_id: u.name for u in tally.users}


# --- the tally --------------------------------------------------------------------------------------


async def test_generated_workspace_tally_matches_a_plain_count(sim: PachcaSimulator,
                                                               pachca_source: MakePachcaSource) -> None:
    source = pachca_source()
    tally = (await source.collect()).data
    expected = expected_tally(sim.reminders, sim.users, NOW, DAY, pages=math.ceil(180 / 50))
    assert tally == expected
    # the data set exercises every metric, so the equality above pins something in each
    assert all((tally.by_status, tally.overdue, tally.due_soon, tally.without_due_date, tally.performer,
                tally.performer_overdue, tally.users))
    assert tally.oldest_overdue_seconds > 0


async def test_tally_follows_the_due_soon_setting(sim: PachcaSimulator, pachca_source: MakePachcaSource) -> None:
    tally = (await pachca_source(due_soon=3 * DAY).collect()).data
    assert tally.due_soon == expected_tally(sim.reminders, sim.users, NOW, 3 * DAY, pages=4).due_soon


async def test_null_due_at_is_never_overdue(sim: PachcaSimulator, pachca_source: MakePachcaSource) -> None:
    sim.reminders = [reminder(1, due_at=None), reminder(2, due_at=None, status="done")]
    tally = (await pachca_source().collect()).data
    assert tally.overdue == {}
    assert tally.due_soon == {}
    assert tally.performer_overdue == {}
    assert tally.oldest_overdue_seconds == 0.0
    assert tally.without_due_date == {"undone": 1, "done": 1}


async def test_due_soon_window_bounds(sim: PachcaSimulator, pachca_source: MakePachcaSource) -> None:
    def at(offset: float) -> str:
        return datetime.fromtimestamp(NOW + offset).astimezone().isoformat()

    sim.reminders = [reminder(1, due_at=at(-1)), reminder(2, due_at=at(0), kind="email"),
                     reminder(3, due_at=at(DAY), kind="email"), reminder(4, due_at=at(DAY + 1), kind="event"),
                     reminder(5, due_at=at(-5), status="done")]
    tally = (await pachca_source().collect()).data
    assert tally.overdue == {("call", "1"): 1}
    assert tally.due_soon == {"email": 2}
    assert tally.oldest_overdue_seconds == 1.0


async def test_all_day_reminder_is_due_at_the_given_midnight(sim: PachcaSimulator,
                                                            pachca_source: MakePachcaSource) -> None:
    sim.reminders = [reminder(1, due_at="2026-05-28T00:00:00.000Z", all_day=True),
                     reminder(2, due_at="2026-05-29T00:00:00.000Z", all_day=True, kind="meeting")]
    tally = (await pachca_source().collect()).data
    assert tally.overdue == {("call", "1"): 1}
    assert tally.oldest_overdue_seconds == NOW - datetime.fromisoformat("2026-05-28T00:00:00Z").timestamp()
    assert tally.due_soon == {"meeting": 1}


async def test_reminder_with_three_performers_counts_once_for_each(sim: PachcaSimulator,
                                                                  pachca_source: MakePachcaSource) -> None:
    sim.reminders = [reminder(1, performers=[11, 12, 13, 12]), reminder(2, status="done", performers=[12])]
    tally = (await pachca_source().collect()).data
    assert tally.performer == {(11, "undone"): 1, (12, "undone"): 1, (13, "undone"): 1, (12, "done"): 1}
    assert tally.performer_overdue == {11: 1, 12: 1, 13: 1}
    assert tally.total == 2


async def test_unknown_priority_kind_and_status_are_kept(sim: PachcaSimulator, pachca_source: MakePachcaSource) -> None:
    sim.reminders = [reminder(1, priority=7, kind="todo"), reminder(2, priority="2", status="archived"),
                     reminder(3, priority=0, kind="meeting")]
    tally = (await pachca_source().collect()).data
    assert tally.by_status == {("undone", "todo", "7"): 1, ("archived", "call", "2"): 1,
                               ("undone", "meeting", "0"): 1}
    assert tally.overdue == {("todo", "7"): 1, ("meeting", "0"): 1}


async def test_wrong_types_cost_only_their_field(sim: PachcaSimulator, pachca_source: MakePachcaSource,
                                                 logs: Events) -> None:
    sim.reminders = [
        reminder(1, priority="high"), reminder(2, due_at="next tuesday"), {**reminder(3), "status": 7},
        {**reminder(4), "due_at": 1717171717}, reminder(5, performers=["a", None, True, 12]),
        {**reminder(6), "performer_ids": "12"}, {**reminder(7), "kind": ["call"]}, "not a reminder", 42,
    ]
    tally = (await pachca_source().collect()).data
    assert tally.total == 7
    assert tally.by_status == {("undone", "call", "unknown"): 1, ("undone", "call", "1"): 4,
                               ("unknown", "call", "1"): 1, ("undone", "unknown", "1"): 1}
    assert tally.without_due_date == {}  # a due_at that cannot be read is not "no due date"
    assert tally.overdue == {("call", "unknown"): 1, ("call", "1"): 2, ("unknown", "1"): 1}
    assert tally.performer == {(11, "undone"): 4, (11, "unknown"): 1, (12, "undone"): 1}
    assert named(logs, "pachca_odd_records")[0]["malformed"] == 9


async def test_wrong_types_fault_does_not_fail_the_cycle(sim: PachcaSimulator, pachca_source: MakePachcaSource) -> None:
    sim.fault = "wrong_types"
    tally = (await pachca_source().collect()).data
    assert tally.pages == 4
    assert 0 < tally.total < 180


# --- the cursor walk --------------------------------------------------------------------------------


async def test_walk_sends_limit_and_stops_on_has_next_false(sim: PachcaSimulator,
                                                            pachca_source: MakePachcaSource) -> None:
    cycle = await pachca_source(performer_names=False).collect()
    tasks = [r for r in sim.requests if r.path == "/tasks"]
    assert len(tasks) == cycle.data.pages == 4  # the last page's non-null cursor is not followed
    assert all(r.query["limit"] == "50" for r in tasks)
    assert "cursor" not in tasks[0].query
    assert all("cursor" in r.query for r in tasks[1:])
    assert cycle.calls == 4
    assert sim.count("/users") == 0


async def test_page_size_is_honoured(sim: PachcaSimulator, pachca_source: MakePachcaSource) -> None:
    tally = (await pachca_source(page_size=20, performer_names=False).collect()).data
    assert tally.pages == 9
    assert tally.total == 180
    assert {r.query["limit"] for r in sim.requests} == {"20"}


async def test_missing_has_next_walks_to_the_empty_page(sim: PachcaSimulator, pachca_source: MakePachcaSource) -> None:
    sim.omit_has_next = True
    tally = (await pachca_source(performer_names=False).collect()).data
    assert tally.total == 180
    assert tally.pages == 5  # four with data, then the empty one


async def test_short_page_mid_stream_does_not_end_the_walk(sim: PachcaSimulator,
                                                           pachca_source: MakePachcaSource) -> None:
    sim.short_pages = True
    tally = (await pachca_source(performer_names=False).collect()).data
    assert tally == expected_tally(sim.reminders, [], NOW, DAY, pages=tally.pages, read_users=False)
    assert tally.pages > 4


async def test_repeated_cursor_stops_without_counting_twice(sim: PachcaSimulator,
                                                            pachca_source: MakePachcaSource, logs: Events) -> None:
    sim.repeat_cursor = True
    tally = (await pachca_source(performer_names=False).collect()).data
    assert tally == expected_tally(sim.reminders, [], NOW, DAY, pages=4, read_users=False)
    assert sim.count("/tasks") == 4
    assert named(logs, "pachca_cursor_repeated")


async def test_cursor_that_never_ends_stops_at_max_pages(sim: PachcaSimulator, pachca_source: MakePachcaSource,
                                                         logs: Events) -> None:
    sim.endless = True
    tally = (await pachca_source(max_pages=7, performer_names=False).collect()).data
    assert tally.pages == 7
    assert sim.count("/tasks") == 7
    assert tally.total == 180  # wrapped-around records are not counted again
    assert named(logs, "pachca_page_cap_reached")[0]["max_pages"] == 7


async def test_empty_page_mid_stream_does_not_end_the_walk_while_has_next_says_more(answered: Answered) -> None:
    # the end is has_next: false, not an empty page (docs/api-notes.md#pachca-has-next)
    answers = iter([page([reminder(1)], next_page="a", has_next=True),
                    page([], next_page="b", has_next=True), page([reminder(2)], next_page="c", has_next=False)])
    source = await answered(lambda _: next(answers), performer_names=False)
    cycle = await source.collect()
    assert (cycle.data.total, cycle.data.pages, cycle.calls) == (2, 3, 3)


async def test_null_cursor_of_the_older_api_ends_the_walk(answered: Answered) -> None:
    source = await answered(lambda _: page([reminder(1)], next_page=None), performer_names=False)
    assert (await source.collect()).data.pages == 1


# --- retries and failures ---------------------------------------------------------------------------


async def test_429_honours_retry_after_then_succeeds(sim: PachcaSimulator, pachca_source: MakePachcaSource) -> None:
    sim.inject("rate_limit_storm", times=1)
    sim.retry_after = 0.2
    telemetry = ApiTelemetry()
    tally = (await pachca_source(telemetry=telemetry, performer_names=False).collect()).data
    assert tally.total == 180
    first, second = sim.requests[0], sim.requests[1]
    assert first.status == 429
    assert second.status == 200
    assert second.at - first.at >= 0.2
    counts = telemetry.counts()
    assert counts.requests == {("GET /tasks", "rate_limited"): 1, ("GET /tasks", "success"): 4}
    assert counts.errors == {"rate_limit": 1}
    assert counts.rate_limit_wait_seconds >= 0.2


async def test_retry_after_beyond_the_cap_fails_and_pauses_requests(sim: PachcaSimulator,
                                                                    pachca_source: MakePachcaSource) -> None:
    clock = Clock()
    source = pachca_source(clock=clock, performer_names=False)
    sim.fault = "rate_limit_storm"  # Retry-After: 3600, far above the policy's 1 s cap
    with pytest.raises(SourceFailure) as failure:
        await source.collect()
    assert failure.value.reason == "rate_limited"
    assert sim.count() == 1
    sim.fault = None
    with pytest.raises(SourceFailure):  # still inside the Retry-After: no request at all
        await source.collect()
    assert sim.count() == 1
    clock.now += 3601
    assert (await source.collect()).data.total == 180


async def test_429_without_retry_after_backs_off_and_gives_up(answered: Answered) -> None:
    sent: list[Received] = []

    def refuse(request: Received) -> web.Response:
        sent.append(request)
        return web.json_response({"errors": []}, status=429)

    with pytest.raises(SourceFailure) as failure:
        await (await answered(refuse)).collect()
    assert failure.value.reason == "rate_limited"
    assert len(sent) == FAST_RETRY.rate_limit_attempts


@pytest.mark.parametrize("fault", ["http_500", "http_502", "http_503"])
async def test_server_error_then_success(sim: PachcaSimulator, pachca_source: MakePachcaSource, fault: str) -> None:
    sim.inject(fault, times=2)
    telemetry = ApiTelemetry()
    tally = (await pachca_source(telemetry=telemetry, performer_names=False).collect()).data
    assert tally.total == 180
    counts = telemetry.counts()
    assert counts.requests[("GET /tasks", "server_error")] == 2
    assert counts.errors == ({"unhandled": 2} if fault == "http_500" else {f"http_{fault[5:]}": 2})


async def test_server_errors_past_the_attempts_fail_the_cycle(sim: PachcaSimulator,
                                                              pachca_source: MakePachcaSource) -> None:
    sim.fault = "http_503"
    with pytest.raises(SourceFailure) as failure:
        await pachca_source().collect()
    assert failure.value.reason == "server_error"
    assert sim.count() == FAST_RETRY.attempts


async def test_connection_reset_is_retried(sim: PachcaSimulator, pachca_source: MakePachcaSource) -> None:
    sim.inject("reset", times=1)
    telemetry = ApiTelemetry()
    assert (await pachca_source(telemetry=telemetry, performer_names=False).collect()).data.total == 180
    assert telemetry.counts().requests[("GET /tasks", "network_error")] == 1


async def test_timeout_is_retried_then_fails_with_reason_timeout(sim: PachcaSimulator,
                                                                 pachca_source: MakePachcaSource) -> None:
    sim.fault = "timeout"
    telemetry = ApiTelemetry()
    with pytest.raises(SourceFailure) as failure:
        await pachca_source(telemetry=telemetry, timeout=0.05).collect()
    assert failure.value.reason == "timeout"
    assert telemetry.counts().requests == {("GET /tasks", "timeout"): FAST_RETRY.attempts}


@pytest.mark.parametrize("fault", ["html", "truncated_json"])
async def test_unreadable_body_is_invalid_response_after_retries(sim: PachcaSimulator,
                                                                 pachca_source: MakePachcaSource, fault: str) -> None:
    sim.fault = fault
    telemetry = ApiTelemetry()
    with pytest.raises(SourceFailure) as failure:
        await pachca_source(telemetry=telemetry).collect()
    assert failure.value.reason == "invalid_response"
    counts = telemetry.counts()
    assert counts.requests == {("GET /tasks", "invalid_response"): FAST_RETRY.attempts}
    assert counts.errors == {"invalid_response": FAST_RETRY.attempts}


@pytest.mark.parametrize("body", [{"data": {"id": 1}}, {"result": []}, [1, 2], "data"])
async def test_body_not_of_the_documented_shape_is_invalid_response(answered: Answered, body: Any) -> None:
    source = await answered(lambda _: web.json_response(body))
    with pytest.raises(SourceFailure) as failure:
        await source.collect()
    assert failure.value.reason == "invalid_response"


async def test_invalid_token_stops_the_cycle_with_reason_auth(sim: PachcaSimulator,
                                                              pachca_source: MakePachcaSource, logs: Events) -> None:
    telemetry = ApiTelemetry()
    with pytest.raises(SourceFailure) as failure:
        await pachca_source(token="wrong-token-123", telemetry=telemetry).collect()
    assert failure.value.reason == "auth"
    assert "invalid_token" in failure.value.detail
    assert sim.count() == 1  # never retried
    counts = telemetry.counts()
    assert counts.requests == {("GET /tasks", "auth"): 1}
    assert counts.errors == {"invalid_token": 1}
    assert named(logs, "pachca_auth_failed")[0]["code"] == "invalid_token"
    assert "wrong-token-123" not in repr(logs) + str(failure.value)


async def test_token_lacking_tasks_read_is_insufficient_scope(sim: PachcaSimulator,
                                                              pachca_source: MakePachcaSource) -> None:
    sim.tokens = {DEMO_TOKEN: frozenset({"users:read"})}
    with pytest.raises(SourceFailure) as failure:
        await pachca_source().collect()
    assert failure.value.reason == "auth"
    assert failure.value.detail.startswith("insufficient_scope")


async def test_bad_request_is_an_api_error_without_retries(sim: PachcaSimulator,
                                                           pachca_source: MakePachcaSource) -> None:
    telemetry = ApiTelemetry()
    with pytest.raises(SourceFailure) as failure:
        await pachca_source(page_size=60, telemetry=telemetry).collect()  # the fake allows 1-50
    assert failure.value.reason == "api_error"
    assert failure.value.detail.startswith("invalid")
    assert sim.count() == 1
    assert telemetry.counts().requests == {("GET /tasks", "api_error"): 1}


async def test_redirect_is_not_followed_and_fails_naming_the_new_host(answered: Answered,
                                                                     answer_server: AnswerServers) -> None:
    elsewhere = await answer_server(lambda _: page([]))
    sent: list[Received] = []

    def moved(request: Received) -> web.Response:
        sent.append(request)
        location = elsewhere.url.replace("127.0.0.1", "localhost") + PREFIX + "/tasks"  # loopback, by another name
        return web.Response(status=301, headers={"Location": location})

    with pytest.raises(SourceFailure) as failure:
        await (await answered(moved)).collect()
    assert failure.value.reason == "api_error"
    assert "to localhost" in failure.value.detail
    assert (len(sent), elsewhere.requests) == (1, [])  # the token never went to the other host


async def test_bearer_token_is_sent(answered: Answered) -> None:
    seen: list[str] = []

    def answer(request: Received) -> web.Response:
        seen.append(request.headers["Authorization"])
        return page([], next_page="x")

    await (await answered(answer, token="tok-1", performer_names=False)).collect()
    assert seen == ["Bearer tok-1"]


# --- performer names --------------------------------------------------------------------------------


async def test_names_are_read_once_and_reused(sim: PachcaSimulator, pachca_source: MakePachcaSource) -> None:
    source = pachca_source()
    first = (await source.collect()).data
    second = (await source.collect()).data
    assert names(first) == names(second) != {}
    assert sim.count("/users") == 1
    assert names(first)[17] == "user17"  # an invitee without a name falls back to the nickname


async def test_names_are_reread_when_a_new_performer_appears(sim: PachcaSimulator,
                                                             pachca_source: MakePachcaSource) -> None:
    source = pachca_source()
    await source.collect()
    sim.users.append({"id": 99, "first_name": "New", "last_name": "Hire", "nickname": "new"})
    sim.reminders.append(reminder(9999, performers=[99]))
    tally = (await source.collect()).data
    assert names(tally)[99] == "New Hire"
    assert sim.count("/users") == 2


async def test_missing_users_scope_turns_names_off_and_keeps_counts(sim: PachcaSimulator,
                                                                    pachca_source: MakePachcaSource,
                                                                    logs: Events) -> None:
    sim.tokens = {DEMO_TOKEN: frozenset({"tasks:read"})}
    source = pachca_source()
    first = (await source.collect()).data
    second = (await source.collect()).data
    expected = expected_tally(sim.reminders, [], NOW, DAY, pages=4, read_users=False)
    assert first == second == expected
    assert sim.count("/users") == 1
    assert not source.names_enabled
    assert len(named(logs, "pachca_user_names_off")) == 1


async def test_names_true_keeps_trying_and_keeps_the_last_good_names(sim: PachcaSimulator,
                                                                     pachca_source: MakePachcaSource,
                                                                     logs: Events) -> None:
    clock = Clock()
    source = pachca_source(performer_names=True, clock=clock)
    good = (await source.collect()).data.users
    sim.tokens = {DEMO_TOKEN: frozenset({"tasks:read"})}
    clock.now += 3 * 3600  # names are due for a refresh
    later = (await source.collect()).data
    assert later.users == good
    assert source.names_enabled
    assert sim.count("/users") == 2
    assert named(logs, "pachca_user_names_failed")


async def test_users_server_error_never_fails_the_counts(answered: Answered) -> None:
    answers: dict[str, Callable[[], web.Response]] = {
        "/tasks": lambda: page([reminder(1, performers=[11])], has_next=False),
        "/users": lambda: web.Response(status=503, text="<html>busy</html>"),
    }
    source = await answered(lambda request: answers[request.path.removeprefix(PREFIX)]())
    cycle = await source.collect()
    tally = cycle.data
    assert tally.total == 1
    assert tally.users == ()
    assert tally.users_read_at is None
    assert cycle.calls == 1 + FAST_RETRY.attempts


async def test_names_false_never_asks(sim: PachcaSimulator, pachca_source: MakePachcaSource) -> None:
    tally = (await pachca_source(performer_names=False).collect()).data
    assert tally.users == ()
    assert sim.count("/users") == 0


# --- scheduler-facing surface -----------------------------------------------------------------------


async def test_source_surface_for_the_scheduler(pachca_source: MakePachcaSource) -> None:
    source = pachca_source(interval=30.0, cycle_timeout=120.0)
    assert (source.source, source.target) == ("pachca", "team")
    assert (source.interval, source.cycle_timeout) == (30.0, 120.0)
    assert source.cycle_bound(100) == 2.0
    assert (await source.collect()).calls == 5  # four pages of tasks, one of users

