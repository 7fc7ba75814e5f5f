"""The fake Bitrix24 portal's state: its users, company structure, workgroups, counters (drifting, per user x
group x role) and leaky bucket, which tests change at run time; exporter/simulator/bitrix24.py answers
requests from it."""

from __future__ import annotations

import functools
import math
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from exporter.simulator.bitrix24_company import build_groups, build_structure
from exporter.simulator.bitrix24_org import SimDepartment, SimGroup, can_view_tasks
from exporter.simulator.bitrix24_users import SimUser, generate_people

MODERN_KEYS = {"expired": 6291456, "new_comments": 12582912}
# Legacy (tasks module before ~20.800): a different key set per role (docs/api-notes.md#b24-counters-keys).
LEGACY_KEYS = {
    "view_all": ["wo_deadline", "expired", "expired_soon", "not_viewed", "wait_ctrl"],
    "view_role_responsible": ["wo_deadline", "expired", "expired_soon", "not_viewed"],
    "view_role_accomplice": ["expired", "expired_soon", "not_viewed"],
    "view_role_originator": ["wo_deadline", "expired", "wait_ctrl"],
    "view_role_auditor": ["expired"],
}
# a counter's `code` (legacy keys too); `mentioned` is built since early 2026, and a per-role `total` (code "")
# the REST layer lifts out of the result, which tests can put back with `overrides`
CODES: dict[str, int | str] = {**MODERN_KEYS, "wo_deadline": 10485760, "expired_soon": 9437184,
                               "not_viewed": 1048576, "wait_ctrl": 8388608, "mentioned": 15728640, "total": ""}
TYPES = tuple(LEGACY_KEYS)
_BASES = (0, 0, 0, 1, 1, 2, 3, 5, 8, 13, 21)  # a counter's value without drift, drawn per user x group x role
FAULTS = ("http_500", "http_502", "http_503", "html", "truncated_json", "wrong_types", "unauthorized",
          "insufficient_scope", "query_limit_storm", "operation_time_limit", "reset", "timeout")
FULL_SCOPES = frozenset({"task", "user", "department", "sonet_group"})

