"""One Pachca collection cycle: walk every page of GET /tasks, tally the reminders as they arrive.

Records are counted page by page and dropped; only counters (and the ids already counted, to survive a
cursor that loops back) live for the cycle. Enums are open (docs/api-notes.md#pachca-open-enums): an
unknown kind, status or priority is kept as its own label value; a field of the wrong type costs only that
field's contribution.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from exporter.config import PachcaConfig
from exporter.errors import ApiError, SourceFailure
from exporter.snapshot import ApiTelemetry, ReminderTally
from exporter.sources import CycleResult
from exporter.sources.pachca_client import MAX_RETRY_AFTER, REQUESTS_PER_SECOND, RETRY, PachcaClient
from exporter.sources.retries import RetryPolicy

UNKNOWN = "unknown"
MAX_LABEL_LENGTH = 64
USERS_PAGE_SIZE = 50
NAMES_MAX_AGE = 3600.0  # re-read GET /users at least hourly (renames); sooner when a performer is new
AUTH_HINTS = {
    "invalid_token": "the token is missing, unknown, expired or revoked; create one in Automations > API",
    "insufficient_scope": "the token lacks the tasks:read scope",
}

log = structlog.get_logger()


def parse_due(value: Any) -> float | None:
    """Unix seconds of an ISO-8601 `due_at` ("2020-06-05T09:00:00.000Z"); None for null.

    Raises ValueError when the value is present but unreadable. A time without a zone is taken as UTC,
    which is what the API documents for every date.
    """
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError(f"due_at is {type(value).__name__}, not an ISO-8601 string")
    moment = datetime.fromisoformat(value.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _label(value: Any) -> str | None:
    """An open-enum string value as a label; None when it is not a usable string."""
    if isinstance(value, str) and value.strip() and len(value) <= MAX_LABEL_LENGTH:
        return value.strip()
    return None


def _priority(value: Any) -> str | None:
    """Priority as a label: documented 1-3 but an int32 without an enum, so any integer is kept."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return str(int(value.strip()))
    return None


def _performers(value: Any) -> tuple[set[int], bool]:
    """The distinct performer ids of a reminder, and whether anything in the field was unreadable."""
    if value is None:
        return set(), False
    if not isinstance(value, list):
        return set(), True
    ids: set[int] = set()
    bad = False
    for pid in value:
        if isinstance(pid, int) and not isinstance(pid, bool):
            ids.add(pid)
        else:
            bad = True
    return ids, bad


class TallyBuilder:
    """Counts reminders as they stream in; holds counters, never the reminders."""

    def __init__(self, now: float, due_soon: float) -> None:
        self.now = now
        self.soon_until = now + due_soon
        self.by_status: Counter[tuple[str, str, str]] = Counter()
        self.overdue: Counter[tuple[str, str]] = Counter()
        self.due_soon: Counter[str] = Counter()
        self.without_due_date: Counter[str] = Counter()
        self.performer: Counter[tuple[int, str]] = Counter()
        self.performer_overdue: Counter[int] = Counter()
        self.oldest_due: float | None = None
        self.total = 0
        self.pages = 0
        self.malformed = 0  # records with at least one unreadable field (counted as far as possible)
        self.duplicates = 0  # records seen again on a later page (a cursor that looped back)
        self._ids: set[int] = set()

    @property
    def performers(self) -> set[int]:
        return {pid for pid, _ in self.performer}

    def add_page(self, records: list[Any]) -> None:
        self.pages += 1
        for record in records:
            self.add(record)

    def add(self, record: Any) -> None:
        if not isinstance(record, dict):
            self.malformed += 1
            return
        rid = record.get("id")
        bad = False
        if isinstance(rid, int) and not isinstance(rid, bool):
            if rid in self._ids:
                self.duplicates += 1
                return
            self._ids.add(rid)
        else:
            bad = True
        fields = (_label(record.get("status")), _label(record.get("kind")), _priority(record.get("priority")))
        bad = bad or None in fields
        status, kind, priority = (value or UNKNOWN for value in fields)
        performers, bad_performers = _performers(record.get("performer_ids"))
        raw_due = record.get("due_at")
        try:
            due = parse_due(raw_due)
        except ValueError:
            due, bad = None, True
        if bad or bad_performers:
            self.malformed += 1
        self.total += 1
        self.by_status[(status, kind, priority)] += 1
        for pid in performers:
            self.performer[(pid, status)] += 1
        if raw_due is None:
            self.without_due_date[status] += 1
        if status != "undone" or due is None:
            return
        if due < self.now:
            self.overdue[(kind, priority)] += 1
            for pid in performers:
                self.performer_overdue[pid] += 1
            self.oldest_due = due if self.oldest_due is None else min(self.oldest_due, due)
        elif due <= self.soon_until:
            self.due_soon[kind] += 1

    def result(self, user_names: dict[int, str]) -> ReminderTally:
        oldest = self.now - self.oldest_due if self.oldest_due is not None else 0.0
        return ReminderTally(
            by_status=dict(self.by_status), overdue=dict(self.overdue), due_soon=dict(self.due_soon),
            without_due_date=dict(self.without_due_date), performer=dict(self.performer),
            performer_overdue=dict(self.performer_overdue), oldest_overdue_seconds=oldest,
            total=self.total, pages=self.pages, user_names=user_names, malformed=self.malformed,
        )


