"""YAML + environment -> frozen, typed config. Every problem is one line that names its key.

Each key is one field below: its type and default are the field's, its parser and doc the `key(...)` metadata
(see exporter/schema.py). docs/configuration.md is rendered from these declarations.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter.errors import ConfigError
from exporter.kinds import (
    DURATION,
    LABEL,
    POSITIVE_NUMBER,
    URL,
    check_url,
    each,
    integer,
    items,
    one_of,
    sections,
    show_list,
    subset,
)
from exporter.kinds import parse_duration as parse_duration
from exporter.schema import Invalid, Kind, Reader, key, kind_of, parse_document, read_yaml, section
from exporter.schema import Secret as Secret

# The roles a user may list; the Bitrix24 API value of each lives with the source (sources/bitrix24.py).
ROLE_NAMES = ("all", "responsible", "accomplice", "auditor", "originator")
PACHCA_DEFAULT_URL = "https://api.pachca.com/api/shared/v1"
_WEBHOOK_PATH = re.compile(r"(?P<base>.*/rest)/(?P<user>\d+)/(?P<secret>[^/]+)/?")


@dataclass(frozen=True, slots=True)
class WebhookUrl:
    """An incoming webhook address, https://PORTAL/rest/USER_ID/SECRET/, split in this one place."""

    base: str  # https://PORTAL/rest: safe to show
    user_id: int
    secret: str

    @classmethod
    def parse(cls, url: str) -> WebhookUrl | None:
        parts = urlsplit(url)
        match = _WEBHOOK_PATH.fullmatch(parts.path)
        if match is None:
            return None
        return cls(f"{parts.scheme}://{parts.netloc}{match['base']}", int(match["user"]), match["secret"])

    @property
    def masked(self) -> str:
        return f"{self.base}/{self.user_id}/***/"


def _webhook(reader: Reader, path: str, text: str) -> Secret:
    check_url(reader, path, text)
    if WebhookUrl.parse(text) is None:
        raise Invalid("must look like https://PORTAL/rest/USER_ID/SECRET/ (the incoming webhook address)")
    return Secret(text)


def _token(_reader: Reader, _path: str, text: str) -> Secret:
    return Secret(text)


_USER_ID = integer(1)


def _auto_ids(noun: str, item: Kind[int], hint: str = "") -> Kind[tuple[int, ...] | None]:
    """`auto` (None), or a non-empty list of `noun` ids, repeats dropped, order kept."""
    def parse(reader: Reader, path: str, raw: Any) -> tuple[int, ...] | None:
        if raw == "auto":
            return None
        if not isinstance(raw, list):
            raise Invalid(f"must be auto or a list of {noun} ids, got {kind_of(raw)}")
        if not raw:
            raise Invalid(f"is empty; use auto or list at least one {noun} id{hint}")
        return tuple(dict.fromkeys(items(reader, path, raw, item)))

    return Kind(parse, f"`auto` or list of {noun} ids", lambda v: "auto" if v is None else show_list(v))


def _auto_bool(_reader: Reader, _path: str, raw: Any) -> bool | None:
    if raw == "auto":
        return None
    if not isinstance(raw, bool):
        raise Invalid(f"must be auto, true or false, got {raw!r}")
    return raw