@dataclass
class PortalSimulator:
    """Mutable state of the fake portal; tests change it at run time.

    The webhook belongs to `user_id`, who may read every user's counters (a tasks administrator) except
    the `hidden` ones. `sonet_admin` says whether that user is also a socialnetwork module admin: only
    then is IS_ADMIN=Y honoured and every group readable; otherwise groups follow their own rights.
    """

    user_id: int = 1
    secret: str = "simsecret"
    users: list[SimUser] = field(default_factory=list)
    departments: list[SimDepartment] = field(default_factory=list)
    workgroups: list[SimGroup] = field(default_factory=list)
    scopes: set[str] = field(default_factory=lambda: set(FULL_SCOPES))
    sonet_admin: bool = False
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
    status_for_scope_error: int = 401  # the source's default; the docs say 403
    operating_per_command: float = 0.0  # seconds of `time.operating` each counters command costs
    operating_limit: float = 480.0
    fault: str | None = None  # one of FAULTS, switched on and off by tests
    fault_retry_after: float = 30.0
    # method -> the error code each of its commands inside a batch answers: a passing QUERY_LIMIT_EXCEEDED, or
    # ACCESS_DENIED from a portal or proxy that refuses the method inside batch
    batch_command_errors: dict[str, str] = field(default_factory=dict)
    batch_totals: bool = True  # False: `result_total` is [] in every batch answer, list methods' too
    command_errors: dict[int, str] = field(default_factory=dict)  # user_id -> error code for its commands
    overrides: dict[tuple[int, int, str], dict[str, Any]] = field(default_factory=dict)
    # what happened, for tests and benchmarks
    calls: Counter[str] = field(default_factory=Counter)  # HTTP requests per method (batch counts once)
    commands_by_method: Counter[str] = field(default_factory=Counter)  # executions, direct or inside batch
    counter_reads: Counter[tuple[int, int]] = field(default_factory=Counter)  # (userId, groupId) commands
    rejected: int = 0
    commands: int = 0  # commands inside batch calls
    max_batch: int = 0
    received: int = 0  # requests that arrived, every method together (`calls`: per method)
    in_flight: int = 0
    max_in_flight: int = 0
    _level: float = 0.0
    _updated: float = field(default_factory=time.monotonic)
    _operating: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)  # (when, seconds), oldest first
    started: float = field(default_factory=time.time)

    @property
    def webhook_path(self) -> str:
        return f"/rest/{self.user_id}/{self.secret}/"

    @property
    def groups(self) -> list[int]:
        """Group ids whose counters the webhook may read, with 0 (all groups) first."""
        return [0] + [g.group_id for g in self.workgroups if can_view_tasks(g, self.user_id, self.sonet_admin)]

    def user(self, user_id: int) -> SimUser | None:
        return next((u for u in self.users if u.user_id == user_id), None)

    def department(self, dept_id: int) -> SimDepartment | None:
        return next((d for d in self.departments if d.dept_id == dept_id), None)

    def workgroup(self, group_id: int) -> SimGroup | None:
        return next((g for g in self.workgroups if g.group_id == group_id), None)

    def reset_counts(self) -> None:
        """Forget what happened so far (calls, commands, counter reads), e.g. between two cycles."""
        self.calls.clear()
        self.commands_by_method.clear()
        self.counter_reads.clear()
        self.commands = self.max_batch = self.rejected = 0

    def counters(self, user_id: int, group_id: int, kind: str) -> dict[str, int]:
        """The true counter values of a user, as the portal would compute them now.

        In a group the user is not a member of, every counter is 0 (docs/api-notes.md#org-counters-non-member).
        """
        override = self.overrides.get((user_id, group_id, kind))
        if override is not None:
            return dict(override)
        if group_id:
            group = self.workgroup(group_id)
            if group is None or not group.is_member(user_id):
                return dict.fromkeys(LEGACY_KEYS[kind] if self.legacy else MODERN_KEYS, 0)
        values: dict[str, int] = {}
        for key, base, phase, period in _draws(self.seed, user_id, group_id, kind, self.legacy):
            if self.drift:
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
        window = self._operating.setdefault(method, deque())
        while window and window[0][0] <= now - 600:
            window.popleft()
        if seconds:
            window.append((now, seconds))
        if not window:
            return 0, int(now + 600)
        return sum(s for _, s in window), int(window[0][0] + 600)


@functools.lru_cache(maxsize=65536)
def _draws(seed: int, user_id: int, group_id: int, kind: str, legacy: bool
           ) -> tuple[tuple[str, int, float, float], ...]:
    """(key, base value, drift phase, drift period) of each counter of a query: a pure function of the seed and
    the query, drawn once (seeding a Random from a string costs more than the rest of a command)."""
    draws = []
    for key in LEGACY_KEYS[kind] if legacy else MODERN_KEYS:
        rnd = random.Random(f"{seed}:{user_id}:{group_id}:{kind}:{key}")
        base = rnd.choice(_BASES)
        if group_id:
            base //= 2
        draws.append((key, base, rnd.uniform(0, 6.3), rnd.uniform(60, 600)))
    return tuple(draws)


def generate_portal(users: int = 40, *, seed: int = 7, inactive: int = 3, hidden: int = 2,
                    groups: int = 2, special_groups: bool = True, **kwargs: Any) -> PortalSimulator:
    """A realistic portal: named employees in a company structure, workgroups, a few dismissed users and a
    few the webhook cannot see.

    Users 1..`users` are active, the next `inactive` dismissed; the last `hidden` active ones answer `[]`.
    Departments: see bitrix24_company.build_structure. Workgroups 1..`groups` are readable; with
    `special_groups` four more follow (special_group_ids: archived, secret, members_only, with_outsiders).
    """
    people = generate_people(users, seed=seed, inactive=inactive)
    departments = build_structure(people, seed=seed)
    sim = PortalSimulator(users=people, departments=departments, seed=seed, **kwargs)
    sim.workgroups = build_groups(people, groups, special=special_groups, seed=seed, caller=sim.user_id)
    sim.hidden = {u.user_id for u in people[users - hidden:users]} if hidden else set()
    return sim
