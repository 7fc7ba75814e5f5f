"""One Pachca collection cycle: walk every page of GET /tasks, tally the reminders as they arrive.

Records are counted page by page and dropped; only counters (and the ids already counted, to survive a
cursor that loops back) live for the cycle. Enums are open (docs/api-notes.md#pachca-open-enums): an
unknown kind, status or priority is kept as its own label value; a field of the wrong type costs only that
field's contribution.

The user directory (GET /users: names, departments, employee tags, e-mails) is the workspace's structure: it is
walked every `structure_interval`, or sooner when a reminder names an unknown performer, and kept between
reads, so a failed read costs nothing but freshness (docs/api-notes.md#org-pachca-users-department).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import structlog

from exporter.config import PachcaConfig
from exporter.errors import ApiError, SourceFailure
from exporter.people import normalize_email
from exporter.snapshot import ApiTelemetry, PachcaUser, ReminderTally
from exporter.sources import CycleResult
from exporter.sources.pachca_client import MAX_RETRY_AFTER, REQUESTS_PER_SECOND, RETRY, PachcaClient
from exporter.sources.retries import RetryPolicy

UNKNOWN = "unknown"
MAX_LABEL_LENGTH = 64
USERS_PAGE_SIZE = 50
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

    def result(self, users: tuple[PachcaUser, ...] = (), users_read_at: float | None = None) -> ReminderTally:
        oldest = self.now - self.oldest_due if self.oldest_due is not None else 0.0
        return ReminderTally(
            by_status=dict(self.by_status), overdue=dict(self.overdue), due_soon=dict(self.due_soon),
            without_due_date=dict(self.without_due_date), performer=dict(self.performer),
            performer_overdue=dict(self.performer_overdue), oldest_overdue_seconds=oldest,
            total=self.total, pages=self.pages, malformed=self.malformed, users=users, users_read_at=users_read_at,
        )


def user_name(record: dict[str, Any]) -> str:
    """"First Last" of a GET /users record, falling back to the nickname; "" if it has neither."""
    parts = (record.get("first_name"), record.get("last_name"))
    name = " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
    nickname = record.get("nickname")
    if not name and isinstance(nickname, str):
        name = nickname.strip()
    return name


def _text(value: Any) -> str:
    """A nullable free-text field (department): "" when null, empty or not a string."""
    return value.strip() if isinstance(value, str) else ""


def _tags(value: Any) -> tuple[str, ...]:
    """`list_tags` (tag names, docs/api-notes.md#org-pachca-group-tags): distinct non-empty strings, in order."""
    if not isinstance(value, list):
        return ()
    return tuple(dict.fromkeys(t.strip() for t in value if isinstance(t, str) and t.strip()))


def pachca_user(record: Any, *, names: bool = True) -> PachcaUser | None:
    """A GET /users record as a PachcaUser; None without a usable id. Nullable fields become "" (or no tags)."""
    if not isinstance(record, dict):
        return None
    uid = record.get("id")
    if not isinstance(uid, int) or isinstance(uid, bool):
        return None
    return PachcaUser(user_id=uid, name=user_name(record) if names else "",
                      department=_text(record.get("department")), tags=_tags(record.get("list_tags")),
                      email=normalize_email(record.get("email")), bot=record.get("bot") is True,
                      suspended=record.get("suspended") is True)


class PachcaSource:
    """Collects one workspace. Keeps the user directory across cycles so a failed GET /users costs nothing."""

    source = "pachca"

    def __init__(self, config: PachcaConfig, telemetry: ApiTelemetry | None = None, *,
                 retry: RetryPolicy = RETRY, max_retry_after: float = MAX_RETRY_AFTER,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.target = config.name
        self.interval = config.interval
        self.cycle_timeout = config.cycle_timeout
        self.telemetry = ApiTelemetry() if telemetry is None else telemetry
        self._clock = clock
        self._client = PachcaClient(config.base_url, config.token, self.telemetry, timeout=config.timeout,
                                    retry=retry, max_retry_after=max_retry_after,
                                    clock=clock)
        self.names_enabled = config.performer_names is not False  # whether GET /users is read at all
        self._users: dict[int, PachcaUser] = {}
        self._users_read_at: float | None = None
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
        users = tuple(self._users[uid] for uid in sorted(self._users))
        return CycleResult(tally.result(users, self._users_read_at), self._client.calls - calls_before)

    def _failure(self, exc: ApiError) -> SourceFailure:
        if exc.reason == "auth":
            log.error("pachca_auth_failed", workspace=self.target, code=exc.code, status=exc.status,
                      hint=AUTH_HINTS.get(exc.code, "the token may not read reminders"))
        return SourceFailure(exc.reason, str(exc))

    # --- the user directory: names, departments, tags, e-mails ----------------------------------------

    def _names_stale(self, performers: set[int]) -> bool:
        """Due every `structure_interval`, and as soon as a reminder names a performer not read before."""
        if self._users_read_at is None or self._clock() - self._users_read_at >= self.config.structure_interval:
            return True
        return bool(performers - self._users.keys() - self._unresolved)

    async def _read_names(self, performers: set[int]) -> None:
        """Walk GET /users into the directory; any failure keeps the last good one and never fails the cycle."""
        users: dict[int, PachcaUser] = {}
        try:
            async with aclosing(self._client.walk("/users", limit=USERS_PAGE_SIZE,
                                                  max_pages=self.config.max_pages)) as pages:
                async for records in pages:
                    for record in records:
                        if (user := pachca_user(record, names=self.config.names)) is not None:
                            users[user.user_id] = user
        except ApiError as exc:
            if exc.reason == "auth" and self.config.performer_names is None:
                self.names_enabled = False
                log.warning("pachca_user_names_off", workspace=self.target, code=exc.code, scope="users:read",
                            off="performer names, departments, tags, people matching",
                            hint="the token lacks users:read; set performer_names: true to keep trying")
            else:
                log.warning("pachca_user_names_failed", workspace=self.target, code=exc.code,
                            detail=exc.message, kept_users=len(self._users))
            return
        self._users = users
        self._users_read_at = self._clock()
        self._unresolved = performers - users.keys()
