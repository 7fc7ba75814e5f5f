"""A fake Bitrix24 portal behind an incoming webhook, faithful to docs/api-notes.md#bitrix24.

It serves `user.get` (50 per page, total/next), `tasks.task.counters.get` (dynamic keys, `[]` for users
the webhook may not see) and `batch` (<= 50 commands, result_error, PHP's list-for-empty-dict quirk),
behind the portal's leaky bucket (503 QUERY_LIMIT_EXCEEDED), with latency and counters that drift.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

MODERN_KEYS = {"expired": 6291456, "new_comments": 12582912}
# Legacy (tasks module before ~20.800): a different key set per role (docs/api-notes.md#b24-counters-keys).
LEGACY_KEYS = {
    "view_all": ["wo_deadline", "expired", "expired_soon", "not_viewed", "wait_ctrl"],
    "view_role_responsible": ["wo_deadline", "expired", "expired_soon", "not_viewed"],
    "view_role_accomplice": ["expired", "expired_soon", "not_viewed"],
    "view_role_originator": ["wo_deadline", "expired", "wait_ctrl"],
    "view_role_auditor": ["expired"],
}
CODES = {**MODERN_KEYS, "wo_deadline": 10485760, "expired_soon": 9437184, "not_viewed": 1048576,
         "wait_ctrl": 8388608}
TYPES = tuple(LEGACY_KEYS)
FIRST = ["Anna", "Boris", "Vera", "Gleb", "Daria", "Egor", "Zoya", "Ivan", "Kira", "Lev", "Maria", "Nikita",
         "Olga", "Pavel", "Rita", "Sergey", "Tanya", "Uliana", "Fedor", "Yana"]
LAST = ["Ivanova", "Petrov", "Smirnova", "Kuznetsov", "Popova", "Sokolov", "Lebedeva", "Kozlov", "Novikova",
        "Morozov", "Volkova", "Orlov"]
FAULTS = ("http_500", "http_502", "http_503", "html", "truncated_json", "wrong_types", "unauthorized",
          "insufficient_scope", "query_limit_storm", "operation_time_limit", "reset", "timeout")


@dataclass
class SimUser:
    user_id: int
    name: str
    last_name: str
    active: bool = True
    email: str = ""


@dataclass
class PortalSimulator:
    """Mutable state of the fake portal; tests change it at run time."""

    user_id: int = 1
    secret: str = "simsecret"
    users: list[SimUser] = field(default_factory=list)
    groups: list[int] = field(default_factory=lambda: [0])
    hidden: set[int] = field(default_factory=set)  # counters answer [] for these (no access)
    legacy: bool = False  # old key set per role
    string_numbers: bool = False  # counters arrive as "3" instead of 3
    drift: bool = False  # counters change slowly over time
    seed: int = 7
    latency: float = 0.0  # seconds added to every answer
    rate: float = 2.0  # leaky bucket drain per second
    burst: int = 50  # leaky bucket capacity
    rate_limited: bool = True
    status_for_rate_limit: int = 503  # docs before 2024-12 said 429
    operating_per_command: float = 0.0  # seconds of `time.operating` each counters command costs
    operating_limit: float = 480.0
    fault: str | None = None  # one of FAULTS, switched on and off by tests
    fault_retry_after: float = 30.0
    user_get_in_batch: bool = True  # False: a portal or proxy that refuses user.get inside batch
    command_errors: dict[int, str] = field(default_factory=dict)  # user_id -> error code for its commands
    overrides: dict[tuple[int, int, str], dict[str, Any]] = field(default_factory=dict)
    # what happened, for tests and benchmarks
    calls: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    commands: int = 0
    max_batch: int = 0
    received: int = 0  # requests that arrived (counted before the latency, unlike `calls`)
    in_flight: int = 0
    max_in_flight: int = 0
    _level: float = 0.0
    _updated: float = field(default_factory=time.monotonic)
    _operating: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @property
    def webhook_path(self) -> str:
        return f"/rest/{self.user_id}/{self.secret}/"

    def counters(self, user_id: int, group_id: int, kind: str) -> dict[str, int]:
        """The true counter values of a user, as the portal would compute them now."""
        override = self.overrides.get((user_id, group_id, kind))
        if override is not None:
            return dict(override)
        keys = LEGACY_KEYS[kind] if self.legacy else list(MODERN_KEYS)
        values: dict[str, int] = {}
        for key in keys:
            rnd = random.Random(f"{self.seed}:{user_id}:{group_id}:{kind}:{key}")
            base = rnd.choice([0, 0, 0, 1, 1, 2, 3, 5, 8, 13, 21])
            if group_id:
                base //= 2
            if self.drift:
                phase, period = rnd.uniform(0, 6.3), rnd.uniform(60, 600)
                base = max(0, round(base + 3 * math.sin((time.time() - self.started) / period * 6.28 + phase)))
            values[key] = base
        return values

    def take_token(self) -> bool:
        """The portal's leaky bucket: each request adds 1, draining at `rate`; over `burst` is rejected."""
        if not self.rate_limited:
            return True
        now = time.monotonic()
        self._level = max(0.0, self._level - (now - self._updated) * self.rate)
        self._updated = now
        if self._level + 1 > self.burst:
            self.rejected += 1
            return False
        self._level += 1
        return True

    def charge(self, method: str, seconds: float) -> tuple[float, int]:
        """Account operating time to a method in a 10-minute window; returns (operating, reset_at)."""
        now = time.time()
        window = [(t, s) for t, s in self._operating.get(method, []) if t > now - 600]
        if seconds:
            window.append((now, seconds))
        self._operating[method] = window
        reset_at = int((window[0][0] if window else now) + 600)
        return sum(s for _, s in window), reset_at


