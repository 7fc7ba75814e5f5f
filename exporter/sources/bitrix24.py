"""One Bitrix24 collection cycle: resolve users, read every user x group x role counter set via `batch`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import structlog

from exporter.config import Bitrix24Config
from exporter.errors import ApiError, SourceFailure
from exporter.org import PortalOrg, subtree
from exporter.ratelimit import LeakyBucket, cycle_bound
from exporter.snapshot import ApiTelemetry, CounterQuery, CounterSet, PortalSnapshot, PortalUser
from exporter.sources import CycleResult
from exporter.sources.bitrix24_answers import CounterFold
from exporter.sources.bitrix24_client import (
    BATCH_LIMIT,
    PAUSE,
    RETRY,
    BatchCall,
    BatchResult,
    Bitrix24Client,
    OperationPause,
    failure_reason,
)
from exporter.sources.bitrix24_listing import UserListing
from exporter.sources.bitrix24_pages import read_batch
from exporter.sources.bitrix24_structure import (
    COUNTERS_METHOD,
    Structure,
    StructureKeeper,
    StructureReader,
    org_view,
    plan_queries,
    unavailable,
)
from exporter.sources.concurrency import as_they_finish
from exporter.sources.retries import RetryPolicy

# The `type` of tasks.task.counters.get for each role a config may list (config.ROLE_NAMES).
ROLES: dict[str, str] = {
    "all": "view_all",
    "responsible": "view_role_responsible",
    "accomplice": "view_role_accomplice",
    "auditor": "view_role_auditor",
    "originator": "view_role_originator",
}
# Idle connections outlive the interval by this much, so that each cycle reuses the last one's: a steady-state
# cycle then opens no connection (on a real network the TCP and TLS handshakes are two or three round trips
# before the first answer, and CPU on both sides for each of its ~11 requests)
KEEPALIVE_MARGIN = 15.0
# user.get pages a pipelined wave puts in one batch (the rest of it carries counters): 50 pages of 18-field
# records are one 1.2 MB answer that decodes to ~17 MB at once; 10 decode to ~3.5 MB, at no extra call
EXTRA_PER_BATCH = 10
log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class OrgOf:
    """An org view and what it was made of."""

    users: list[PortalUser]
    structure: Structure
    queries: list[CounterQuery]
    org: PortalOrg


class Bitrix24Source:
    """Collects one portal. Keeps the last reading of each query so a failed command keeps its value.

    The first cycle lists users (and reads the structure) before it asks for counters. Every later cycle is
    pipelined: the user listing (every page the last `total` implies) travels in the same wave of batches as
    the counters of the users known from the last cycle, with any structure refresh that is due running
    alongside; users the listing shows for the first time get their counters in one more wave, and counters
    of users who left are discarded. A 100-user portal's steady-state cycle is one round trip.
    """

    source = "bitrix24"

    def __init__(self, config: Bitrix24Config, telemetry: ApiTelemetry | None = None, *,
                 retry: RetryPolicy = RETRY, pause: OperationPause = PAUSE,
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
            max_concurrency=config.max_concurrency, retry=retry, pause=pause,
            keepalive=config.interval + KEEPALIVE_MARGIN,
        )
        self._last: dict[CounterQuery, CounterSet] = {}
        self._snapshot: PortalSnapshot | None = None  # the last one this source made
        self._query_users: list[int] = []
        self._query_structure: Structure | None = None
        self._queries: list[CounterQuery] = []
        self._structure = StructureKeeper(StructureReader(self._client, config), interval=config.structure_interval,
                                          clock=clock, portal=config.name)
        self._users = UserListing(self._client, config)
        self._steady = False  # a cycle has succeeded: its users and queries are known
        self._org: OrgOf | None = None

    async def aclose(self) -> None:
        await self._client.aclose()

    def cycle_bound(self, calls: int) -> float:
        rate = self.config.rate_limit
        return cycle_bound(calls, rate.requests_per_second, rate.burst)

    async def collect(self) -> CycleResult:
        """Run one cycle; raises SourceFailure when it cannot produce a whole snapshot."""
        calls_before = self._client.calls
        self._client.operating.clear()  # the portal's window value as of this cycle, not a maximum ever seen
        fold = CounterFold()
        try:
            if self._steady:
                users, structure = await self._pipelined(fold)
            else:
                users = await self._users.every()  # first: a portal that refuses the webhook costs one call
                structure = await self._structure.current()
            self._users.check_emails(users)
            users = self._monitored(users, structure)
            counters, hidden, failed = await self._read_counters(fold, users, structure)
        except ApiError as exc:
            raise SourceFailure(exc.reason, str(exc)) from None
        self._steady = True
        self._users.known = {u.user_id: u for u in users}
        snapshot = PortalSnapshot(
            users=tuple(users), counters=counters, hidden_users=hidden, failed_commands=failed,
            operating_seconds=dict(self._client.operating), org=self._org_view(users, structure),
            structure=self._structure.status,
        )
        self._snapshot = snapshot = _unchanged_kept(snapshot, self._snapshot)
        return CycleResult(snapshot, self._client.calls - calls_before)

    def _org_view(self, users: list[PortalUser], structure: Structure) -> PortalOrg:
        """The last cycle's org view when it was made of the same structure, queries and users in the same
        departments: the snapshot being served and the next then share it (at 5,000 users, 23,500
        user-department links)."""
        last = self._org
        if last is not None and last.structure is structure and last.queries is self._queries \
                and len(last.users) == len(users) and all(
                    a is b or (a.user_id == b.user_id and a.departments == b.departments)
                    for a, b in zip(last.users, users, strict=True)):
            return last.org
        org = org_view(users, structure, self._queries)
        self._org = OrgOf(users, structure, self._queries, org)
        return org

    async def _pipelined(self, fold: CounterFold) -> tuple[list[PortalUser], Structure]:
        """The listing and the known users' counters in one wave, the structure refresh (when due) alongside."""
        listing = self._users.commands()

        async def listed() -> list[PortalUser]:
            # the wave is made here, in the task that awaits it: made outside, a cycle cancelled before this
            # task began would leave it to the garbage collector, never awaited
            wave = self._wave(fold, self._queries, listing, self._users.on_arrival)
            if listing:
                return await self._users.from_wave(await wave)
            # no `total` to plan pages by, or user.get refused inside batch: list directly, meanwhile
            return (await both(self._users.every(), wave))[0]
        return await both(listed(), self._structure.current())

    # --- users ----------------------------------------------------------------------------------

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

    # --- counters -------------------------------------------------------------------------------

    async def _read_counters(self, fold: CounterFold, users: list[PortalUser], structure: Structure
                             ) -> tuple[dict[CounterQuery, CounterSet], int, int]:
        """Every user x group x role counter set of this cycle's plan: what `fold` lacks (all of it in a first
        cycle; new users' and new memberships' in a pipelined one) in one more wave, and one more pass for
        commands that failed with a retryable code. A failed command keeps its last good values."""
        plan = self._queries_for(users, structure)
        retried: set[CounterQuery] = set()
        for _ in range(3):
            again = fold.take_retryable(q for q in plan if q not in retried)
            retried.update(again)
            todo = [q for q in plan if not fold.settled(q)]
            if not todo:
                break
            await self._wave(fold, todo, {})
        _check_refused(fold, plan)
        read: dict[CounterQuery, CounterSet] = {}
        failed = 0
        for query in plan:
            if query in fold.read:
                read[query] = fold.read[query]
            elif query in fold.errors:
                failed += 1
                code, description = fold.errors[query]
                log.debug("bitrix24_command_failed", portal=self.target, command=query, code=code,
                          description=description)
                if query in self._last:
                    read[query] = self._last[query]
        if read == self._last:
            read = self._last  # the same object as the last snapshot's: see _unchanged_kept
        self._last = read  # in plan order, so /metrics lists series the same way every cycle
        planned = set(plan) if fold.hidden else set()  # 1 MB at 25,000 queries: only when there is a use for it
        hidden = len({q.user_id for q in fold.hidden if q in planned})
        return read, hidden, failed

    def _queries_for(self, users: list[PortalUser], structure: Structure) -> list[CounterQuery]:
        """The cycle's queries; the previous cycle's objects when the users and structure are the same (they
        key the snapshot still being served, so a large portal does not hold two sets of them)."""
        ids = [u.user_id for u in users]
        if ids != self._query_users or structure is not self._query_structure:
            self._query_users = ids
            self._query_structure = structure
            self._queries = plan_queries(ids, structure, self.config.roles, auto=self.config.groups is None)
        return self._queries

    async def _wave(self, fold: CounterFold, queries: Sequence[CounterQuery], extra: Mapping[str, str],
                    read: Callable[[Any], Any] = lambda answer: answer) -> BatchResult:
        """`extra` commands in the first batches, up to EXTRA_PER_BATCH each, the rest of every batch counters
        commands, 50 to a batch (as few batches as the commands need), as many at once as the client has slots
        (its bucket paces them; a batch is made when it starts); counters are folded in as each batch arrives,
        the answers to `extra` are returned, each as `read` made of it on arrival."""
        keys = list(extra)
        parts: list[tuple[list[str], Sequence[CounterQuery]]] = []
        named = taken = 0
        while named < len(keys) or taken < len(queries):
            names = keys[named:named + EXTRA_PER_BATCH]
            part = queries[taken:taken + BATCH_LIMIT - len(names)]
            taken += len(part)
            more = BATCH_LIMIT - len(names) - len(part)  # the counters ran out: fill up with `extra`
            names = keys[named:named + len(names) + more]
            named += len(names)
            parts.append((names, part))
        answers = BatchResult()
        sends = (self._send(extra, names, part, read) for names, part in parts)
        async with aclosing(as_they_finish(sends, at_once=self.config.max_concurrency)) as batches:
            async for sent, result in batches:
                fold.add(sent, result)
                for key in extra.keys() & result.results.keys():
                    answers.results[key] = result.results[key]
                for key in extra.keys() & result.errors.keys():
                    answers.errors[key] = result.errors[key]
                for key in extra.keys() & result.totals.keys():
                    answers.totals[key] = result.totals[key]
        fold.missing(queries)
        return answers

    async def _send(self, extra: Mapping[str, str], names: Sequence[str], queries: Sequence[CounterQuery],
                    read: Callable[[Any], Any]) -> tuple[dict[str, CounterQuery], BatchResult]:
        """One batch; its counters command strings are made here, so only the batches in flight hold theirs."""
        sent = {f"c{i}": q for i, q in enumerate(queries)}
        commands = {name: extra[name] for name in names}
        commands.update((key, counters_command(q)) for key, q in sent.items())
        pause_key = COUNTERS_METHOD if queries else "user.get"
        return sent, await read_batch(self._client, BatchCall(commands), names, read, pause_key)


