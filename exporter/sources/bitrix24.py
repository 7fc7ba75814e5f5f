"""One Bitrix24 collection cycle: resolve users, read every user x group x role counter set via `batch`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from exporter.config import Bitrix24Config
from exporter.errors import ApiError, SourceFailure
from exporter.org import subtree
from exporter.ratelimit import LeakyBucket, cycle_bound
from exporter.snapshot import ApiTelemetry, CounterQuery, CounterSet, PortalSnapshot, PortalUser
from exporter.sources import CycleResult
from exporter.sources.bitrix24_client import (
    BATCH_LIMIT,
    PAUSE,
    RETRY,
    RETRYABLE_COMMAND_CODES,
    BatchCall,
    BatchResult,
    Bitrix24Client,
    OperationPause,
    chunk,
    command,
)
from exporter.sources.bitrix24_structure import (
    COUNTERS_METHOD,
    Structure,
    StructureKeeper,
    StructureReader,
    org_view,
    parse_ids,
    plan_queries,
)
from exporter.sources.concurrency import all_or_none, as_they_finish
from exporter.sources.retries import RetryPolicy

# The `type` of tasks.task.counters.get for each role a config may list (config.ROLE_NAMES).
ROLES: dict[str, str] = {
    "all": "view_all",
    "responsible": "view_role_responsible",
    "accomplice": "view_role_accomplice",
    "auditor": "view_role_auditor",
    "originator": "view_role_originator",
}
PAGE_SIZE = 50
log = structlog.get_logger()


_PAIRS: dict[tuple[str, float], tuple[str, float]] = {}
_PAIRS_LIMIT = 100_000


def parse_counters(result: Any) -> CounterSet | None:
    """Counters of one tasks.task.counters.get answer; None when the webhook may not see the user.

    The key set is dynamic (current portals: expired, new_comments; older: wo_deadline, expired_soon,
    not_viewed, wait_ctrl) and numbers may arrive as strings. `[]` means no access
    (docs/api-notes.md#b24-counters-no-access).
    """
    if isinstance(result, list) and not result:
        return None
    if not isinstance(result, dict):
        raise ApiError("invalid_response", f"counters answer is {type(result).__name__}, not an object")
    if not result:
        return None
    counters: list[tuple[str, float]] = []
    for name, entry in result.items():
        raw = entry.get("counter") if isinstance(entry, dict) else entry
        value = _number(raw)
        if value is not None:
            counters.append(_shared((str(name), value)))
    return tuple(counters)


def _shared(pair: tuple[str, float]) -> tuple[str, float]:
    """One object per distinct (counter, value): most users share ("expired", 0.0) and friends."""
    found = _PAIRS.get(pair)
    if found is None:
        found = pair
        if len(_PAIRS) < _PAIRS_LIMIT:
            _PAIRS[pair] = pair
    return found


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            return None
    else:
        return None
    return value if math.isfinite(value) else None


def portal_user(uid: int, record: Mapping[str, Any], *, names: bool = True) -> PortalUser:
    """A user.get record as the snapshot keeps it; with `names: false` neither name nor e-mail is kept."""
    email = record.get("EMAIL") if names else None
    return PortalUser(uid, user_name(record) if names else "",
                      email.strip().lower() if isinstance(email, str) else "",
                      parse_ids(record.get("UF_DEPARTMENT")))


def user_name(record: Mapping[str, Any]) -> str:
    parts = [record.get("NAME"), record.get("LAST_NAME")]
    name = " ".join(str(p).strip() for p in parts if isinstance(p, str) and p.strip())
    if not name:
        email = record.get("EMAIL")
        name = str(email) if isinstance(email, str) and email else ""
    return name


def _user_id(record: Any) -> int | None:
    if not isinstance(record, dict):
        return None
    raw = record.get("ID")
    try:
        value = int(str(raw))
    except ValueError:
        return None
    return value if value > 0 else None


def _is_inactive(record: Mapping[str, Any]) -> bool:
    return record.get("ACTIVE") in (False, "N", "false", 0, "0")


@dataclass(slots=True)
class CounterFold:
    """What the counters batches of one cycle have answered so far, folded in as each batch arrives, so raw
    answers never pile up (at 5,000 users they would be ~30 MB). Indexes point into `queries`."""

    queries: Sequence[CounterQuery]
    read: dict[CounterQuery, CounterSet] = field(default_factory=dict)
    hidden: set[int] = field(default_factory=set)  # users whose counters came back as [] (no access)
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)  # index -> (code, description)
    answered: set[int] = field(default_factory=set)

    def add(self, sent: Mapping[str, int], result: BatchResult) -> None:
        """Fold in one batch answer; `sent` maps its command keys to query indexes."""
        for key, raw in result.results.items():
            i = sent.get(key)
            if i is None:
                continue
            self.answered.add(i)
            try:
                counters = parse_counters(raw)
            except ApiError as exc:
                self.errors[i] = (exc.code, exc.message)
                continue
            if counters is None:
                self.hidden.add(self.queries[i].user_id)
            else:
                self.read[self.queries[i]] = counters
        self.errors.update((sent[k], e) for k, e in result.errors.items() if k in sent)

    def missing(self, indexes: Iterable[int]) -> None:
        """Commands of `indexes` the batch answers said nothing about count as failed."""
        for i in indexes:
            if i not in self.answered and i not in self.errors:
                self.errors[i] = ("missing", "the batch answer has no entry for this command")

    def take_retryable(self) -> list[int]:
        """The commands that failed with a code worth one more pass, forgotten so that pass decides them."""
        again = sorted(i for i, (code, _) in self.errors.items() if code.upper() in RETRYABLE_COMMAND_CODES)
        for i in again:
            del self.errors[i]
            self.answered.discard(i)
        return again


class Bitrix24Source:
    """Collects one portal. Keeps the last reading of each query so a failed command keeps its value."""

    source = "bitrix24"

    def __init__(self, config: Bitrix24Config, telemetry: ApiTelemetry | None = None, *,
                 retry: RetryPolicy = RETRY, pause: OperationPause = PAUSE,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.target = config.name
        self.interval = config.interval
        self.cycle_timeout = config.cycle_timeout
        self.telemetry = ApiTelemetry() if telemetry is None else telemetry
        # public: a reload that replaces this source hands its level to the successor (LeakyBucket.take_over)
        self.bucket = LeakyBucket(config.rate_limit.requests_per_second, config.rate_limit.burst)
        self._client = Bitrix24Client(
            config.webhook_url.reveal(), self.bucket, self.telemetry, timeout=config.timeout,
            max_concurrency=config.max_concurrency, retry=retry, pause=pause, transport=transport,
        )
        self._last: dict[CounterQuery, CounterSet] = {}
        self._query_users: list[int] = []
        self._query_structure: Structure | None = None
        self._queries: list[CounterQuery] = []
        self._structure = StructureKeeper(StructureReader(self._client, config), interval=config.structure_interval,
                                          clock=clock, portal=config.name)
        self._emails_missing = False

    async def aclose(self) -> None:
        await self._client.aclose()

    def cycle_bound(self, calls: int) -> float:
        rate = self.config.rate_limit
        return cycle_bound(calls, rate.requests_per_second, rate.burst)

    async def collect(self) -> CycleResult:
        """Run one cycle; raises SourceFailure when it cannot produce a whole snapshot."""
        calls_before = self._client.calls
        self._client.operating.clear()  # the portal's window value as of this cycle, not a maximum ever seen
        try:
            users = await self._resolve_users()
            structure = await self._structure.current()  # re-read only when due; a failure keeps the last
            users = self._monitored(users, structure)
            counters, hidden, failed = await self._read_counters(users, structure)
        except ApiError as exc:
            raise SourceFailure(exc.reason, str(exc)) from None
        snapshot = PortalSnapshot(
            users=tuple(users), counters=counters, hidden_users=hidden, failed_commands=failed,
            operating_seconds=dict(self._client.operating), org=org_view(users, structure, self._queries),
            structure=self._structure.status,
        )
        return CycleResult(snapshot, self._client.calls - calls_before)

    # --- users ----------------------------------------------------------------------------------

    async def _resolve_users(self) -> list[PortalUser]:
        if self.config.users is not None:
            users = await self._named(self.config.users)
        else:
            users = await self._active_employees()
        self._check_emails(users)
        return users

    def _monitored(self, users: list[PortalUser], structure: Structure) -> list[PortalUser]:
        """`include_departments` (their subtrees, as far as the tree is known) and `exclude_users`."""
        config = self.config
        if config.include_departments:
            wanted = subtree(config.include_departments, structure.departments or {})
            users = [u for u in users if wanted.intersection(u.departments)]
        if config.exclude_users:
            excluded = set(config.exclude_users)
            users = [u for u in users if u.user_id not in excluded]
        return users

    def _check_emails(self, users: list[PortalUser]) -> None:
        """user.get shows EMAIL only with scope user or user_basic (docs/api-notes.md#org-user-get-fields):
        say so once when no user has one."""
        missing = self.config.names and bool(users) and not any(u.email for u in users)
        if missing and not self._emails_missing:
            log.warning("bitrix24_feature_off", portal=self.target, feature="email", scope="user",
                        hint="no user.get record has EMAIL; give the webhook the scope user or user_basic")
        self._emails_missing = missing

    async def _active_employees(self) -> list[PortalUser]:
        """Every active employee: the first page directly, the rest as batched `start` offsets."""
        params: dict[str, Any] = {"FILTER": {"ACTIVE": True}, "start": 0}
        first = await self._client.call("user.get", params)
        records = list(_records(first))
        total, nxt = first.get("total"), first.get("next")
        if isinstance(nxt, int) and not isinstance(nxt, bool) and nxt > 0:
            if isinstance(total, int) and not isinstance(total, bool) and total > nxt:
                records.extend(await self._pages_batched(params, nxt, total))
            else:
                records.extend(await self._pages_following(params, nxt))
        users: dict[int, PortalUser] = {}
        for record in records:
            uid = _user_id(record)
            if uid is not None and not _is_inactive(record):
                users[uid] = portal_user(uid, record, names=self.config.names)
        return sorted(users.values(), key=lambda u: u.user_id)

    async def _pages_batched(self, params: dict[str, Any], first: int, total: int) -> list[Any]:
        """Pages after the first, 50 pages per batch call. A page the batch did not answer in full
        (a portal or proxy that refuses user.get inside batch, or reads the filter differently) is
        asked for directly, so no user is lost."""
        starts = list(range(first, total, PAGE_SIZE))
        commands = {f"p{start}": command("user.get", {**params, "start": start}) for start in starts}
        answered: dict[str, Any] = {}
        try:
            for result in await all_or_none(self._client.batch(call, pause_key="user.get")
                                            for call in chunk(commands)):
                answered.update(result.results)
        except ApiError as exc:
            if exc.reason == "auth":
                raise
            log.info("bitrix24_user_pages_batch_refused", portal=self.target, code=exc.code)
        records: list[Any] = []
        for start in starts:
            page = answered.get(f"p{start}")
            if not isinstance(page, list) or len(page) < min(PAGE_SIZE, total - start):
                page = _records(await self._client.call("user.get", {**params, "start": start}))
            records.extend(page)
        return records

    async def _pages_following(self, params: dict[str, Any], start: int) -> list[Any]:
        records: list[Any] = []
        seen: set[int] = set()
        while start not in seen:
            seen.add(start)
            page = await self._client.call("user.get", {**params, "start": start})
            records.extend(_records(page))
            nxt = page.get("next")
            if not isinstance(nxt, int) or isinstance(nxt, bool) or nxt <= start:
                break
            start = nxt
        return records

    async def _named(self, ids: tuple[int, ...]) -> list[PortalUser]:
        """An explicit user list: names come from user.get by ID; a failed lookup leaves the name empty."""
        commands = {f"u{uid}": command("user.get", {"ID": uid}) for uid in ids}
        found: dict[int, PortalUser] = {}
        try:
            for result in await all_or_none(self._client.batch(c, pause_key="user.get")
                                            for c in chunk(commands)):
                for key, page in result.results.items():
                    for record in page if isinstance(page, list) else []:
                        if _user_id(record) == int(key[1:]):
                            found[int(key[1:])] = portal_user(int(key[1:]), record, names=self.config.names)
        except ApiError as exc:
            if exc.reason == "auth":
                raise
            log.warning("bitrix24_user_names_failed", portal=self.target, code=exc.code)
        return [found.get(uid, PortalUser(uid, "")) for uid in ids]

    # --- counters -------------------------------------------------------------------------------

    async def _read_counters(self, users: list[PortalUser], structure: Structure
                             ) -> tuple[dict[CounterQuery, CounterSet], int, int]:
        """Every user x group x role counter set; a failed command keeps its last good values."""
        queries = self._queries_for(users, structure)
        fold = CounterFold(queries)
        await self._fold(fold, range(len(queries)))
        retry = fold.take_retryable()
        if retry:
            await self._fold(fold, retry)
        read = fold.read
        for i, (code, description) in fold.errors.items():
            log.debug("bitrix24_command_failed", portal=self.target, command=queries[i], code=code,
                      description=description)
            if queries[i] in self._last:
                read[queries[i]] = self._last[queries[i]]
        # in query order, so /metrics lists series the same way every cycle
        fresh = {q: read[q] for q in queries if q in read}
        self._last = fresh
        return fresh, len(fold.hidden), len(fold.errors)

    def _queries_for(self, users: list[PortalUser], structure: Structure) -> list[CounterQuery]:
        """The cycle's queries; the previous cycle's objects when the users and structure are the same (they
        key the snapshot still being served, so a large portal does not hold two sets of them)."""
        ids = [u.user_id for u in users]
        if ids != self._query_users or structure is not self._query_structure:
            self._query_users = ids
            self._query_structure = structure
            self._queries = plan_queries(ids, structure, self.config.roles, auto=self.config.groups is None)
        return self._queries

    async def _fold(self, fold: CounterFold, indexes: Sequence[int]) -> None:
        """Send fold.queries[i] for every i in batches and fold each answer in as it arrives."""
        parts = [indexes[n:n + BATCH_LIMIT] for n in range(0, len(indexes), BATCH_LIMIT)]
        async with aclosing(as_they_finish(self._send(fold.queries, part) for part in parts)) as batches:
            async for sent, result in batches:
                fold.add(sent, result)
        fold.missing(indexes)

    async def _send(self, queries: Sequence[CounterQuery], indexes: Sequence[int]
                    ) -> tuple[dict[str, int], BatchResult]:
        """One batch; its command strings are made here, so only the batches in flight hold theirs."""
        sent = {f"c{i}": i for i in indexes}
        call = BatchCall({f"c{i}": command(COUNTERS_METHOD, {"userId": queries[i].user_id,
                                                            "groupId": queries[i].group_id,
                                                            "type": ROLES[queries[i].role]})
                          for i in indexes})
        return sent, await self._client.batch(call, pause_key=COUNTERS_METHOD)


def _records(body: Any) -> list[Any]:
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, list):
        raise ApiError("invalid_response", "user.get result is not a list")
    return result