def user_name(record: Any) -> tuple[int, str] | None:
    """(id, "First Last") of a GET /users record, falling back to the nickname; None if unusable."""
    if not isinstance(record, dict):
        return None
    uid = record.get("id")
    if not isinstance(uid, int) or isinstance(uid, bool):
        return None
    parts = (record.get("first_name"), record.get("last_name"))
    name = " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
    nickname = record.get("nickname")
    if not name and isinstance(nickname, str):
        name = nickname.strip()
    return (uid, name) if name else None


class PachcaSource:
    """Collects one workspace. Keeps performer names across cycles so a failed GET /users costs nothing."""

    source = "pachca"

    def __init__(self, config: PachcaConfig, telemetry: ApiTelemetry | None = None, *,
                 retry: RetryPolicy = RETRY, max_retry_after: float = MAX_RETRY_AFTER,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.target = config.name
        self.interval = config.interval
        self.cycle_timeout = config.cycle_timeout
        self.telemetry = ApiTelemetry() if telemetry is None else telemetry
        self._clock = clock
        self._client = PachcaClient(config.base_url, config.token, self.telemetry, timeout=config.timeout,
                                    retry=retry, max_retry_after=max_retry_after, transport=transport,
                                    clock=clock)
        self.names_enabled = config.performer_names is not False
        self._names: dict[int, str] = {}
        self._names_read_at: float | None = None
        self._unresolved: set[int] = set()  # performers the last GET /users did not know

    async def aclose(self) -> None:
        await self._client.aclose()

    def cycle_bound(self, calls: int) -> float:
        return calls / REQUESTS_PER_SECOND

    async def collect(self) -> CycleResult:
        """Run one cycle; raises SourceFailure when GET /tasks cannot be read to the end."""
        calls_before = self._client.calls
        tally = TallyBuilder(self._clock(), self.config.due_soon)
        try:
            async with aclosing(self._client.walk("/tasks", limit=self.config.page_size,
                                                  max_pages=self.config.max_pages)) as pages:
                async for records in pages:
                    tally.add_page(records)
        except ApiError as exc:
            raise self._failure(exc) from None
        performers = tally.performers
        if self.names_enabled and self._names_stale(performers):
            await self._read_names(performers)
        if tally.malformed or tally.duplicates:
            log.warning("pachca_odd_records", workspace=self.target, malformed=tally.malformed,
                        duplicates=tally.duplicates)
        names = {pid: self._names[pid] for pid in performers if pid in self._names}
        return CycleResult(tally.result(names), self._client.calls - calls_before)

    def _failure(self, exc: ApiError) -> SourceFailure:
        if exc.reason == "auth":
            log.error("pachca_auth_failed", workspace=self.target, code=exc.code, status=exc.status,
                      hint=AUTH_HINTS.get(exc.code, "the token may not read reminders"))
        return SourceFailure(exc.reason, str(exc))

    # --- performer names --------------------------------------------------------------------------

    def _names_stale(self, performers: set[int]) -> bool:
        if self._names_read_at is None or self._clock() - self._names_read_at >= NAMES_MAX_AGE:
            return True
        return bool(performers - self._names.keys() - self._unresolved)

    async def _read_names(self, performers: set[int]) -> None:
        """GET /users into the name cache; any failure keeps the last good names and never fails the cycle."""
        names: dict[int, str] = {}
        try:
            async with aclosing(self._client.walk("/users", limit=USERS_PAGE_SIZE,
                                                  max_pages=self.config.max_pages)) as pages:
                async for records in pages:
                    names.update(entry for entry in map(user_name, records) if entry is not None)
        except ApiError as exc:
            if exc.reason == "auth" and self.config.performer_names is None:
                self.names_enabled = False
                log.warning("pachca_user_names_off", workspace=self.target, code=exc.code,
                            hint="the token lacks users:read; set performer_names: true to keep trying")
            else:
                log.warning("pachca_user_names_failed", workspace=self.target, code=exc.code,
                            detail=exc.message)
            return
        self._names = names
        self._names_read_at = self._clock()
        self._unresolved = performers - names.keys()