def _unchanged_kept(snapshot: PortalSnapshot, last: PortalSnapshot | None) -> PortalSnapshot:
    """`snapshot` with the last snapshot's users and organisation objects where they are equal (counters are
    kept by _read_counters): a render keeps the text it made of an object while the object is the same, so a
    cycle that changed nothing there costs no render of them (exporter/incremental.py)."""
    if last is None:
        return snapshot
    users = last.users if snapshot.users == last.users else snapshot.users
    org = last.org if snapshot.org == last.org else snapshot.org
    if users is snapshot.users and org is snapshot.org:
        return snapshot
    return replace(snapshot, users=users, org=org)


A = TypeVar("A")
B = TypeVar("B")


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Two awaitables at once; when one fails (or the cycle is cancelled) the other is cancelled too."""
    one, two = asyncio.ensure_future(first), asyncio.ensure_future(second)
    try:
        return await asyncio.gather(one, two)
    finally:
        for task in (one, two):
            task.cancel()
        await asyncio.gather(one, two, return_exceptions=True)


def _check_refused(fold: CounterFold, plan: Sequence[CounterQuery]) -> None:
    """Raise when the portal refused every counters command of the plan for a reason no later cycle can get
    past: a webhook without the `task` scope (checked command by command inside a batch, so the batch itself
    succeeds) or a portal without the tasks module. A cycle that reports no counters at all is then a failure
    (up = 0, the last good data kept; docs/api-notes.md#b24-webhook-scopes), not a success with nothing in it."""
    if not plan or any(q in fold.read or q in fold.hidden for q in plan):
        return
    for query in plan:
        code, description = fold.errors.get(query, ("", ""))
        if unavailable(code) or failure_reason(code, 200) == "auth":
            raise ApiError(code, f"every counters command was refused: {description}",
                           reason=failure_reason(code, 200))


def counters_command(query: CounterQuery) -> str:
    """`command(COUNTERS_METHOD, {...})` for one query, written directly: ids and role types need no escaping,
    and urlencode was an eighth of a steady-state cycle's CPU."""
    return f"{COUNTERS_METHOD}?userId={query.user_id}&groupId={query.group_id}&type={ROLES[query.role]}"

