"""A fake Pachca API (GET /tasks, /users, /group_tags...) that behaves like the real one, quirks included.

Mirrors the API notes (docs/api-notes.md): cursors are never null (since 2026-05-06 the last page still
carries a `next_page`, with `has_next: false`), `limit` is 1-50, 401/403 answer the OAuthError shape
(a missing scope: 403 `insufficient_scope`, "Insufficient scope. Required: <scope>"), 400/404/429 the
ApiError shape, and 429 carries Retry-After. GET /users with `query` answers the search meta (`total` and
`paginate.next_page` only). Employee tags: GET /group_tags (`names[]` filter), /group_tags/{id} and
/group_tags/{id}/users, all under `group_tags:read`. Tests and the fault-injection suite change the
`PachcaSimulator` state while the app runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from exporter.simulator.pachca_paging import decode_cursor, encode_cursor, page, search_page
from exporter.simulator.pachca_workspace import (
    FIRST_TAG_ID,
    KINDS,
    TAG_NAMES,
    Colleague,
    Workspace,
    demo_colleagues,
    generate,
)

__all__ = ["DEMO_TOKEN", "FAULTS", "FIRST_TAG_ID", "FULL_SCOPES", "KINDS", "PREFIX", "TAG_NAMES", "Colleague",
           "PachcaSimulator", "SimRequest", "Workspace", "create_app", "decode_cursor", "demo_colleagues",
           "encode_cursor", "generate", "generate_workspace"]

PREFIX = "/api/shared/v1"
DEMO_TOKEN = "pachca-demo-token"
FULL_SCOPES = frozenset({"tasks:read", "users:read", "group_tags:read"})
MAX_LIMIT = 50
FAULTS = frozenset({
    "http_500", "http_502", "http_503", "html", "truncated_json", "wrong_types", "unauthorized",
    "insufficient_scope", "rate_limit_storm", "reset", "timeout",
})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Listing:
    """A paged answer: `records` walked by cursor; `search` gives the search meta (total, next_page)."""

    records: list[Any]
    search: bool = False


@dataclass(frozen=True, slots=True)
class Single:
    """A `{data: record}` answer."""

    record: Any


Resource = Callable[[web.Request], "Listing | Single | web.Response"]


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request the fake received, for tests to assert on."""

    path: str  # e.g. "/tasks", "/users", "/group_tags/9111/users" (without the /api/shared/v1 prefix)
    query: dict[str, str]
    token: str | None
    status: int  # 0 when the fake answered nothing (reset, timeout)
    at: float  # time.monotonic() when it arrived


