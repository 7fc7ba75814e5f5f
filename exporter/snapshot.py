"""Immutable results of each source's last good cycle, plus the status of its latest attempt.

Sources produce these values; the collector reads them. Neither side holds Prometheus types or sockets.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol

from exporter.errors import FailureReason, RequestOutcome
from exporter.org import PortalOrg, StructureStatus

# --- Bitrix24 -----------------------------------------------------------------------------------


class CounterQuery(NamedTuple):
    """One tasks.task.counters.get command: whose counters, in which workgroup, for which role.

    A named tuple, not a dataclass: a cycle hashes each query about eight times (the fold, the plan, the
    comparison with the last cycle), and a tuple hashes in C (a 100-user cycle's CPU, bench/RESULTS.md)."""

    user_id: int
    group_id: int
    role: str


# A query's counters as the API named them: (("expired", 3.0), ("new_comments", 0.0)). Pairs are shared
# between queries (see sources.bitrix24.parse_counters), so 25,000 queries cost little more than their keys.
CounterSet = tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class CounterReading:
    """One value of tasks.task.counters.get: a user's counter for a group and role."""

    user_id: int
    group_id: int
    role: str
    counter: str
    value: float


@dataclass(frozen=True, slots=True)
class PortalUser:
    user_id: int
    name: str  # "" when unknown or when the portal's config says `names: false`
    email: str = ""  # trimmed and lower-cased; "" when the webhook's scope does not show it, or `names: false`
    departments: tuple[int, ...] = ()  # UF_DEPARTMENT: the departments the user is directly in


@dataclass(frozen=True, slots=True)
class PortalSnapshot:
    """A Bitrix24 portal as seen by one complete cycle."""

    users: tuple[PortalUser, ...]
    # counters as the API named them, per query; held once (the source's next cycle reads it too)
    counters: Mapping[CounterQuery, CounterSet]
    hidden_users: int  # users whose counters came back as [] (the webhook may not see them)
    failed_commands: int  # commands whose error cost only themselves this cycle
    operating_seconds: Mapping[str, float] = field(default_factory=dict)  # method -> time.operating
    org: PortalOrg = field(default_factory=PortalOrg)  # departments and workgroups around the users
    structure: StructureStatus | None = None  # None: no structure is read for this portal

    @property
    def readings(self) -> Iterator[CounterReading]:
        for q, values in self.counters.items():
            for name, value in values:
                yield CounterReading(q.user_id, q.group_id, q.role, name, value)

    @property
    def series(self) -> int:
        return sum(len(values) for values in self.counters.values())

    def summary(self) -> dict[str, int]:
        """The cycle_done log event's figures for this portal."""
        return {"users": len(self.users), "series": self.series, "hidden_users": self.hidden_users,
                "failed_commands": self.failed_commands}


# --- Pachca -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PachcaUser:
    """A GET /users record, reduced to what the organisation view needs.

    `name` is "" with `names: false`; `email` is trimmed and lower-cased ("" when null, e.g. for a bot
    token without the personal-data right) and is kept out of repr, so logging this value never shows it.
    """

    user_id: int
    name: str
    department: str = ""  # free text; "" when null or empty (docs/api-notes.md#org-pachca-users-department)
    tags: tuple[str, ...] = ()  # employee tag names (list_tags), in the API's order
    email: str = field(default="", repr=False)
    bot: bool = False
    suspended: bool = False

    @property
    def active(self) -> bool:
        """A person who can be matched and is listed without performing anything: not a bot, not deactivated."""
        return not (self.bot or self.suspended)


@dataclass(frozen=True, slots=True)
class ReminderTally:
    """Counts of one Pachca workspace's reminders, made while walking the pages."""

    by_status: Mapping[tuple[str, str, str], int]  # (status, kind, priority) -> n
    overdue: Mapping[tuple[str, str], int]  # (kind, priority) -> n
    due_soon: Mapping[str, int]  # kind -> n
    without_due_date: Mapping[str, int]  # status -> n
    performer: Mapping[tuple[int, str], int]  # (performer_id, status) -> n
    performer_overdue: Mapping[int, int]  # performer_id -> n
    oldest_overdue_seconds: float  # 0 when nothing is overdue
    total: int
    pages: int
    malformed: int = 0  # reminders with a field that could not be read (counted as "unknown" there)
    users: tuple[PachcaUser, ...] = ()  # the last good GET /users, by id; empty when it was never read
    users_read_at: float | None = None  # unix time of that read; None: never (no users:read, or off)

    @property
    def listed_users(self) -> Iterator[PachcaUser]:
        """The users pachca_user_info lists: every active user, plus bots and deactivated users who perform."""
        performers = {pid for pid, _ in self.performer}
        return (u for u in self.users if u.active or u.user_id in performers)

    def summary(self) -> dict[str, int]:
        """The cycle_done log event's figures for this workspace."""
        return {"reminders": self.total, "pages": self.pages}


SourceData = PortalSnapshot | ReminderTally


# --- status of every source ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceKey:
    source: str  # "bitrix24" | "pachca"
    target: str  # the portal or workspace name


@dataclass(frozen=True, slots=True)
class SourceState:
    """The last good data of one source, and how its latest cycle went."""

    key: SourceKey
    interval: float
    data: SourceData | None = None
    up: bool = False
    last_success: float | None = None
    last_duration: float | None = None
    cycle_bound: float = 0.0  # the least time the API's rate limit allows for one cycle
    last_error: str = ""
    failures: Mapping[FailureReason, int] = field(default_factory=dict)  # reason -> count
    # unique among the states of every store: what a render made from one version can be reused while it stays
    version: int = 0


@dataclass(frozen=True, slots=True)
class TelemetryCounts:
    """One consistent reading of a source's ApiTelemetry."""

    requests: Mapping[tuple[str, str], int]  # (method, outcome) -> n
    errors: Mapping[str, int]  # API error code -> n
    rate_limit_wait_seconds: float


class ApiTelemetry:
    """Counts API requests by method and outcome, and errors by code, for one source target."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str]] = Counter()
        self._errors: Counter[str] = Counter()
        self._rate_limit_wait_seconds = 0.0

    def request(self, method: str, outcome: RequestOutcome) -> None:
        with self._lock:
            self._requests[(method, outcome)] += 1

    def error(self, code: str) -> None:
        with self._lock:
            self._errors[code] += 1

    def waited(self, seconds: float) -> None:
        with self._lock:
            self._rate_limit_wait_seconds += seconds

    def counts(self) -> TelemetryCounts:
        """The counts so far, read together (a source's loop goes on counting in another thread)."""
        with self._lock:
            return TelemetryCounts(dict(self._requests), dict(self._errors), self._rate_limit_wait_seconds)


class Registrant(Protocol):
    """What the store reads from a source it registers (every exporter.sources.Source has it)."""

    @property
    def source(self) -> str: ...

    @property
    def target(self) -> str: ...

    @property
    def interval(self) -> float: ...

    @property
    def telemetry(self) -> ApiTelemetry: ...


_VERSIONS = itertools.count(1)


class Store:
    """Holds the current SourceState of every source; replacing a state notifies the listeners."""

    def __init__(self) -> None:
        self._states: dict[SourceKey, SourceState] = {}
        self._telemetry: dict[SourceKey, ApiTelemetry] = {}
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def register(self, source: Registrant) -> SourceKey:
        """Start tracking a source: its state and its own telemetry for the traffic metrics. A source that a
        reload puts in another's place keeps that one's state (its last good data stays in /metrics until the
        successor's first cycle)."""
        key = SourceKey(source.source, source.target)
        with self._lock:
            state = self._states.get(key)
            self._states[key] = replace(SourceState(key=key, interval=source.interval) if state is None else state,
                                        interval=source.interval, version=next(_VERSIONS))
            self._telemetry[key] = source.telemetry
        self._notify()
        return key

    def unregister(self, key: SourceKey) -> None:
        """A source a reload removed: its series leave /metrics with it."""
        with self._lock:
            self._states.pop(key, None)
            self._telemetry.pop(key, None)
        self._notify()

    def states(self) -> list[SourceState]:
        with self._lock:
            return list(self._states.values())

    def telemetry(self) -> dict[SourceKey, ApiTelemetry]:
        with self._lock:
            return dict(self._telemetry)

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def succeeded(self, key: SourceKey, data: SourceData, duration: float, cycle_bound: float = 0.0) -> None:
        self._update(key, lambda s: replace(
            s, data=data, up=True, last_success=time.time(), last_duration=duration,
            cycle_bound=cycle_bound, last_error=""))

    def failed(self, key: SourceKey, reason: FailureReason, detail: str, duration: float) -> None:
        def apply(s: SourceState) -> SourceState:
            failures = dict(s.failures)
            failures[reason] = failures.get(reason, 0) + 1
            return replace(s, up=False, last_duration=duration, last_error=f"{reason}: {detail}",
                           failures=failures)
        self._update(key, apply)

    def ready(self) -> bool:
        """True once every source has completed at least one cycle, good or bad."""
        return all(s.last_duration is not None for s in self.states())

    def _update(self, key: SourceKey, change: Callable[[SourceState], SourceState]) -> None:
        with self._lock:
            self._states[key] = replace(change(self._states[key]), version=next(_VERSIONS))
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
