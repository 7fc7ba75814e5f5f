"""A fake Bitrix24 portal behind an incoming webhook, faithful to the real REST API (docs/api-notes.md): the
HTTP side, answering from the portal's state (exporter/simulator/bitrix24_portal.py; its names are exported
here too, for one import).

It serves `tasks.task.counters.get` (dynamic keys, `[]` for users the webhook may not see, zeros for a
user outside the group, an error for a group the webhook may not read), `user.get`, `department.get`,
`sonet_group.get` and `sonet_group.user.get` (bitrix24_users, bitrix24_org) and `batch` (<= 50 commands
of any of them, result_error per command, PHP's list-for-sequential-keys quirk), each behind the
webhook's scopes, behind the portal's leaky bucket (503 QUERY_LIMIT_EXCEEDED), with latency, faults and
counters that drift.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import Any

from aiohttp import web

from exporter.simulator.bitrix24_company import special_group_ids
from exporter.simulator.bitrix24_org import (
    SimDepartment,
    SimGroup,
    can_view_tasks,
    department_get,
    sonet_group_get,
    sonet_group_user_get,
)
from exporter.simulator.bitrix24_php import (
    MethodError,
    parsed_command,
    php_array,
    php_query,
    php_truthy,
    upper_keys,
)
from exporter.simulator.bitrix24_portal import (
    CODES,
    FAULTS,
    FULL_SCOPES,
    LEGACY_KEYS,
    MODERN_KEYS,
    TYPES,
    PortalSimulator,
    generate_portal,
)
from exporter.simulator.bitrix24_users import FIRST, LAST, USER_SCOPES, SimUser, user_get

__all__ = ["FAULTS", "FIRST", "FULL_SCOPES", "LAST", "LEGACY_KEYS", "MODERN_KEYS", "MethodError", "PortalSimulator",
           "SimDepartment", "SimGroup", "SimUser", "create_app", "generate_portal", "php_query", "special_group_ids"]

# Scopes that open a method; any one is enough (`tasks` is an alias of `task`, user_basic/user_brief of `user`).
METHOD_SCOPES: dict[str, tuple[str, ...]] = {
    "tasks.task.counters.get": ("task", "tasks"),
    "user.get": USER_SCOPES,
    "department.get": ("department",),
    "department.fields": ("department",),
    "sonet_group.get": ("sonet_group",),
    "sonet_group.user.get": ("sonet_group",),
}
BATCH_LIMIT = 50
SCOPE_DENIED = "The request requires higher privileges than provided by the webhook token"
GROUP_DENIED = "Group not found or access denied. (internal error)"



# --- request handling ---------------------------------------------------------------------------


def _time_block(started: float, operating: float | None = None, reset_at: int | None = None) -> dict[str, Any]:
    finish = time.time()
    block: dict[str, Any] = {"start": started, "finish": finish, "duration": finish - started,
                             "processing": finish - started, "date_start": _utc_text(int(started)),
                             "date_finish": _utc_text(int(finish))}
    if operating is not None:
        block["operating"] = round(operating, 4)
        block["operating_reset_at"] = reset_at
    return block


@functools.lru_cache(maxsize=64)
def _utc_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(second))


def _int(value: Any, name: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise MethodError(400, "0", f"Argument '{name}' must be integer (internal error)") from None


class _RequestState:
    """What a request's commands read of the portal's people and groups, computed once per request on first
    use: nothing changes them while a request is answered (a batch's commands run without an await)."""

    def __init__(self, sim: PortalSimulator) -> None:
        self.sim = sim

    @functools.cached_property
    def active(self) -> set[int]:
        return {u.user_id for u in self.sim.users if u.active}

    @functools.cached_property
    def group_mates(self) -> set[int]:
        """Users who share a workgroup with the webhook's owner."""
        sim = self.sim
        return {uid for g in sim.workgroups if g.is_member(sim.user_id) for uid in g.members if g.is_member(uid)}


class _Portal:
    def __init__(self, sim: PortalSimulator) -> None:
        self.sim = sim

    def run(self, method: str, params: dict[str, Any], in_batch: bool, state: _RequestState
            ) -> tuple[Any, dict[str, Any]]:
        """Execute one method; returns (result, extra top-level fields like total/next)."""
        sim = self.sim
        sim.commands_by_method[method] += 1
        scopes = METHOD_SCOPES.get(method)
        if scopes is None:
            raise MethodError(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")
        if sim.scopes.isdisjoint(scopes):
            raise MethodError(sim.status_for_scope_error, "insufficient_scope", SCOPE_DENIED)
        if in_batch and method in sim.batch_command_errors:
            raise MethodError(400, sim.batch_command_errors[method], "Simulated command error")
        if method == "user.get":
            return user_get(sim.users, params, sim.scopes, module_admin=sim.sonet_admin,
                            group_mates=state.group_mates)
        if method == "tasks.task.counters.get":
            if sim.operating_per_command:  # else nothing is accounted, and nothing can be over the limit
                operating, _ = sim.charge(method, 0.0)
                if operating > sim.operating_limit:
                    raise MethodError(429, "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.")
                sim.charge(method, sim.operating_per_command)
            return self.counters(params, state), {"total": 1}
        if method == "department.get":
            return department_get(sim.departments, params)
        if method == "department.fields":
            return {"ID": "ID", "NAME": "Name", "SORT": "Sorting", "PARENT": "Parent department",
                    "UF_HEAD": "Supervisor"}, {}
        if method == "sonet_group.get":
            return sonet_group_get(sim.workgroups, params, caller=sim.user_id, module_admin=sim.sonet_admin)
        return sonet_group_user_get(sim.workgroups, params, caller=sim.user_id, module_admin=sim.sonet_admin,
                                    active_users=state.active), {}

    def counters(self, params: dict[str, Any], state: _RequestState) -> Any:
        """Three checks in the portal's order: the caller's rights in the group, access to the user, values."""
        sim = self.sim
        user_id = _int(params.get("userId", sim.user_id), "userId")
        group_id = _int(params.get("groupId", 0) or 0, "groupId")
        kind = str(params.get("type", "view_all"))
        sim.counter_reads[(user_id, group_id)] += 1
        if user_id in sim.command_errors:
            code = sim.command_errors[user_id]
            raise MethodError(400, code, "Simulated command error")
        if group_id:
            group = sim.workgroup(group_id)
            if group is None or not can_view_tasks(group, sim.user_id, sim.sonet_admin):
                raise MethodError(400, "0", GROUP_DENIED)
        if user_id not in state.active or user_id in sim.hidden or kind not in TYPES:
            return []
        return {key: {"counter": str(v) if sim.string_numbers else v, "code": CODES[key]}
                for key, v in sim.counters(user_id, group_id, kind).items()}

    def batch(self, params: dict[str, Any]) -> dict[str, Any]:
        """batch as rest_provider.php runs it: commands past the 50th fail one by one, halt stops at an error."""
        query = upper_keys(params)
        cmd = query.get("CMD")
        if isinstance(cmd, list):
            cmd = {str(i): c for i, c in enumerate(cmd)}
        if not isinstance(cmd, dict):
            cmd = {}
        self.sim.max_batch = max(self.sim.max_batch, len(cmd))
        halt = php_truthy(query.get("HALT"))
        state = _RequestState(self.sim)
        results: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        totals: dict[str, Any] = {}
        nexts: dict[str, Any] = {}
        times: dict[str, Any] = {}
        for index, (key, text) in enumerate(cmd.items()):
            if not isinstance(text, str):
                continue  # the portal skips a command that is not a string
            started = time.time()
            method, command_params = parsed_command(text)
            name = str(key)
            self.sim.commands += 1
            try:
                if index >= BATCH_LIMIT:
                    raise MethodError(400, "ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
                lower = method.lower()
                if lower == "batch":
                    raise MethodError(405, "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage")
                result, extra = self.run(lower, dict(command_params), in_batch=True, state=state)
            except MethodError as exc:
                errors[name] = {"error": exc.code, "error_description": exc.description}
                if halt:
                    break
                continue
            results[name] = result
            if "total" in extra:
                totals[name] = extra["total"]
            if "next" in extra:
                nexts[name] = extra["next"]
            operating, reset_at = self.sim.charge(method, 0.0)
            times[name] = _time_block(started, operating, reset_at)
        # PHP writes an array keyed 0..n-1 (an empty one too) as a JSON list (docs/api-notes.md#b24-batch-empty-list),
        # and recorded answers show `result_total` empty even for list methods
        if not self.sim.batch_totals:
            totals = {}
        return {"result": php_array(results), "result_error": php_array(errors), "result_total": php_array(totals),
                "result_next": php_array(nexts), "result_time": php_array(times)}


# when, as a part of the latency, an answer is made: after the requests a client sends at once have come in,
# long before the answers are due (a 100-user cycle's 11 answers take this process ~4 ms to make)
MAKING_AT = 0.25


def create_app(sim: PortalSimulator) -> web.Application:
    portal = _Portal(sim)
    app = web.Application(client_max_size=4 * 1024 * 1024)

    turn: list[float] = []  # when the requests the event loop is starting now arrived

    def arrival() -> float:
        """When a request arrived: the moment the event loop began starting the requests it read together.
        This process answers them one after another, where a portal answers them on many servers at once: a
        request's latency counts from its arrival, not from when the answers before it were made."""
        if not turn:
            turn.append(time.monotonic())
            asyncio.get_running_loop().call_soon(turn.clear)  # runs after every request started in this turn
        return turn[0]

    async def handle(request: web.Request) -> web.StreamResponse:
        """The answer is made a quarter of the latency after the request arrived and sent `latency` seconds
        after it arrived: a portal answers a client's concurrent batches on many servers at once, so the time
        this one process spends making answers overlaps the latency instead of adding to it, and it is free to
        read (and stamp) the requests that come in meanwhile instead of reading them only once an answer is
        made."""
        started, arrived = time.time(), arrival()
        sim.received += 1
        sim.in_flight += 1
        sim.max_in_flight = max(sim.max_in_flight, sim.in_flight)
        try:
            if sim.latency:
                await asyncio.sleep(max(0.0, arrived + sim.latency * MAKING_AT - time.monotonic()))
            response = await _answer(request, started)
            if sim.latency:
                await asyncio.sleep(max(0.0, arrived + sim.latency - time.monotonic()))
            return response
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
            if method.lower() == "batch":
                result: Any = portal.batch(params)
                extra: dict[str, Any] = {}
            else:
                result, extra = portal.run(method.lower(), params, in_batch=False, state=_RequestState(sim))
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
        return _error(sim.status_for_scope_error, "insufficient_scope", SCOPE_DENIED)
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
