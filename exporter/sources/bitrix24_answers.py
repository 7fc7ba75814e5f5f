"""Reading a Bitrix24 portal's answers as they arrive: counter sets of tasks.task.counters.get and user.get
records (docs/api-notes.md). Kept apart from the cycle (exporter/sources/bitrix24.py), which decides what to
ask and when; what an answer means is written here once."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.errors import ApiError
from exporter.people import normalize_email
from exporter.snapshot import CounterQuery, CounterSet, PortalUser
from exporter.sources.bitrix24_client import RETRYABLE_COMMAND_CODES, BatchResult
from exporter.sources.bitrix24_structure import parse_id, parse_ids

_PAIRS: dict[tuple[str, float], tuple[str, float]] = {}
_PAIRS_LIMIT = 100_000


def parse_counters(result: Any) -> CounterSet | None:
    """Counters of one tasks.task.counters.get answer; None when the webhook may not see the user.

    The key set is dynamic (current portals: expired, new_comments, from 2026 mentioned; older: wo_deadline,
    expired_soon, not_viewed, wait_ctrl) and numbers may arrive as strings. `[]` means no access
    (docs/api-notes.md#b24-counters-no-access). A per-role `total` (expired + new_comments, which the REST
    layer normally lifts out of the result) is not a counter of its own (docs/api-notes.md#b24-counters-keys).
    """
    if isinstance(result, list) and not result:
        return None
    if not isinstance(result, dict):
        raise ApiError("invalid_response", f"counters answer is {type(result).__name__}, not an object")
    if not result:
        return None
    counters: list[tuple[str, float]] = []
    for name, entry in result.items():
        if name == "total":
            continue
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
    return PortalUser(uid, user_name(record) if names else "",
                      normalize_email(record.get("EMAIL")) if names else "",
                      parse_ids(record.get("UF_DEPARTMENT")))


# One user.get record as read on arrival: None for a record without an id (or, in a listing, a dismissed user)
Listed = PortalUser | None


def read_records(records: Iterable[Any], *, names: bool, employees: bool,
                 known: Mapping[int, PortalUser] | None = None) -> list[Listed]:
    """user.get records as the snapshot keeps them, one entry per record, read the moment they arrive: with
    scope `user` a record has 18 fields (~7 KB decoded; ~34 MB at 5,000 users, were they held until the last
    page is in). `employees`: a dismissed or non-employee (extranet) user reads as None, as in a listing, in
    case a portal ignored the filter. A user unchanged since the last cycle is that cycle's object (`known`),
    so the snapshot being served and the next one share it."""
    listed: list[Listed] = []
    for record in records:
        uid = _user_id(record)
        if uid is None or (employees and (_is_inactive(record) or _is_not_employee(record))):
            listed.append(None)
            continue
        user = portal_user(uid, record, names=names)
        before = known.get(uid) if known else None
        listed.append(before if before == user else user)
    return listed


def user_name(record: Mapping[str, Any]) -> str:
    parts = [record.get("NAME"), record.get("LAST_NAME")]
    name = " ".join(str(p).strip() for p in parts if isinstance(p, str) and p.strip())
    if not name:
        email = record.get("EMAIL")
        name = str(email) if isinstance(email, str) and email else ""
    return name


def _user_id(record: Any) -> int | None:
    """A user.get record's ID, read like every other id (a string on live portals)."""
    return parse_id(record.get("ID")) if isinstance(record, dict) else None


def _is_inactive(record: Mapping[str, Any]) -> bool:
    return record.get("ACTIVE") in (False, "N", "false", 0, "0")


def _is_not_employee(record: Mapping[str, Any]) -> bool:
    """USER_TYPE says extranet (or email, bot...); a record without it (no intranet module) counts as one."""
    kind = record.get("USER_TYPE")
    return isinstance(kind, str) and kind.strip().lower() not in ("", "employee")


@dataclass(slots=True)
class CounterFold:
    """What the counters commands of one cycle have answered so far, folded in as each batch arrives, so raw
    answers never pile up (at 5,000 users they would be ~30 MB). Keyed by query: a cycle may send the previous
    cycle's queries first and its own plan's missing ones after, and keeps only what its plan asks."""

    read: dict[CounterQuery, CounterSet] = field(default_factory=dict)
    hidden: set[CounterQuery] = field(default_factory=set)  # answered [] (the webhook may not see the user)
    errors: dict[CounterQuery, tuple[str, str]] = field(default_factory=dict)  # -> (code, description)
    # one object per distinct counter set: 25,000 queries of a 5,000-user portal answer ~120 different ones
    sets: dict[CounterSet, CounterSet] = field(default_factory=dict)

    def add(self, sent: Mapping[str, CounterQuery], result: BatchResult) -> None:
        """Fold in one batch answer; `sent` maps its counters command keys to their queries."""
        for key, raw in result.results.items():
            query = sent.get(key)
            if query is None:
                continue
            try:
                counters = parse_counters(raw)
            except ApiError as exc:
                self.errors[query] = (exc.code, exc.message)
                continue
            if counters is None:
                self.hidden.add(query)
            else:
                self.read[query] = self.sets.setdefault(counters, counters)
        self.errors.update((sent[k], e) for k, e in result.errors.items() if k in sent)

    def settled(self, query: CounterQuery) -> bool:
        return query in self.read or query in self.hidden or query in self.errors

    def missing(self, queries: Iterable[CounterQuery]) -> None:
        """Commands the batch answers said nothing about count as failed."""
        for query in queries:
            if not self.settled(query):
                self.errors[query] = ("missing", "the batch answer has no entry for this command")

    def take_retryable(self, among: Iterable[CounterQuery]) -> list[CounterQuery]:
        """Those of `among` that failed with a code worth one more pass, forgotten so that pass decides them."""
        again = [q for q in among if q in self.errors and self.errors[q][0].upper() in RETRYABLE_COMMAND_CODES]
        for query in again:
            del self.errors[query]
        return again


def distinct_users(users: Iterable[Listed]) -> list[PortalUser]:
    """A listing's users by id (a later page's record of the same user wins), without the records read as None."""
    found = {user.user_id: user for user in users if user is not None}
    return sorted(found.values(), key=lambda u: u.user_id)

