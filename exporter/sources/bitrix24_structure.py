"""A portal's structure, read on its own interval: the department tree, the workgroups whose counters are read,
and their members.

department.get and sonet_group.get page 50 at a time with `total`/`next`; the first page is one call and
the rest go 50 pages to a `batch`. Member lists (sonet_group.user.get, one plain list per group) and one
counters probe per group (can the webhook read tasks there at all?) go 50 commands to a `batch` too, so a
refresh of 200 workgroups costs about ten requests an hour. A missing scope turns only its feature off.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from exporter.config import Bitrix24Config, WebhookUrl
from exporter.errors import ApiError
from exporter.org import Department, Membership, PortalOrg, StructureStatus, UserDepartment, Workgroup, memberships
from exporter.snapshot import CounterQuery, PortalUser
from exporter.sources.bitrix24_client import (
    AUTH_CODES,
    RETRYABLE_COMMAND_CODES,
    BatchResult,
    Bitrix24Client,
    command,
    failure_reason,
)
from exporter.sources.bitrix24_pages import PagedList, as_is, read_batches

COUNTERS_METHOD = "tasks.task.counters.get"  # the counters commands of a cycle, and the probe of a group
# sonet_group.user.get roles (docs/api-notes.md#org-sonet-group-user-get); invited (Z) and banned (T) never count
ROLES = {"A": "owner", "E": "moderator", "K": "member"}
# codes after which a feature is off rather than broken: compared in lower case (codes mix cases,
# docs/api-notes.md#b24-error-shape)
_UNAVAILABLE = frozenset({"insufficient_scope", "error_method_not_found", "method_not_found"})
_RETRYABLE = frozenset(c.lower() for c in RETRYABLE_COMMAND_CODES) | {"missing"}
_AUTH = frozenset(c.lower() for c in AUTH_CODES) - _UNAVAILABLE
log = structlog.get_logger()

MemberList = tuple[tuple[int, str], ...]  # (user_id, role) of one workgroup
GroupsRead = tuple[tuple[int, ...], dict[int, Workgroup], dict[int, MemberList]]  # counter groups, info, members


@dataclass(frozen=True, slots=True)
class Structure:
    """One good read. `departments` None: the tree is unknown (turned off, or the scope is missing)."""

    departments: Mapping[int, Department] | None = None
    # groups (0 included when it is read) whose counters are read: every user's with explicit `groups`,
    # only their members' with `groups: auto` (group 0 is then read for everyone)
    counter_groups: tuple[int, ...] = ()
    groups: Mapping[int, Workgroup] = field(default_factory=dict)  # names and kinds, where known
    members: Mapping[int, MemberList] = field(default_factory=dict)


def unavailable(code: str) -> bool:
    return code.lower() in _UNAVAILABLE


def parse_id(raw: Any) -> int | None:
    """A positive id from an int or a numeric string; a missing, null, "", "0" or odd value is none
    (docs/api-notes.md#org-department-get)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, str):
        try:
            raw = int(raw.strip())
        except ValueError:
            return None
    return raw if isinstance(raw, int) and raw > 0 else None


def parse_ids(raw: Any) -> tuple[int, ...]:
    """UF_DEPARTMENT: a list of ints or strings; `false`, null, [] or a missing key mean none
    (docs/api-notes.md#org-user-get-fields)."""
    if isinstance(raw, dict):
        raw = list(raw.values())
    if not isinstance(raw, list):
        raw = [raw]
    return tuple(dict.fromkeys(i for i in map(parse_id, raw) if i is not None))


def parse_department(record: Any) -> Department | None:
    """A department.get record: ID and PARENT/UF_HEAD are strings, and a root or headless one lacks the key."""
    if not isinstance(record, dict) or (dept_id := parse_id(record.get("ID"))) is None:
        return None
    name = record.get("NAME")
    parent = parse_id(record.get("PARENT"))
    return Department(dept_id, name.strip() if isinstance(name, str) else "",
                      None if parent == dept_id else parent, parse_id(record.get("UF_HEAD")))


def parse_group(record: Any) -> tuple[Workgroup, bool] | None:
    """A sonet_group.get record (every value a string), and whether it is open: active and not archived."""
    if not isinstance(record, dict) or (group_id := parse_id(record.get("ID"))) is None:
        return None
    name = record.get("NAME")
    kind = "project" if _yes(record.get("PROJECT")) else "group"
    is_open = not _no(record.get("ACTIVE")) and not _yes(record.get("CLOSED"))
    return Workgroup(group_id, name.strip() if isinstance(name, str) else "", kind), is_open


def parse_members(result: Any) -> MemberList:
    """sonet_group.user.get: [{"USER_ID": "7", "ROLE": "A"}, ...]; roles other than A/E/K are dropped."""
    rows = result.values() if isinstance(result, dict) else result if isinstance(result, list) else ()
    found: dict[int, str] = {}
    for row in rows:
        if not isinstance(row, dict):
            continue
        uid, role = parse_id(row.get("USER_ID")), ROLES.get(str(row.get("ROLE", "")).strip().upper())
        if uid is not None and role is not None:
            found.setdefault(uid, role)
    return tuple(found.items())


def _yes(raw: Any) -> bool:
    return raw is True or (isinstance(raw, str) and raw.strip().upper() == "Y")


def _no(raw: Any) -> bool:
    return raw is False or (isinstance(raw, str) and raw.strip().upper() == "N")


class StructureReader:
    """Reads one portal's structure; raises ApiError when a refresh cannot complete (the caller keeps the
    last good one). Logs one warning when a feature turns off for a missing scope or a group is skipped."""

    def __init__(self, client: Bitrix24Client, config: Bitrix24Config) -> None:
        self._client = client
        self._config = config
        webhook = WebhookUrl.parse(config.webhook_url.reveal())
        self._caller = webhook.user_id if webhook else 0
        self._off: dict[str, str] = {}  # feature -> the code that turned it off
        self._skipped: set[int] = set()  # groups the webhook may not read, already warned about
        self._left_out = 0
        self._department_pages = PagedList(client, "department.get", {}, as_is, config.name)
        # upper-case parameter keys only: sonet_group.get reads nothing else (docs/api-notes.md#org-sonet-group-get)
        self._group_pages = PagedList(client, "sonet_group.get",
                                      {"ORDER": {"ID": "ASC"}, "FILTER": {"ACTIVE": "Y", "CLOSED": "N"}}, as_is,
                                      config.name)

    @property
    def needed(self) -> bool:
        groups = self._config.groups
        return self._config.departments or groups is None or any(g > 0 for g in groups)

    def initial(self) -> Structure:
        """What to use before any good read: explicit groups as configured, nothing else."""
        groups = self._config.groups
        return Structure(counter_groups=() if groups is None else groups)

    async def read(self) -> Structure:
        tree = await self._departments() if self._config.departments else None
        if self._config.groups is None:
            counter_groups, info, members = await self._auto_groups()
        else:
            counter_groups, info, members = await self._listed_groups(self._config.groups)
        return Structure(tree, counter_groups, info, members)

    # --- departments ------------------------------------------------------------------------------

    async def _departments(self) -> dict[int, Department] | None:
        try:
            records = await self._department_pages.every()
        except ApiError as exc:
            if unavailable(exc.code):
                self._turn_off("departments", "department", exc.code)
                return None
            raise
        self._turn_on("departments")
        tree: dict[int, Department] = {}
        for record in records:
            dept = parse_department(record)
            if dept is not None:
                tree.setdefault(dept.dept_id, dept)
        return tree

    # --- workgroups -------------------------------------------------------------------------------

    async def _auto_groups(self) -> GroupsRead:
        """Every open workgroup the webhook may see, capped at max_groups, each with its members."""
        try:
            records = await self._group_pages.every()
        except ApiError as exc:
            if unavailable(exc.code):
                self._turn_off("workgroups", "sonet_group", exc.code)
                return (), {}, {}
            raise
        self._turn_on("workgroups")
        found: dict[int, Workgroup] = {}
        for record in records:
            parsed = parse_group(record)
            if parsed is not None and parsed[1]:
                found.setdefault(parsed[0].group_id, parsed[0])
        ids = sorted(found)
        cap = self._config.max_groups
        left_out = max(0, len(ids) - cap)
        if left_out != self._left_out:
            self._left_out = left_out
            if left_out:
                log.warning("bitrix24_groups_left_out", portal=self._config.name, left_out=left_out,
                            max_groups=cap, hint="raise max_groups, or list the groups to read")
        ids = ids[:cap]
        answers = await self._commands({**self._member_commands(ids), **self._probes(ids)})
        readable = self._readable(ids, answers, needs=("t", "m"))
        members = {g: parse_members(answers.results[f"m{g}"]) for g in readable}
        return tuple(readable), {g: found[g] for g in readable}, members

    async def _listed_groups(self, listed: Sequence[int]) -> GroupsRead:
        """Explicit groups: names and members where the scope allows, and a probe that skips unreadable ones."""
        ids = [g for g in listed if g > 0]
        if not ids:
            return tuple(listed), {}, {}
        names = {f"g{g}": command("sonet_group.get", {"FILTER": {"ID": g}}) for g in ids}
        answers = await self._commands({**names, **self._member_commands(ids), **self._probes(ids)})
        readable = set(self._readable(ids, answers, needs=("t",)))
        info: dict[int, Workgroup] = {}
        members: dict[int, MemberList] = {}
        scope_errors = [code for key, (code, _) in answers.errors.items() if key[0] in "gm" and unavailable(code)]
        if scope_errors:
            self._turn_off("workgroup names", "sonet_group", scope_errors[0])
        else:
            self._turn_on("workgroup names")
        for g in readable:
            page = answers.results.get(f"g{g}")
            for record in page if isinstance(page, list) else []:
                parsed = parse_group(record)
                if parsed is not None and parsed[0].group_id == g:
                    info[g] = parsed[0]
            if f"m{g}" in answers.results:
                members[g] = parse_members(answers.results[f"m{g}"])
        return tuple(g for g in listed if g == 0 or g in readable), info, members

    def _member_commands(self, ids: Iterable[int]) -> dict[str, str]:
        return {f"m{g}": command("sonet_group.user.get", {"ID": g}) for g in ids}

    def _probes(self, ids: Iterable[int]) -> dict[str, str]:
        """One counters command per group, as the webhook's own user: with groupId > 0 the portal first checks
        that the *caller* may read the group's tasks (docs/api-notes.md#org-counters-non-member)."""
        return {f"t{g}": command(COUNTERS_METHOD, {"userId": self._caller, "groupId": g, "type": "view_all"})
                for g in ids}

    def _readable(self, ids: Sequence[int], answers: BatchResult, *, needs: Sequence[str]) -> list[int]:
        """The groups whose `needs` commands (t: probe, m: members, g: name) all answered; the others are
        skipped with one warning each. A transient error fails the whole refresh instead, so the last good
        structure stays rather than a group dropping out for an interval."""
        keep: list[int] = []
        for g in ids:
            problems = []
            for prefix in ("t", "m", "g"):
                key = f"{prefix}{g}"
                if key in answers.results or (key not in answers.errors and prefix not in needs):
                    continue
                code, description = answers.errors.get(key, ("missing", "the batch answer has no entry for it"))
                if code.lower() in _RETRYABLE or (prefix == "t" and code.lower() in _AUTH):
                    raise ApiError(code, f"group {g}: {description}", reason=failure_reason(code, 200))
                if prefix in needs:
                    problems.append((code, description))
            if not problems:
                keep.append(g)
                self._skipped.discard(g)
            elif g not in self._skipped:
                self._skipped.add(g)
                code, description = problems[0]
                log.warning("bitrix24_group_skipped", portal=self._config.name, group_id=g, code=code,
                            description=description, hint="the webhook's user may not read this workgroup")
        return keep

    # --- transport --------------------------------------------------------------------------------

    async def _commands(self, commands: Mapping[str, str], pause_key: str = "sonet_group.user.get") -> BatchResult:
        """Every command, 50 to a batch; the answers merged."""
        return await read_batches(self._client, commands, as_is, pause_key)

    def _turn_off(self, feature: str, scope: str, code: str) -> None:
        if feature not in self._off:
            log.warning("bitrix24_feature_off", portal=self._config.name, feature=feature, scope=scope, code=code,
                        hint=f"give the webhook the scope {scope}")
        self._off[feature] = code

    def _turn_on(self, feature: str) -> None:
        if self._off.pop(feature, None) is not None:
            log.info("bitrix24_feature_on", portal=self._config.name, feature=feature)


class StructureKeeper:
    """The last good Structure, re-read once `interval` has passed on `clock`. A refresh that fails keeps
    the last good one, counts the failure by reason and is tried again on the next cycle."""

    def __init__(self, reader: StructureReader, *, interval: float,
                 clock: Callable[[], float] = time.monotonic, portal: str = "") -> None:
        self._reader = reader
        self._interval = interval
        self._clock = clock
        self._portal = portal
        self._structure = reader.initial()
        self._due: float | None = None
        self._status = StructureStatus()

    @property
    def status(self) -> StructureStatus | None:
        return self._status if self._reader.needed else None

    async def current(self) -> Structure:
        if not self._reader.needed:
            return self._structure
        now = self._clock()
        if self._due is not None and now < self._due:
            return self._structure
        try:
            structure = await self._reader.read()
        except ApiError as exc:
            reason = exc.reason
            failures = dict(self._status.failures)
            failures[reason] = failures.get(reason, 0) + 1
            self._status = StructureStatus(False, self._status.last_success, failures)
            log.warning("bitrix24_structure_refresh_failed", portal=self._portal, reason=reason, detail=str(exc),
                        hint="the last good departments and workgroups are kept")
            return self._structure
        self._structure = structure
        self._due = now + self._interval
        self._status = StructureStatus(True, time.time(), self._status.failures)
        return structure


def plan_queries(user_ids: Sequence[int], structure: Structure, roles: Sequence[str], *,
                 auto: bool) -> list[CounterQuery]:
    """Every counters command of a cycle, user by user. Explicit groups: each for every user. `groups: auto`:
    group 0 for every user, then each workgroup the user is a member of."""
    if not auto:
        return [CounterQuery(u, g, r) for u in user_ids for g in structure.counter_groups for r in roles]
    mine: dict[int, list[int]] = {}
    for g in structure.counter_groups:
        for uid, _ in structure.members.get(g, ()):
            mine.setdefault(uid, []).append(g)
    return [CounterQuery(u, g, r) for u in user_ids for g in (0, *mine.get(u, ())) for r in roles]


def org_view(users: Sequence[PortalUser], structure: Structure, queries: Iterable[CounterQuery]) -> PortalOrg:
    """What the snapshot shows: the tree, the monitored users' departments, the groups whose counters are
    read and their monitored members."""
    tree = structure.departments
    monitored = {u.user_id for u in users}
    read = {q.group_id for q in queries} - {0}
    user_departments: list[UserDepartment] = []
    if tree is not None:
        for user in users:
            user_departments.extend(memberships(user.user_id, user.departments, tree))
    members = [Membership(g, uid, role) for g in structure.counter_groups
               for uid, role in structure.members.get(g, ()) if uid in monitored]
    return PortalOrg(
        departments=tuple(tree.values()) if tree is not None else (),
        user_departments=tuple(user_departments),
        groups=tuple(structure.groups[g] for g in sorted(read) if g in structure.groups),
        members=tuple(members),
    )