def generate_portal(users: int = 40, *, seed: int = 7, inactive: int = 3, hidden: int = 2,
                    groups: int = 2, **kwargs: Any) -> PortalSimulator:
    """A realistic portal: named employees, a few dismissed and a few the webhook cannot see."""
    rnd = random.Random(seed)
    people = []
    for i in range(users + inactive):
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        people.append(SimUser(user_id=i + 1, name=first, last_name=last, active=i < users,
                              email=f"{first.lower()}.{last.lower()}{i}@example.com"))
    sim = PortalSimulator(users=people, groups=list(range(groups + 1)), seed=seed, **kwargs)
    sim.hidden = {u.user_id for u in people[users - hidden:users]} if hidden else set()
    return sim


# --- request handling ---------------------------------------------------------------------------


def php_query(query: str) -> dict[str, Any]:
    """Parse a PHP-style query string (`FILTER[ACTIVE]=true&cmd[0]=...`) into nested dicts."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return out


def _time_block(started: float, operating: float | None = None, reset_at: int | None = None) -> dict[str, Any]:
    finish = time.time()
    block: dict[str, Any] = {"start": started, "finish": finish, "duration": finish - started,
                             "processing": finish - started,
                             "date_start": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(started)),
                             "date_finish": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(finish))}
    if operating is not None:
        block["operating"] = round(operating, 4)
        block["operating_reset_at"] = reset_at
    return block


class MethodError(Exception):
    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(code)
        self.status, self.code, self.description = status, code, description


def _truthy(value: Any) -> bool:
    return value in (True, 1, "1", "true", "Y", "y", "True")


def _int(value: Any, name: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise MethodError(400, "0", f"Argument '{name}' must be integer (internal error)") from None


class _Portal:
    def __init__(self, sim: PortalSimulator) -> None:
        self.sim = sim

    def run(self, method: str, params: dict[str, Any], in_batch: bool) -> tuple[Any, dict[str, Any]]:
        """Execute one method; returns (result, extra top-level fields like total/next)."""
        sim = self.sim
        if method == "user.get":
            if in_batch and not sim.user_get_in_batch:
                raise MethodError(403, "ACCESS_DENIED", "Method is not allowed in batch")
            return self.user_get(params)
        if method == "tasks.task.counters.get":
            operating, _ = sim.charge(method, 0.0)
            if sim.operating_per_command and operating > sim.operating_limit:
                raise MethodError(429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.")
            sim.charge(method, sim.operating_per_command)
            return self.counters(params), {"total": 1}
        if method == "batch" and in_batch:
            raise MethodError(405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Batch call is not allowed in batch")
        raise MethodError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")

    def user_get(self, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        filt = params.get("FILTER") or params.get("filter") or {}
        filt = filt if isinstance(filt, dict) else {}
        users = self.sim.users
        active = filt.get("ACTIVE", params.get("ACTIVE"))
        if active is not None:
            users = [u for u in users if u.active == _truthy(active)]
        wanted = filt.get("ID", params.get("ID"))
        if wanted is not None:
            ids = {_int(v, "ID") for v in (wanted.values() if isinstance(wanted, dict) else
                                           wanted if isinstance(wanted, list) else [wanted])}
            users = [u for u in users if u.user_id in ids]
        start = _int(params.get("start", 0) or 0, "start")
        page = users[start:start + 50]
        extra: dict[str, Any] = {"total": len(users)}
        if start + 50 < len(users):
            extra["next"] = start + 50
        result = [{"ID": str(u.user_id), "ACTIVE": u.active, "NAME": u.name, "LAST_NAME": u.last_name,
                   "EMAIL": u.email, "USER_TYPE": "employee"} for u in page]
        return result, extra

    def counters(self, params: dict[str, Any]) -> Any:
        sim = self.sim
        user_id = _int(params.get("userId", sim.user_id), "userId")
        group_id = _int(params.get("groupId", 0) or 0, "groupId")
        kind = str(params.get("type", "view_all"))
        if user_id in sim.command_errors:
            code = sim.command_errors[user_id]
            raise MethodError(400, code, "Simulated command error")
        if group_id and group_id not in sim.groups:
            raise MethodError(400, "0", "Group not found or access denied. (internal error)")
        known = {u.user_id for u in sim.users if u.active}
        if user_id not in known or user_id in sim.hidden or kind not in TYPES:
            return []
        return {key: {"counter": str(v) if sim.string_numbers else v, "code": CODES[key]}
                for key, v in sim.counters(user_id, group_id, kind).items()}

    def batch(self, params: dict[str, Any]) -> dict[str, Any]:
        cmd = params.get("cmd")
        if isinstance(cmd, list):
            cmd = {str(i): c for i, c in enumerate(cmd)}
        if not isinstance(cmd, dict):
            raise MethodError(400, "ERROR_ARGUMENT", "cmd is required")
        if len(cmd) > 50:
            raise MethodError(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
        self.sim.max_batch = max(self.sim.max_batch, len(cmd))
        halt = _truthy(params.get("halt", 0))
        sections: dict[str, dict[str, Any]] = {n: {} for n in
                                               ("result", "result_error", "result_total", "result_next",
                                                "result_time")}
        for key, text in cmd.items():
            started = time.time()
            method, _, query = str(text).partition("?")
            self.sim.commands += 1
            try:
                result, extra = self.run(method, php_query(query), in_batch=True)
            except MethodError as exc:
                sections["result_error"][key] = {"error": exc.code, "error_description": exc.description}
                if halt:
                    break
                continue
            sections["result"][key] = result
            if "total" in extra:
                sections["result_total"][key] = extra["total"]
            if "next" in extra:
                sections["result_next"][key] = extra["next"]
            operating, reset_at = self.sim.charge(method, 0.0)
            sections["result_time"][key] = _time_block(started, operating, reset_at)
        # PHP serialises an empty associative array as [] (docs/api-notes.md#b24-batch-empty-list)
        return {name: (section or []) for name, section in sections.items()}


def create_app(sim: PortalSimulator) -> web.Application:
    portal = _Portal(sim)
    app = web.Application(client_max_size=4 * 1024 * 1024)

    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.time()
        sim.received += 1
        sim.in_flight += 1
        sim.max_in_flight = max(sim.max_in_flight, sim.in_flight)
        try:
            if sim.latency:
                await asyncio.sleep(sim.latency)
            return await _answer(request, started)
        finally:
            sim.in_flight -= 1

    async def _answer(request: web.Request, started: float) -> web.StreamResponse:
        uid, secret = request.match_info["uid"], request.match_info["secret"]
        method = request.match_info["method"].removesuffix(".json")
        sim.calls[method] += 1
        fault = await _fault(request, sim)
        if fault is not None:
            return fault
        if uid != str(sim.user_id) or secret != sim.secret:
            return _error(401, "INVALID_CREDENTIALS", "Invalid request credentials")
        if not sim.take_token():
            return _error(sim.status_for_rate_limit, "QUERY_LIMIT_EXCEEDED", "Too many requests")
        params = dict(php_query(request.query_string))
        if request.method == "POST" and request.can_read_body:
            raw = await request.read()
            if request.content_type == "application/json":
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    return _error(400, "ERROR_ARGUMENT", "Invalid JSON")
                if not isinstance(body, dict):
                    return _error(400, "ERROR_ARGUMENT", "Body must be an object")
                params.update(body)
            else:
                params.update(php_query(raw.decode("utf-8", "replace")))
        try:
            if method == "batch":
                result: Any = portal.batch(params)
                extra: dict[str, Any] = {}
            else:
                result, extra = portal.run(method, params, in_batch=False)
        except MethodError as exc:
            return _error(exc.status, exc.code, exc.description)
        if sim.fault == "wrong_types":
            result = {"result": "surprise"} if method == "batch" else {"unexpected": True}
        operating, reset_at = sim.charge(method, 0.0)
        return web.json_response({"result": result, **extra, "time": _time_block(started, operating, reset_at)})

    app.router.add_route("*", "/rest/{uid}/{secret}/{method}", handle)
    return app


async def _fault(request: web.Request, sim: PortalSimulator) -> web.StreamResponse | None:
    fault = sim.fault
    if fault is None or fault == "wrong_types":
        return None
    if fault in ("http_500", "http_502", "http_503"):
        status = int(fault[-3:])
        if status == 500:
            return _error(500, "INTERNAL_SERVER_ERROR", "Internal server error")
        return web.Response(status=status, text=f"<html><body><h1>{status} Bad Gateway</h1></body></html>",
                            content_type="text/html")
    if fault == "html":
        return web.Response(text="<html><body>Maintenance</body></html>", content_type="text/html")
    if fault == "truncated_json":
        return web.Response(text='{"result": {"result": {"c0": {"expired": {"coun', content_type="application/json")
    if fault == "unauthorized":
        return _error(401, "NO_AUTH_FOUND", "Wrong authorization data")
    if fault == "insufficient_scope":
        return _error(403, "insufficient_scope", "The request requires higher privileges than provided by "
                                                 "the webhook token")
    if fault == "query_limit_storm":
        return _error(sim.status_for_rate_limit, "QUERY_LIMIT_EXCEEDED", "Too many requests")
    if fault == "operation_time_limit":
        body = {"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked due to operation "
                "time limit.", "time": _time_block(time.time(), 500.0, int(time.time() + sim.fault_retry_after))}
        return web.json_response(body, status=429)
    if fault == "reset":
        transport = request.transport
        if transport is not None:
            transport.abort()
        return web.Response(status=500)
    if fault == "timeout":
        await asyncio.sleep(3600)
    return None


def _error(status: int, code: str, description: str) -> web.Response:
    return web.json_response({"error": code, "error_description": description}, status=status)