def _ids(reader: Reader, path: str, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise Invalid(f"must be a list of ids, got {kind_of(raw)}")
    return tuple(dict.fromkeys(items(reader, path, raw, _USER_ID)))


def _flag(_reader: Reader, _path: str, raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise Invalid(f"must be true or false, got {raw!r}")
    return raw


GROUPS = _auto_ids("workgroup", integer(0), " (0: all groups)")
FLAG: Kind[bool] = Kind(_flag, "`true` or `false`", lambda v: str(v).lower())
IDS: Kind[tuple[int, ...]] = Kind(_ids, "list of ids", show_list)
WEBHOOK: Kind[Secret] = Kind(_webhook, "secret URL https://PORTAL/rest/USER_ID/SECRET/")
TOKEN: Kind[Secret] = Kind(_token, "secret text")
USERS = _auto_ids("user", _USER_ID)
AUTO_BOOL: Kind[bool | None] = Kind(_auto_bool, "`auto`, `true` or `false`",
                                    lambda v: "auto" if v is None else str(v).lower())


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Client-side leaky bucket that mirrors the portal's (2 req/s, burst 50 on plain plans)."""

    requests_per_second: float = field(default=2.0, metadata=key(
        POSITIVE_NUMBER, "Steady request rate the portal allows (Enterprise plans: 5)."))
    burst: int = field(default=50, metadata=key(
        integer(1), "Requests the portal allows at once before pacing (Enterprise plans: 250)."))


@dataclass(frozen=True, slots=True)
class Bitrix24Config:
    """One Bitrix24 portal (a `bitrix24` entry)."""

    name: str = field(metadata=key(
        LABEL, "The `portal` label on every series of this portal.", default_host_of="webhook_url"))
    webhook_url: Secret = field(metadata=key(
        WEBHOOK, "Incoming webhook with scopes `task` and `user` (`department` for the company structure, "
        "`sonet_group` for workgroups). Reading other users' counters needs an administrator's webhook.",
        secret=True))
    users: tuple[int, ...] | None = field(default=None, metadata=key(
        USERS, "Whose counters to read; `auto`: every active employee, re-read each cycle."))
    groups: tuple[int, ...] | None = field(default=(0,), metadata=key(
        GROUPS, "Workgroup ids to read counters for, for every monitored user; 0: all groups summed. `auto`: "
        "group 0 for every user, plus every active, not archived workgroup and project the webhook may see, "
        "for its owner, moderators and members only (scope `sonet_group`)."))
    max_groups: int = field(default=200, metadata=key(
        integer(1), "With `groups: auto`: read at most this many workgroups (lowest ids first); the rest are "
        "left out with a warning."))
    departments: bool = field(default=True, metadata=key(
        FLAG, "Read the company structure (scope `department`): `bitrix24_department_info` and "
        "`bitrix24_user_department`."))
    include_departments: tuple[int, ...] = field(default=(), metadata=key(
        IDS, "Monitor only the users of these departments and of every department below them; []: everyone."))
    exclude_users: tuple[int, ...] = field(default=(), metadata=key(IDS, "Never monitor these users."))
    names: bool = field(default=True, metadata=key(
        FLAG, "`false`: no personal names on info series (`name=\"\"`) and no e-mails kept; ids only. "
        "Department and workgroup names stay."))
    structure_interval: float = field(default=3600.0, metadata=key(
        DURATION, "How often to re-read departments, workgroups and their members."))
    roles: tuple[str, ...] = field(default=ROLE_NAMES, metadata=key(
        subset(ROLE_NAMES, "role"), "Roles to read counters for (the `role` label)."))
    interval: float = field(default=60.0, metadata=key(
        DURATION, "How often to collect; one cycle needs users x groups x roles / 50 batch requests (with "
        "`groups: auto`, users x roles plus members x roles summed over the groups, / 50)."))
    timeout: float = field(default=10.0, metadata=key(
        DURATION, "Timeout of one HTTP request, from sending to the last byte of the answer "
        "(rate-limit waits excluded)."))
    cycle_timeout: float = field(default=900.0, metadata=key(DURATION, "Deadline of a whole cycle."))
    max_concurrency: int = field(default=16, metadata=key(
        integer(1), "Requests in flight at once (all of them still pass the rate limit)."))
    rate_limit: RateLimit = field(default_factory=RateLimit, metadata=key(
        section(RateLimit), "The portal's leaky bucket, mirrored on our side."))

    @property
    def masked_url(self) -> str:
        webhook = WebhookUrl.parse(self.webhook_url.reveal())
        return webhook.masked if webhook else "***"

    @property
    def secrets(self) -> tuple[str, ...]:
        """What the logs must mask: the whole URL and its secret path segment."""
        webhook = WebhookUrl.parse(self.webhook_url.reveal())
        return (self.webhook_url.reveal(), *([webhook.secret] if webhook else []))


@dataclass(frozen=True, slots=True)
class PachcaConfig:
    """One Pachca workspace (a `pachca` entry)."""

    name: str = field(metadata=key(
        LABEL, "The `workspace` label on every series of this workspace.", default_host_of="base_url"))
    token: Secret = field(metadata=key(
        TOKEN, "Access token with scope `tasks:read`, and `users:read` for performer names, departments, "
        "tags and `people`.", secret=True))
    base_url: str = field(default=PACHCA_DEFAULT_URL, metadata=key(URL, "The Pachca API's address."))
    interval: float = field(default=60.0, metadata=key(DURATION, "How often to collect."))
    due_soon: float = field(default=86400.0, metadata=key(
        DURATION, "Open reminders due within this window count as due soon."))
    timeout: float = field(default=10.0, metadata=key(
        DURATION, "Timeout of one HTTP request, from sending to the last byte of the answer "
        "(rate-limit waits excluded)."))
    cycle_timeout: float = field(default=600.0, metadata=key(DURATION, "Deadline of a whole cycle."))
    page_size: int = field(default=50, metadata=key(integer(1, 50), "Reminders per page (the API allows 1-50)."))
    max_pages: int = field(default=2000, metadata=key(
        integer(1), "Hard cap on pages per cycle; logged when hit."))
    performer_names: bool | None = field(default=None, metadata=key(
        AUTO_BOOL, "Read GET /users: performer names, departments, employee tags and the e-mails `people` "
        "matches on; `auto`: try, and turn all of that off if the token lacks `users:read`."))
    names: bool = field(default=True, metadata=key(
        FLAG, "`false`: `pachca_user_info` carries `name=\"\"` (ids only); departments and tags stay."))
    structure_interval: float = field(default=3600.0, metadata=key(
        DURATION, "How often to re-read GET /users (names, departments, tags, e-mails); sooner when a "
        "reminder names a performer it does not know."))

    @property
    def secrets(self) -> tuple[str, ...]:
        """What the logs must mask."""
        return (self.token.reveal(),)


@dataclass(frozen=True, slots=True)
class PeoplePair:
    """A portal and a workspace whose users are matched (a `people.pairs` entry)."""

    portal: str = field(metadata=key(LABEL, "The `name` of a `bitrix24` entry."))
    workspace: str = field(metadata=key(LABEL, "The `name` of a `pachca` entry."))


def _pairs(reader: Reader, path: str, raw: Any) -> tuple[PeoplePair, ...]:
    if not isinstance(raw, list) or not raw:
        raise Invalid(f"must be a non-empty list of {{portal, workspace}} mappings, got {kind_of(raw)}")
    pairs, all_good = each(reader, [(f"{path}[{i}]", entry) for i, entry in enumerate(raw)], section(PeoplePair))
    for pair in sorted({p for p in pairs if pairs.count(p) > 1}, key=lambda p: (p.portal, p.workspace)):
        reader.fail(path, f"the pair {pair.portal!r} / {pair.workspace!r} is listed twice")
    if not all_good:
        raise Invalid()
    return tuple(pairs)


PAIRS: Kind[tuple[PeoplePair, ...] | None] = Kind(
    _pairs, "list of mappings `{portal, workspace}`",
    lambda v: "every portal x every workspace" if v is None else ", ".join(f"{p.portal}/{p.workspace}" for p in v),
    PeoplePair)


@dataclass(frozen=True, slots=True)
class PeopleConfig:
    """One person across both tools (the `people` section): who is who in Bitrix24 and in Pachca."""

    match: str = field(metadata=key(
        one_of(("email",)), "How one person is recognised: `email`, equal after trimming and lower-casing "
        "(Bitrix24 needs the `user` or `user_basic` scope for e-mails, Pachca `users:read`)."))
    label: str = field(default="email", metadata=key(
        one_of(("email", "name")), "What the `person` label holds: the e-mail, or `name`, the Bitrix24 display "
        "name (the e-mail for a portal with `names: false`)."))
    pairs: tuple[PeoplePair, ...] | None = field(default=None, metadata=key(
        PAIRS, "Which portal's users are matched with which workspace's users."))


_PEOPLE = section(PeopleConfig)
PEOPLE: Kind[PeopleConfig | None] = Kind(_PEOPLE.parse, _PEOPLE.shape, lambda v: "off" if v is None else "see below",
                                         PeopleConfig)


def _check_people(config: Config) -> list[str]:
    """The `people` problems only the whole file shows: pairs naming no entry, workspaces that never read users."""
    people = config.people
    if people is None:
        return []
    portals = [c.name for c in config.bitrix24]
    workspaces = {c.name: c for c in config.pachca}
    if not portals or not workspaces:
        return ["people: needs at least one bitrix24 portal and one pachca workspace"]
    problems: list[str] = []
    for i, pair in enumerate(people.pairs or ()):
        if pair.portal not in portals:
            problems.append(f"people.pairs[{i}].portal: no bitrix24 entry is named {pair.portal!r} "
                            f"(known: {', '.join(portals)})")
        if pair.workspace not in workspaces:
            problems.append(f"people.pairs[{i}].workspace: no pachca entry is named {pair.workspace!r} "
                            f"(known: {', '.join(workspaces)})")
        elif workspaces[pair.workspace].performer_names is False:
            problems.append(f"people.pairs[{i}].workspace: {pair.workspace!r} has performer_names: false, "
                            "so its users (and their e-mails) are never read")
    if people.pairs is None:
        problems += [f"people: pachca workspace {name!r} has performer_names: false, so its users (and their "
                     "e-mails) are never read; list `pairs` without it" for name, c in workspaces.items()
                     if c.performer_names is False]
    return problems


@dataclass(frozen=True, slots=True)
class Config:
    """The whole config file."""

    bitrix24: tuple[Bitrix24Config, ...] = field(default=(), metadata=key(
        sections(Bitrix24Config, unique="name"), "Bitrix24 portals to read task counters from."))
    pachca: tuple[PachcaConfig, ...] = field(default=(), metadata=key(
        sections(PachcaConfig, unique="name"), "Pachca workspaces to read reminders from."))
    people: PeopleConfig | None = field(default=None, metadata=key(
        PEOPLE, "Off unless present: match each Bitrix24 user with a Pachca user "
        "(`tasks_exporter_person_info`, `tasks_exporter_people`)."))
    warnings: tuple[str, ...] = ()  # not a key: what parsing noticed but accepted


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem found."""
    return parse_config(read_yaml(path, f"config file {path}"), os.environ if env is None else env)


def parse_config(raw: Any, env: Mapping[str, str]) -> Config:
    """Validate an already-parsed YAML document."""
    config, warnings = parse_document(raw, Config, env)
    problems = _check_people(config)
    if problems:
        raise ConfigError(problems)
    return replace(config, warnings=warnings)