class PachcaSimulator:
    """The mutable state behind the fake: data, accepted tokens, quirks, faults and a request log.

    Quirks (all off by default, which is how the real API behaves):
      omit_has_next  meta.paginate carries no has_next/has_prev (clients must follow the cursor)
      short_pages    some pages mid-stream hold a third of `limit` although more data follows
      repeat_cursor  the last page says has_next: true and hands back the cursor that fetched it
      endless        past the end the pages wrap around with fresh cursors forever
    """

    def __init__(self, reminders: list[Any] | None = None,
                 users: list[Any] | None = None, *,
                 tokens: dict[str, frozenset[str]] | None = None,
                 tags: list[dict[str, Any]] | None = None) -> None:
        self.reminders: list[Any] = reminders if reminders is not None else []
        self.users: list[Any] = users if users is not None else []
        self.tags: list[dict[str, Any]] = tags if tags is not None else []  # {"id", "name"}; users_count derived
        self.tokens: dict[str, frozenset[str]] = dict(tokens) if tokens else {DEMO_TOKEN: FULL_SCOPES}
        self.latency = 0.0  # seconds added to every answer
        self.rate_limit: float | None = None  # requests per second per token before 429; None = no limit
        self.retry_after: float | None = None  # Retry-After of every 429; None = 1 s (limit) / 3600 s (storm)
        self.hang_seconds = 60.0  # how long the "timeout" fault holds a request
        self.omit_has_next = False
        self.short_pages = False
        self.repeat_cursor = False
        self.endless = False
        self.requests: list[SimRequest] = []
        self._fault: str | None = None
        self._held: set[asyncio.Event] = set()  # requests the "timeout" fault holds until it is switched
        self.fault_times: int | None = None  # requests the fault still applies to; None = until changed
        self._windows: dict[str, deque[float]] = {}

    @property
    def token(self) -> str:
        """The first accepted token (the demo token unless `tokens` was given)."""
        return next(iter(self.tokens))

    @property
    def fault(self) -> str | None:
        return self._fault

    @fault.setter
    def fault(self, mode: str | None) -> None:
        if mode is not None and mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r} (expected one of: {', '.join(sorted(FAULTS))})")
        self._fault = mode
        self.fault_times = None
        for held in self._held:  # switching the fault releases what the "timeout" fault holds
            held.set()

    async def hold(self) -> None:
        """The "timeout" fault: answer nothing until the fault is switched or `hang_seconds` pass."""
        released = asyncio.Event()
        self._held.add(released)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.hang_seconds):
                    await released.wait()
        finally:
            self._held.discard(released)

    def inject(self, mode: str | None, times: int | None = None) -> None:
        """Switch a fault on for the next `times` requests (None: until switched off)."""
        self.fault = mode
        self.fault_times = times

    def count(self, path: str | None = None) -> int:
        """Requests received so far, optionally only those to `path` ("/tasks", "/group_tags", ...)."""
        return sum(1 for r in self.requests if path is None or r.path == path)

    def tag_users(self, name: str) -> list[Any]:
        """The users carrying the tag `name` in their list_tags, in /users order."""
        return [u for u in self.users if isinstance(u, dict) and name in (u.get("list_tags") or [])]

    def tag_record(self, tag: dict[str, Any]) -> dict[str, Any]:
        """A GroupTag as the API writes it: {id, name, users_count}."""
        return {"id": tag["id"], "name": tag["name"], "users_count": len(self.tag_users(tag["name"]))}

    def _take_fault(self) -> str | None:
        mode = self._fault
        if mode is not None and self.fault_times is not None:
            self.fault_times -= 1
            if self.fault_times <= 0:
                self._fault, self.fault_times = None, None
        return mode

    def _over_limit(self, token: str) -> bool:
        if self.rate_limit is None:
            return False
        now = time.monotonic()
        window = self._windows.setdefault(token, deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= self.rate_limit:
            return True
        window.append(now)
        return False


def create_app(sim: PachcaSimulator) -> web.Application:
    """The aiohttp app serving /api/shared/v1/{tasks,users,group_tags...} from `sim`."""
    app = web.Application()
    routes: list[tuple[str, str, Resource]] = [
        ("/tasks", "tasks:read", lambda _: Listing(sim.reminders)),
        ("/users", "users:read", lambda request: _users(sim, request)),
        ("/group_tags", "group_tags:read", lambda request: _tags(sim, request)),
        ("/group_tags/{tag_id}", "group_tags:read", lambda request: _tag(sim, request, users=False)),
        ("/group_tags/{tag_id}/users", "group_tags:read", lambda request: _tag(sim, request, users=True)),
    ]
    for path, scope, resource in routes:
        app.router.add_get(f"{PREFIX}{path}", _endpoint(sim, scope, resource))
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


def _users(sim: PachcaSimulator, request: web.Request) -> Listing:
    """GET /users; `query` searches names, e-mail, phone and nickname and switches to the search meta."""
    query = request.query.get("query")
    if query is None:
        return Listing(sim.users)
    needle = query.strip().lower()
    fields = ("first_name", "last_name", "email", "phone_number", "nickname")
    found = [u for u in sim.users if isinstance(u, dict)
             and any(needle in str(u.get(f) or "").lower() for f in fields)]
    return Listing(found, search=True)


def _tags(sim: PachcaSimulator, request: web.Request) -> Listing:
    """GET /group_tags, optionally narrowed by `names[]` (exact tag names)."""
    names = set(request.query.getall("names[]", [])) | set(request.query.getall("names", []))
    tags = [t for t in sim.tags if not names or t["name"] in names]
    return Listing([sim.tag_record(t) for t in tags])


def _tag(sim: PachcaSimulator, request: web.Request, *, users: bool) -> Single | Listing | web.Response:
    raw = request.match_info["tag_id"]
    tag = next((t for t in sim.tags if str(t["id"]) == raw), None)
    if tag is None:
        return _api_error(404, "not_found", "Tag not found", key="id", value=raw)
    return Listing(sim.tag_users(tag["name"])) if users else Single(sim.tag_record(tag))


def _endpoint(sim: PachcaSimulator, scope: str, resource: Resource) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        token = _bearer(request)
        arrived = time.monotonic()
        status = 0
        try:
            if sim.latency > 0:
                await asyncio.sleep(sim.latency)
            response = await _answer(sim, request, scope, token, resource)
            transport = request.transport
            status = 0 if transport is None or transport.is_closing() else response.status
            return response
        finally:
            path = request.path.removeprefix(PREFIX)
            sim.requests.append(SimRequest(path, dict(request.query), token, status, arrived))
    return handle


async def _answer(sim: PachcaSimulator, request: web.Request, scope: str, token: str | None,
                  resource: Resource) -> web.StreamResponse:
    fault = sim._take_fault()
    if fault is not None and fault not in ("wrong_types", "html", "truncated_json"):
        return await _fault_answer(sim, request, fault)
    if token is None or token not in sim.tokens:
        return _oauth_error(401, "invalid_token", "Access token is missing" if token is None
                            else "Access token is invalid")
    if scope not in sim.tokens[token]:
        return _oauth_error(403, "insufficient_scope", f"Insufficient scope. Required: {scope}")
    if sim._over_limit(token):
        return _rate_limited(sim.retry_after if sim.retry_after is not None else 1.0)
    outcome = resource(request)
    if isinstance(outcome, web.Response):
        return outcome
    if isinstance(outcome, Single):
        body: dict[str, Any] = {"data": outcome.record}
    else:
        limit, cursor, problem = _paging_params(request)
        if problem is not None:
            return problem
        body = search_page(outcome.records, limit, cursor) if outcome.search else \
            page(outcome.records, limit, cursor, sim)
        if fault == "wrong_types":
            body["data"] = [_corrupt(record, i) for i, record in enumerate(body["data"])]
    text = json.dumps(body, ensure_ascii=False)
    if fault == "html":
        return web.Response(status=200, text=_HTML, content_type="text/html")
    if fault == "truncated_json":
        return web.Response(status=200, text=text[: max(1, len(text) // 2)], content_type="application/json")
    return web.Response(status=200, text=text, content_type="application/json")


async def _fault_answer(sim: PachcaSimulator, request: web.Request, fault: str) -> web.StreamResponse:
    if fault == "http_500":  # 5xx body undocumented; the SDK assumes JSON (docs/api-notes.md#pachca-error-shapes)
        return _api_error(500, "unhandled", "Internal server error", key="server")
    if fault in ("http_502", "http_503"):  # what a proxy in front of the API answers
        return web.Response(status=int(fault[5:]), text=_HTML, content_type="text/html")
    if fault == "unauthorized":
        return _oauth_error(401, "invalid_token", "Access token is invalid")
    if fault == "insufficient_scope":
        return _oauth_error(403, "insufficient_scope", "Token lacks the required scope")
    if fault == "rate_limit_storm":
        return _rate_limited(sim.retry_after if sim.retry_after is not None else 3600.0)
    if fault == "reset":
        request.protocol.force_close()
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)  # never reaches the client
    await sim.hold()  # "timeout": until the client gives up, or the fault is switched
    return _api_error(504, "timeout", "Gateway timeout", key="server")


def _paging_params(request: web.Request) -> tuple[int, int, web.Response | None]:
    raw_limit = request.query.get("limit", str(MAX_LIMIT))
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        return 0, 0, _api_error(400, "invalid", f"limit must be between 1 and {MAX_LIMIT}",
                                key="limit", value=raw_limit)
    raw_cursor = request.query.get("cursor")
    if raw_cursor is None:
        return limit, 0, None
    offset = decode_cursor(raw_cursor)
    if offset is None:
        return 0, 0, _api_error(400, "invalid", "cursor is invalid", key="cursor", value=raw_cursor)
    return limit, offset, None


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _oauth_error(status: int, code: str, description: str) -> web.Response:
    return web.json_response({"error": code, "error_description": description}, status=status)


def _api_error(status: int, code: str, message: str, *, key: str, value: str | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
    item = {"key": key, "value": value, "message": message, "code": code, "payload": None}
    return web.json_response({"errors": [item]}, status=status, headers=headers)


def _rate_limited(retry_after: float) -> web.Response:
    return _api_error(429, "rate_limit", "Too many requests", key="token",
                      headers={"Retry-After": f"{retry_after:g}"})


async def _not_found(request: web.Request) -> web.Response:
    return _api_error(404, "not_found", f"No route for {request.method} {request.path}", key="path")


_HTML = "<html><head><title>Service unavailable</title></head><body><h1>Please try later</h1></body></html>\n"

_CORRUPTIONS: tuple[Callable[[dict[str, Any]], Any], ...] = (
    lambda r: {**r, "due_at": 1717171717},
    lambda r: {**r, "due_at": "next tuesday"},
    lambda r: {**r, "priority": "high"},
    lambda r: {**r, "priority": None},
    lambda r: {**r, "status": 7},
    lambda r: {**r, "kind": ["call"]},
    lambda r: {**r, "performer_ids": "12"},
    lambda r: {**r, "performer_ids": ["a", None, True, 3]},
    lambda r: {**r, "id": "abc"},
    lambda _: "not a reminder",
)


def _corrupt(record: Any, i: int) -> Any:
    """The "wrong_types" fault: each record gets one field of the wrong type (or is not an object)."""
    if not isinstance(record, dict):
        return record
    return _CORRUPTIONS[i % len(_CORRUPTIONS)](record)


# --- a realistic workspace ----------------------------------------------------------------------


def generate_workspace(n: int = 500, *, seed: int = 0, now: float | None = None, users: int = 12,
                       tokens: dict[str, frozenset[str]] | None = None,
                       colleagues: Sequence[Colleague] | None = None) -> PachcaSimulator:
    """A simulator serving a realistic workspace (see `generate`), accepting DEMO_TOKEN by default."""
    ws = generate(n, seed=seed, now=now, users=users, colleagues=colleagues)
    return PachcaSimulator(ws.reminders, ws.users, tokens=tokens, tags=ws.tags)
