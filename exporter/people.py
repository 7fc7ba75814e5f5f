"""One person across both tools: a Bitrix24 user and a Pachca user joined by e-mail. Pure: no I/O, no logs.

The collector calls `match_by_email` at render time for each configured (portal, workspace) pair:

    tasks_exporter_person_info{person="anna@example.com",portal="acme",bitrix24_user_id="15",
                               workspace="team",pachca_user_id="27"} 1
    tasks_exporter_people{portal="acme",workspace="team",state="bitrix24_only"} 12

Neither API promises that an e-mail is unique (docs/api-notes.md#org-matching-people): an e-mail that two users
carry on one side matches nobody, and everyone who carries it on either side counts as `ambiguous`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.snapshot import PachcaUser, PortalUser

LABELS = ("email", "name")  # what `person` holds: the e-mail, or the Bitrix24 display name
STATES = ("matched", "bitrix24_only", "pachca_only", "ambiguous")


def normalize_email(value: Any) -> str:
    """An e-mail as both sides compare it: trimmed and lower-cased; "" when absent or not a string."""
    return value.strip().lower() if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class PersonMatch:
    """One person: the Bitrix24 user and the Pachca user with the same e-mail."""

    person: str
    bitrix24_user_id: int
    pachca_user_id: int


@dataclass(frozen=True, slots=True)
class SharedEmail:
    """An e-mail that several users carry on one side, so it matches nobody. The e-mail itself stays out of repr."""

    side: str  # "bitrix24" | "pachca"
    user_ids: tuple[int, ...]
    email: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class PeopleMatch:
    """The join of one portal's users with one workspace's users."""

    matches: tuple[PersonMatch, ...]
    bitrix24_only: int  # Bitrix24 users without a Pachca user of the same e-mail (or without an e-mail)
    pachca_only: int  # active Pachca users without a Bitrix24 user of the same e-mail (or without an e-mail)
    ambiguous: int  # users, on both sides, whose e-mail is shared on one side
    shared: tuple[SharedEmail, ...]

    @property
    def states(self) -> dict[str, int]:
        """The `state` label values of tasks_exporter_people and their counts, in STATES order."""
        counts = (len(self.matches), self.bitrix24_only, self.pachca_only, self.ambiguous)
        return dict(zip(STATES, counts, strict=True))


def match_by_email(bitrix24: Iterable[PortalUser], pachca: Iterable[PachcaUser], *,
                   label: str = "email") -> PeopleMatch:
    """Join the two sides on their normalised e-mails; Pachca bots and deactivated users take no part.

    `label="name"` makes `person` the Bitrix24 display name; a user whose name is empty (the portal has
    `names: false`, or the API gave none) keeps the e-mail, so `person` never falls back to anything else.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    b24_users = {u.user_id: u for u in bitrix24}
    pachca_users = {u.user_id: u for u in pachca if u.active}
    b24_by = _by_email((uid, u.email) for uid, u in b24_users.items())
    pachca_by = _by_email((uid, u.email) for uid, u in pachca_users.items())
    shared = tuple(sorted(
        [SharedEmail("bitrix24", tuple(ids), email) for email, ids in b24_by.items() if len(ids) > 1]
        + [SharedEmail("pachca", tuple(ids), email) for email, ids in pachca_by.items() if len(ids) > 1],
        key=lambda s: (s.side, s.user_ids)))
    unusable = {s.email for s in shared}
    matches: list[PersonMatch] = []
    for email, ids in b24_by.items():
        if email in unusable or email not in pachca_by:
            continue
        b24_user = b24_users[ids[0]]
        person = b24_user.name.strip() if label == "name" and b24_user.name.strip() else email
        matches.append(PersonMatch(person, b24_user.user_id, pachca_by[email][0]))
    matches.sort(key=lambda m: (m.bitrix24_user_id, m.pachca_user_id))
    b24_ambiguous = _carrying(b24_by, unusable)
    pachca_ambiguous = _carrying(pachca_by, unusable)
    return PeopleMatch(
        matches=tuple(matches),
        bitrix24_only=len(b24_users) - len(matches) - b24_ambiguous,
        pachca_only=len(pachca_users) - len(matches) - pachca_ambiguous,
        ambiguous=b24_ambiguous + pachca_ambiguous,
        shared=shared,
    )


def _by_email(pairs: Iterable[tuple[int, str]]) -> dict[str, list[int]]:
    """User ids by normalised e-mail, in id order; users without an e-mail are left out."""
    grouped: dict[str, list[int]] = {}
    for uid, raw in sorted(pairs):
        email = normalize_email(raw)
        if email:
            grouped.setdefault(email, []).append(uid)
    return grouped


def _carrying(grouped: Mapping[str, Sequence[int]], emails: set[str]) -> int:
    return sum(len(ids) for email, ids in grouped.items() if email in emails)
