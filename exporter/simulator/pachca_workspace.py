"""A realistic, deterministic Pachca workspace for the simulator: reminders, users and employee tags.

The users are, by default, the first employees of the Bitrix24 simulator's demo portal (same names and
mostly the same e-mails), so the two fakes can be joined by e-mail; `generate` says which differ and how.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from exporter.simulator.bitrix24_users import generate_people

KINDS = ("call", "meeting", "reminder", "event", "email")
TAG_NAMES = ("Design", "Product", "Backend", "On-call", "Managers", "Moscow office", "Interns")
FIRST_TAG_ID = 9111


@dataclass(slots=True)
class Workspace:
    reminders: list[dict[str, Any]]
    users: list[dict[str, Any]]
    tags: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Colleague:
    """Someone who also works in Bitrix24: the workspace gives them these names and (mostly) this e-mail."""

    first_name: str
    last_name: str
    email: str


_FIRST = ("Oleg", "Anna", "Ivan", "Maria", "Pavel", "Olga", "Sergey", "Elena", "Dmitry", "Irina")
_LAST = ("Petrov", "Ivanova", "Smirnov", "Kuznetsova", "Popov", "Volkova", "Sokolov", "Lebedeva")
_CONTENT = ("Call the client back", "Prepare the quarterly report", "Team sync", "Send the invoice",
            "Pick up 21 orders from the warehouse", "Review the contract", "Product demo")
_DEPARTMENTS = ("Sales", "Engineering", "Finance", "Backend", "Sales Moscow")
DEMO_PORTAL_SEED = 7  # the Bitrix24 simulator's default seed: the default workspace shares its people


def demo_colleagues(count: int, seed: int = DEMO_PORTAL_SEED) -> list[Colleague]:
    """The first `count` employees of the Bitrix24 simulator's portal built with `seed` (same names, e-mails)."""
    return [Colleague(p.name, p.last_name, p.email) for p in generate_people(count, seed=seed)]


def generate(n: int = 500, *, seed: int = 0, now: float | None = None, users: int = 12,
             colleagues: Sequence[Colleague] | None = None) -> Workspace:
    """A deterministic workspace of `n` reminders and `users` users around `now` (unix seconds).

    All kinds, priorities 1-3, ~40 % done, ~15 % without due_at, ~20 % of the dated ones all-day (due at
    midnight UTC of the day, as the API gives them), one to three performers each, due dates from a
    month ago to a month ahead with a cluster in the next day.

    User i (id 10 + i, i from 1) is `colleagues[i - 1]` of the Bitrix24 portal (by default the demo
    portal's users 1, 2, ...), with that person's names and e-mail, except: user 3's e-mail differs in
    case, user 6's has spaces around it, user 9's is not known to Bitrix24, user 11 repeats user 10's
    e-mail, and user 4 is a bot without an e-mail. Every 7th is an invitee (first/last name null), every
    5th has an empty last name, user 8 is suspended. `department` is null for i % 6 == 1 and "" for
    i % 6 == 2; tags (list_tags) come from TAG_NAMES, the last of which ("Interns") nobody carries.
    """
    rng = random.Random(seed)
    now_dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    people_of = list(colleagues) if colleagues is not None else demo_colleagues(users)
    people = [_user(i, now_dt, people_of[i - 1] if i <= len(people_of) else None) for i in range(1, users + 1)]
    if len(people) >= 11:
        people[10]["email"] = people[9]["email"]  # one e-mail shared by two Pachca users
    ids = [u["id"] for u in people]
    reminders = [_reminder(22283 + i, rng, now_dt, ids) for i in range(n)]
    tags = [{"id": FIRST_TAG_ID + k, "name": name} for k, name in enumerate(TAG_NAMES)]
    return Workspace(reminders=reminders, users=people, tags=tags)


def _user(i: int, now: datetime, colleague: Colleague | None) -> dict[str, Any]:
    uid = 10 + i
    first: str | None = colleague.first_name if colleague else _FIRST[i % len(_FIRST)]
    last: str | None = colleague.last_name if colleague else _LAST[i % len(_LAST)]
    email: str | None = colleague.email if colleague else f"user{uid}@example.com"
    bot = False
    if i % 7 == 0:
        first, last = None, None  # invited, not registered yet: only the nickname is known
    elif i % 5 == 0:
        last = ""
    if i == 3 and email:
        local, _, domain = email.partition("@")
        email = f"{local.title()}@{domain.upper()}"
    elif i == 6 and email:
        email = f"  {email} "
    elif i == 9:
        email = f"user{uid}@contractor.example.com"
    department: str | None = _DEPARTMENTS[i % len(_DEPARTMENTS)]
    if i % 6 == 1:
        department = None
    elif i % 6 == 2:
        department = ""
    tags: list[str] = []
    if i % 4 != 2:
        tags.append(TAG_NAMES[i % 5])
    if i % 3 == 0:
        tags.append(TAG_NAMES[(i + 2) % 5])
    if i % 5 == 1:
        tags.append("Moscow office")
    tags = list(dict.fromkeys(tags))
    if i == 4:
        first, last, bot, email, department, tags = "Reminder", "Bot", True, None, None, []
    return {
        "id": uid, "first_name": first, "last_name": last, "nickname": f"user{uid}",
        "email": email, "phone_number": None, "department": department, "title": "" if i % 2 else None,
        "role": "admin" if i == 1 else "user", "suspended": i == 8,
        "invite_status": "sent" if first is None else "confirmed", "inviter_id": None, "list_tags": tags,
        "custom_properties": [], "user_status": None, "bot": bot, "sso": False,
        "created_at": _iso(now - timedelta(days=400 - i)), "last_activity_at": _iso(now - timedelta(hours=i)),
        "time_zone": "Europe/Moscow", "image_url": None,
    }


def _reminder(rid: int, rng: random.Random, now: datetime, user_ids: list[int]) -> dict[str, Any]:
    kind = rng.choice(KINDS)
    priority = rng.choices((1, 2, 3), weights=(6, 3, 1))[0]
    status = "done" if rng.random() < 0.4 else "undone"
    all_day = False
    due: datetime | None = None
    if rng.random() >= 0.15:
        days = rng.uniform(0, 1) if rng.random() < 0.2 else rng.uniform(-30, 30)  # a fifth due within a day
        due = (now + timedelta(days=days)).replace(microsecond=rng.choice((0, 500000)))
        if rng.random() < 0.2:
            all_day = True
            due = due.replace(hour=0, minute=0, second=0, microsecond=0)
    creator = rng.choice(user_ids)
    performers = rng.sample(user_ids, k=min(len(user_ids), rng.choice((1, 1, 2, 3))))
    created = (due or now) - timedelta(days=rng.uniform(1, 20))
    props = [] if rng.random() < 0.7 else [{"id": 78, "name": "Place", "data_type": "string",
                                           "value": "Blue warehouse"}]
    return {
        "id": rid, "kind": kind, "content": rng.choice(_CONTENT), "due_at": _iso(due) if due else None,
        "priority": priority, "user_id": creator, "chat_id": rng.choice((None, 334, 335)),
        "status": status, "created_at": _iso(created), "performer_ids": performers, "all_day": all_day,
        "custom_properties": props,
    }


def _iso(moment: datetime) -> str:
    """YYYY-MM-DDThh:mm:ss.sssZ, the API's format."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
