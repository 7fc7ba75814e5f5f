"""The fake Pachca API answers like the real one (docs/api-notes.md), quirks and faults included."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from exporter.simulator import serve
from exporter.simulator.pachca import (
    DEMO_TOKEN,
    FAULTS,
    KINDS,
    PREFIX,
    Colleague,
    PachcaSimulator,
    create_app,
    decode_cursor,
    encode_cursor,
    generate,
    generate_workspace,
)
from tests.conftest import NOW, is_json

AUTH = {"Authorization": f"Bearer {DEMO_TOKEN}"}


@pytest.fixture
def sim() -> PachcaSimulator:
    return generate_workspace(120, seed=3, now=NOW)


@pytest.fixture
async def api(sim: PachcaSimulator) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose base URL is the fake's /api/shared/v1."""
    async with serve(create_app(sim)) as url, httpx.AsyncClient(
        base_url=url + PREFIX, headers=AUTH, timeout=5.0
    ) as client:
        yield client
        sim.fault = None  # release any request the "timeout" fault still holds, so shutdown is quick


async def walk(api: httpx.AsyncClient, path: str = "/tasks", limit: int = 50,
               max_pages: int = 50) -> list[dict[str, Any]]:
    """Raw pages (whole bodies), following next_page until has_next is false or the data is empty."""
    bodies: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    for _ in range(max_pages):
        response = await api.get(path, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        bodies.append(body)
        paginate = body["meta"]["paginate"]
        if not body["data"] or paginate.get("has_next") is False:
            break
        params = {"limit": limit, "cursor": paginate["next_page"]}
    return bodies


# --- pagination -------------------------------------------------------------------------------------


async def test_pages_cover_every_reminder_once_in_order(sim: PachcaSimulator, api: httpx.AsyncClient) -> None:
    bodies = await walk(api)
    ids = [r["id"] for body in bodies for r in body["data"]]
    assert ids == [r["id"] for r in sim.reminders]
    assert [len(b["data"]) for b in bodies] == [50, 50, 20]


async def test_last_page_has_next_false_with_a_non_null_cursor(api: httpx.AsyncClient) -> None:
    last = (await walk(api))[-1]["meta"]["paginate"]
    assert last["has_next"] is False
    assert isinstance(last["next_page"], str)
    assert last["next_page"]
    assert isinstance(last["prev_page"], str)
    assert last["has_prev"] is True


async def test_cursor_past_the_end_gives_an_empty_page_with_a_cursor(api: httpx.AsyncClient) -> None:
    response = await api.get("/tasks", params={"limit": 50, "cursor": encode_cursor(10_000)})
    body = response.json()
    assert body["data"] == []
    assert body["meta"]["paginate"]["next_page"]
    assert body["meta"]["paginate"]["has_next"] is False


async def test_limit_defaults_to_fifty(api: httpx.AsyncClient) -> None:
    assert len((await api.get("/tasks")).json()["data"]) == 50


@pytest.mark.parametrize("limit", ["51", "0", "-1", "ten"])
async def test_limit_outside_one_to_fifty_is_a_400_api_error(api: httpx.AsyncClient, limit: str) -> None:
    response = await api.get("/tasks", params={"limit": limit})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert set(error) == {"key", "value", "message", "code", "payload"}
    assert (error["key"], error["code"], error["value"]) == ("limit", "invalid", limit)


async def test_garbage_cursor_is_a_400(api: httpx.AsyncClient) -> None:
    response = await api.get("/tasks", params={"limit": 5, "cursor": "%%%not-base64"})
    assert response.status_code == 400
    assert response.json()["errors"][0]["key"] == "cursor"


def test_cursor_round_trips_and_looks_opaque() -> None:
    cursor = encode_cursor(150)
    assert decode_cursor(cursor) == 150
    assert "150" not in cursor
    assert "=" not in cursor
    assert decode_cursor("bm9wZQ") is None  # base64 of "nope"


async def test_omit_has_next_leaves_only_cursors(sim: PachcaSimulator, api: httpx.AsyncClient) -> None:
    sim.omit_has_next = True
    bodies = await walk(api)
    assert all(set(b["meta"]["paginate"]) == {"next_page", "prev_page"} for b in bodies)
    assert bodies[-1]["data"] == []  # the client only learns the end from an empty page
    assert sum(len(b["data"]) for b in bodies) == len(sim.reminders)


async def test_short_pages_mid_stream_still_deliver_everything(sim: PachcaSimulator,
                                                              api: httpx.AsyncClient) -> None:
    sim.short_pages = True
    bodies = await walk(api)
    sizes = [len(b["data"]) for b in bodies]
    assert any(size < 50 for size in sizes[:-1])
    assert all(b["meta"]["paginate"]["has_next"] for b in bodies[:-1])
    assert [r["id"] for b in bodies for r in b["data"]] == [r["id"] for r in sim.reminders]


async def test_repeat_cursor_hands_back_the_cursor_of_the_last_page(sim: PachcaSimulator,
                                                                   api: httpx.AsyncClient) -> None:
    sim.repeat_cursor = True
    cursor = encode_cursor(100)
    page = (await api.get("/tasks", params={"limit": 50, "cursor": cursor})).json()
    assert len(page["data"]) == 20
    assert page["meta"]["paginate"] == {**page["meta"]["paginate"], "has_next": True, "next_page": cursor}


async def test_endless_wraps_around_with_fresh_cursors(sim: PachcaSimulator, api: httpx.AsyncClient) -> None:
    sim.endless = True
    bodies = await walk(api, max_pages=6)
    assert len(bodies) == 6
    assert all(len(b["data"]) == 50 for b in bodies)
    cursors = [b["meta"]["paginate"]["next_page"] for b in bodies]
    assert len(set(cursors)) == 6
    assert all(b["meta"]["paginate"]["has_next"] for b in bodies)


async def test_users_are_paged_like_tasks(sim: PachcaSimulator, api: httpx.AsyncClient) -> None:
    bodies = await walk(api, "/users", limit=5)
    assert [u["id"] for b in bodies for u in b["data"]] == [u["id"] for u in sim.users]
    assert len(bodies) == math.ceil(len(sim.users) / 5)


# --- auth, errors, rate limit -----------------------------------------------------------------------


async def test_unknown_path_is_a_404_api_error(api: httpx.AsyncClient) -> None:
    response = await api.get("/chats")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "not_found"


@pytest.mark.parametrize(("headers", "description"), [
    ({"Authorization": "Bearer wrong"}, "Access token is invalid"),
    ({"Authorization": ""}, "Access token is missing"),
])
async def test_bad_token_is_a_401_oauth_error(api: httpx.AsyncClient, headers: dict[str, str],
                                              description: str) -> None:
    response = await api.get("/tasks", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token", "error_description": description}


async def test_token_without_users_read_gets_403_insufficient_scope(sim: PachcaSimulator,
                                                                   api: httpx.AsyncClient) -> None:
    sim.tokens = {DEMO_TOKEN: frozenset({"tasks:read"})}
    assert (await api.get("/tasks")).status_code == 200
    response = await api.get("/users")
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"


async def test_rate_limit_answers_429_with_retry_after(sim: PachcaSimulator, api: httpx.AsyncClient) -> None:
    sim.rate_limit = 3
    statuses = [(await api.get("/tasks", params={"limit": 1})).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = await api.get("/tasks", params={"limit": 1})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json()["errors"][0]["code"] == "rate_limit"


async def test_rate_limit_is_per_token(sim: PachcaSimulator, api: httpx.AsyncClient) -> None:
    sim.tokens["other"] = frozenset({"tasks:read"})
    sim.rate_limit = 1
    assert (await api.get("/tasks")).status_code == 200
    assert (await api.get("/tasks", headers={"Authorization": "Bearer other"})).status_code == 200
    assert (await api.get("/tasks")).status_code == 429


async def test_latency_delays_every_answer(sim: PachcaSimulator, api: httpx.AsyncClient) -> None:
    sim.latency = 0.05
    started = time.monotonic()
    await api.get("/tasks", params={"limit": 1})
    assert time.monotonic() - started >= 0.05


async def test_request_log_records_path_query_token_and_status(sim: PachcaSimulator,
                                                              api: httpx.AsyncClient) -> None:
    await api.get("/tasks", params={"limit": 2})
    await api.get("/users", headers={"Authorization": "Bearer nope"})
    assert [(r.path, r.query, r.token, r.status) for r in sim.requests] == [
        ("/tasks", {"limit": "2"}, DEMO_TOKEN, 200), ("/users", {}, "nope", 401)]
    assert sim.count() == 2
    assert sim.count("/users") == 1


# --- faults -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status", "check"), [
    ("http_500", 500, lambda r: r.json()["errors"][0]["code"] == "unhandled"),
    ("http_502", 502, lambda r: r.text.startswith("<html>")),
    ("http_503", 503, lambda r: r.headers["content-type"].startswith("text/html")),
    ("html", 200, lambda r: r.text.startswith("<html>")),
    ("truncated_json", 200, lambda r: r.headers["content-type"].startswith("application/json")
     and not is_json(r.text)),
    ("wrong_types", 200, lambda r: "not a reminder" in r.json()["data"]),
    ("unauthorized", 401, lambda r: r.json()["error"] == "invalid_token"),
    ("insufficient_scope", 403, lambda r: r.json()["error"] == "insufficient_scope"),
    ("rate_limit_storm", 429, lambda r: r.headers["Retry-After"] == "3600"),
])
async def test_fault_modes_answer_as_named(sim: PachcaSimulator, api: httpx.AsyncClient, fault: str,
                                           status: int, check: Any) -> None:
    sim.fault = fault
    response = await api.get("/tasks")
    assert response.status_code == status
    assert check(response)


async def test_storm_uses_the_configured_retry_after(sim: PachcaSimulator, api: httpx.AsyncClient) -> None:
    sim.fault, sim.retry_after = "rate_limit_storm", 7
    assert (await api.get("/users")).headers["Retry-After"] == "7"


async def test_reset_closes_the_connection_without_an_answer(sim: PachcaSimulator,
                                                            api: httpx.AsyncClient) -> None:
    sim.fault = "reset"
    with pytest.raises(httpx.RemoteProtocolError):
        await api.get("/tasks")
    assert sim.requests[-1].status == 0


async def test_timeout_holds_the_request_past_the_client_timeout(sim: PachcaSimulator,
                                                                api: httpx.AsyncClient) -> None:
    sim.fault = "timeout"
    with pytest.raises(httpx.ReadTimeout):
        await api.get("/tasks", timeout=0.1)


async def test_fault_for_a_number_of_requests_then_normal(sim: PachcaSimulator,
                                                         api: httpx.AsyncClient) -> None:
    sim.inject("http_503", times=2)
    statuses = [(await api.get("/tasks")).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert sim.fault is None


def test_unknown_fault_is_rejected() -> None:
    sim = PachcaSimulator()
    with pytest.raises(ValueError, match="unknown fault"):
        sim.fault = "gremlins"
    assert {"timeout", "reset", "rate_limit_storm"} <= FAULTS


# --- generated workspace ----------------------------------------------------------------------------


def _due(record: dict[str, Any]) -> datetime | None:
    raw = record["due_at"]
    return None if raw is None else datetime.strptime(raw, "%Y-%m-%dT%H:%M:%S.%f%z")


def test_generate_workspace_serves_the_demo_token() -> None:
    sim = generate_workspace(5, seed=1, now=NOW)
    assert sim.token == DEMO_TOKEN
    assert len(sim.reminders) == 5
    assert sim.users
    assert generate_workspace(1, tokens={"t": frozenset()}).token == "t"


def test_generate_is_deterministic() -> None:
    assert generate(50, seed=5, now=NOW) == generate(50, seed=5, now=NOW)
    assert generate(50, seed=5, now=NOW) != generate(50, seed=6, now=NOW)


def test_generated_reminders_look_like_the_api() -> None:
    reminders = generate(600, seed=1, now=NOW).reminders
    now = datetime.fromtimestamp(NOW, UTC)
    assert {r["kind"] for r in reminders} == set(KINDS)
    assert {r["priority"] for r in reminders} == {1, 2, 3}
    assert {r["status"] for r in reminders} == {"done", "undone"}
    assert any(r["due_at"] is None for r in reminders)
    assert any(len(r["performer_ids"]) >= 3 for r in reminders)
    dues = [d for d in map(_due, reminders) if d is not None]
    assert any(d < now for d in dues)
    assert any(d > now for d in dues)
    all_day = [_due(r) for r in reminders if r["all_day"]]
    assert all_day
    assert all(d is not None and (d.hour, d.minute, d.second) == (0, 0, 0) for d in all_day)
    assert len({r["id"] for r in reminders}) == len(reminders)
    for r in reminders:
        assert set(r) >= {"id", "kind", "content", "due_at", "priority", "user_id", "chat_id", "status",
                          "created_at", "performer_ids", "all_day", "custom_properties"}
        assert r["created_at"].endswith("Z")
        assert len(r["created_at"]) == 24


def test_generated_users_include_invitees_and_a_bot() -> None:
    users = generate(10, seed=1, now=NOW, users=14).users
    assert len(users) == 14
    assert any(u["first_name"] is None for u in users)
    assert any(u["last_name"] == "" for u in users)
    assert sum(u["bot"] for u in users) == 1
    assert all(u["nickname"] for u in users)


# --- departments, employee tags and people shared with Bitrix24 --------------------------------------


async def test_users_carry_department_and_tag_names(sim: PachcaSimulator, api: httpx.AsyncClient) -> None:
    users = [u for b in await walk(api, "/users") for u in b["data"]]
    departments = [u["department"] for u in users]
    assert None in departments
    assert "" in departments
    assert any(departments)
    assert all(isinstance(u["list_tags"], list) and all(isinstance(t, str) for t in u["list_tags"]) for u in users)
    assert any(u["list_tags"] == [] for u in users)
    assert any(len(u["list_tags"]) >= 2 for u in users)
    tag_names = {t["name"] for t in sim.tags}
    assert {t for u in users for t in u["list_tags"]} <= tag_names


async def test_users_query_answers_the_search_meta(api: httpx.AsyncClient) -> None:
    body = (await api.get("/users", params={"query": "PETROV", "limit": 1})).json()
    assert set(body["meta"]) == {"total", "paginate"}
    assert set(body["meta"]["paginate"]) == {"next_page"}
    assert body["meta"]["total"] >= 2
    assert len(body["data"]) == 1
    second = (await api.get("/users", params={"query": "PETROV", "limit": 1,
                                              "cursor": body["meta"]["paginate"]["next_page"]})).json()
    assert second["data"][0]["id"] != body["data"][0]["id"]
    assert all("petrov" in f"{u['last_name']} {u['email']}".lower() for u in body["data"] + second["data"])
    assert (await api.get("/users", params={"query": "zzz-nobody"})).json()["meta"]["total"] == 0


async def test_group_tags_list_with_user_counts(api: httpx.AsyncClient) -> None:
    bodies = await walk(api, "/group_tags", limit=3)
    tags = [t for b in bodies for t in b["data"]]
    assert [len(b["data"]) for b in bodies] == [3, 3, 1]
    assert bodies[-1]["meta"]["paginate"]["has_next"] is False
    users = [u for b in await walk(api, "/users") for u in b["data"]]
    for tag in tags:
        assert set(tag) == {"id", "name", "users_count"}
        assert isinstance(tag["id"], int)
        assert tag["users_count"] == sum(tag["name"] in u["list_tags"] for u in users)
    assert any(t["users_count"] == 0 for t in tags)
    assert len({t["name"] for t in tags}) == len(tags)


async def test_group_tags_filter_by_names(api: httpx.AsyncClient) -> None:
    response = await api.get("/group_tags", params=[("names[]", "Design"), ("names[]", "Product")])
    assert sorted(t["name"] for t in response.json()["data"]) == ["Design", "Product"]
    assert (await api.get("/group_tags", params={"names[]": "Nope"})).json()["data"] == []


async def test_one_tag_and_its_users(sim: PachcaSimulator, api: httpx.AsyncClient) -> None:
    tag = next(t for t in sim.tags if t["name"] == "Product")
    one = (await api.get(f"/group_tags/{tag['id']}")).json()
    assert set(one) == {"data"}
    assert one["data"]["name"] == "Product"
    bodies = await walk(api, f"/group_tags/{tag['id']}/users", limit=1)
    members = [u for b in bodies for u in b["data"]]
    assert len(members) == one["data"]["users_count"] >= 2
    assert all("Product" in u["list_tags"] and "email" in u and "nickname" in u for u in members)
    assert bodies[-1]["meta"]["paginate"]["has_next"] is False


@pytest.mark.parametrize("path", ["/group_tags/1", "/group_tags/1/users", "/group_tags/abc"])
async def test_unknown_tag_is_a_404_api_error(api: httpx.AsyncClient, path: str) -> None:
    response = await api.get(path)
    assert response.status_code == 404
    (error,) = response.json()["errors"]
    assert (error["code"], error["key"], error["payload"]) == ("not_found", "id", None)


@pytest.mark.parametrize("path", ["/group_tags", "/group_tags/9111", "/group_tags/9111/users"])
async def test_group_tags_need_the_group_tags_read_scope(sim: PachcaSimulator, api: httpx.AsyncClient,
                                                        path: str) -> None:
    sim.tokens = {DEMO_TOKEN: frozenset({"tasks:read", "users:read"})}
    response = await api.get(path)
    assert response.status_code == 403
    assert response.json() == {"error": "insufficient_scope",
                               "error_description": "Insufficient scope. Required: group_tags:read"}
    assert (await api.get("/users")).status_code == 200


async def test_tag_endpoints_share_faults_and_the_request_log(sim: PachcaSimulator,
                                                             api: httpx.AsyncClient) -> None:
    sim.inject("http_503", times=1)
    assert (await api.get("/group_tags/9111/users")).status_code == 503
    assert (await api.get("/group_tags/9111/users", params={"limit": 60})).status_code == 400
    assert sim.count("/group_tags/9111/users") == 2


def _normal(email: str | None) -> str | None:
    return email.strip().lower() if email else None


async def test_default_workspace_shares_e_mails_with_the_demo_portal(api: httpx.AsyncClient) -> None:
    from exporter.simulator.bitrix24 import generate_portal

    portal = {u.email: u for u in generate_portal().users}
    users = [u for b in await walk(api, "/users") for u in b["data"]]
    emails = [u["email"] for u in users]
    normal = [_normal(e) for e in emails]
    assert None in emails  # the bot
    assert any(e and e != e.strip() for e in emails)
    assert any(e and e.strip() != e.strip().lower() for e in emails)
    shared = [e for e in normal if e is not None and normal.count(e) == 2]
    assert len(set(shared)) == 1
    assert shared[0] in portal  # one e-mail two Pachca users share
    unknown = [e for e in normal if e is not None and e not in portal]
    assert len(unknown) == 1
    matched = {e for e in normal if e in portal and normal.count(e) == 1}
    assert len(matched) == 8
    for user in users:
        if _normal(user["email"]) in matched and user["first_name"] is not None:
            assert user["first_name"] == portal[_normal(user["email"]) or ""].name


def test_colleagues_give_names_and_e_mails() -> None:
    people = [Colleague("Ada", "Lovelace", "ada@example.com"), Colleague("Alan", "Turing", "alan@example.com")]
    users = generate(3, seed=1, now=NOW, users=5, colleagues=people).users
    assert [(u["first_name"], u["email"]) for u in users[:2]] == [("Ada", "ada@example.com"),
                                                                  ("Alan", "alan@example.com")]
    assert users[4]["email"] == "user15@example.com"  # past the colleagues: an e-mail of its own
