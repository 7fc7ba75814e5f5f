"""A generated company for the fake Bitrix24 portal: departments four levels deep and workgroups.

The same seed gives the same company; the demo portal's users keep their ids, names and e-mails and get
departments, positions and memberships around them (the shape is described on each builder).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from exporter.simulator.bitrix24_org import (
    ANY_EMPLOYEE,
    BANNED,
    INVITED,
    MEMBER,
    MODERATOR,
    OWNER,
    SimDepartment,
    SimGroup,
    globally_active,
)


class Person(Protocol):
    """What the builders need of an employee (bitrix24_users.SimUser)."""

    user_id: int
    active: bool
    departments: list[int]
    position: str


ROOT = 1
NO_HEAD = 10  # Accounting: a department whose UF_HEAD key is missing
INACTIVE = 11  # Archive: inactive, never answered, and so is its child 12
_SKELETON: tuple[tuple[int, str, int | None, int], ...] = (
    (1, "Company", None, 500), (2, "Sales", 1, 100), (3, "Engineering", 1, 200), (4, "Finance", 1, 300),
    (5, "Sales Moscow", 2, 500), (6, "Sales Export", 2, 500), (7, "Backend", 3, 500), (8, "Frontend", 3, 500),
    (9, "Key Accounts", 5, 500), (10, "Accounting", 4, 500), (11, "Archive", 1, 900),
    (12, "Old Projects", 11, 500), (13, "Platform", 7, 500),
)
_TEAM_PARENTS = (5, 6, 7, 8, 10, 9, 13)
_POSITIONS = {2: ("Sales representative", "Account manager", ""), 3: ("Engineer", "Designer", "QA engineer", ""),
              4: ("Accountant", "Analyst", "")}  # by division; "" is how an empty WORK_POSITION comes back


def build_structure(people: Sequence[Person], *, seed: int) -> list[SimDepartment]:
    """Departments four levels deep around `people`, who get UF_DEPARTMENT lists and positions.

    The skeleton (ids 1-13) is fixed; a larger company gets one more team (level 4, id 14 on) per dozen
    employees past the first hundred. User 1 sits in the root and heads it; every sixth user also
    belongs to a second department; a department's head is its first member, except Accounting (id 10),
    which has none. Archive (11) is inactive and Old Projects (12) sits under it: neither is answered.
    """
    rnd = random.Random(f"{seed}:departments")
    depts = [SimDepartment(i, name, parent, None, sort, active=i != INACTIVE) for i, name, parent, sort in _SKELETON]
    extra = max(0, (len(people) - 100) // 12)
    by_id = {d.dept_id: d for d in depts}
    for k in range(extra):
        parent = by_id[_TEAM_PARENTS[k % len(_TEAM_PARENTS)]]
        dept = SimDepartment(14 + k, f"{parent.name} team {k // len(_TEAM_PARENTS) + 1}", parent.dept_id)
        depts.append(dept)
        by_id[dept.dept_id] = dept
    seats = [d.dept_id for d in depts if d.dept_id != ROOT and globally_active(d, by_id)]
    order = seats[:]
    rnd.shuffle(order)
    first_member: dict[int, int] = {}
    for index, person in enumerate(people):
        if person.user_id == people[0].user_id:
            person.departments = [ROOT]
            person.position = "Chief executive officer"
            continue
        primary = order[(index - 1) % len(order)]
        person.departments = [primary]
        if index % 6 == 0:
            person.departments.append(order[(index + len(order) // 2) % len(order)])
        person.position = rnd.choice(_POSITIONS.get(_division(primary, by_id), ("Manager", "")))
        if person.active:
            first_member.setdefault(primary, person.user_id)
    if people:
        first_member[ROOT] = people[0].user_id
    for dept in depts:
        if dept.dept_id != NO_HEAD:
            dept.head = first_member.get(dept.dept_id)
    heads = {d.head: d.name for d in depts if d.head is not None and d.dept_id != ROOT}
    for person in people:
        if person.user_id in heads:
            person.position = f"Head of {heads[person.user_id]}"
    return depts


def _division(dept_id: int, by_id: dict[int, SimDepartment]) -> int:
    """The level-2 ancestor of a department (its division), or the department itself at the top."""
    node = by_id[dept_id]
    while node.parent is not None and node.parent != ROOT and node.parent in by_id:
        node = by_id[node.parent]
    return node.dept_id


_GROUP_NAMES = ("Sales team", "Website relaunch", "Support", "Mobile app", "Marketing", "Data platform",
                "Recruiting", "CRM rollout", "Office life", "Security audit")


def build_groups(people: Sequence[Person], ordinary: int, *, special: bool, seed: int, caller: int = 1,
                 now: float | None = None) -> list[SimGroup]:
    """Workgroups 1..`ordinary` (odd ids groups, even ids projects), all readable by `caller`, then the
    special ones (`special_group_ids`): an archived project, a secret group the caller cannot see, a
    visible group whose tasks only members may read (caller not a member), and a project with an
    invited, a banned and a dismissed member (none of whom sonet_group.user.get answers).
    """
    rnd = random.Random(f"{seed}:groups")
    active = [p.user_id for p in people if p.active]
    if not active:
        return []
    dismissed = [p.user_id for p in people if not p.active]
    others = [uid for uid in active if uid != caller] or active
    created = (time.time() if now is None else now) - 400 * 86_400
    upper = max(3, min(60, len(active) // 8))
    groups: list[SimGroup] = []

    def crowd(group: SimGroup, size: int) -> None:
        pool = [uid for uid in others if uid not in group.members]
        for uid in rnd.sample(pool, k=min(len(pool), size)):
            group.members[uid] = MEMBER

    for gid in range(1, ordinary + 1):
        owner = caller if gid == 1 else rnd.choice(others)
        name = _GROUP_NAMES[(gid - 1) % len(_GROUP_NAMES)]
        if gid > len(_GROUP_NAMES):
            name = f"{name} {(gid - 1) // len(_GROUP_NAMES) + 1}"
        group = SimGroup(gid, name, owner, project=gid % 2 == 0, members={owner: OWNER},
                         created=created + gid * 86_400, description=f"{name}: tasks and files")
        if gid == 2:
            group.members[caller] = MODERATOR
        elif gid >= 3 and gid % 2 == 1:
            group.members.setdefault(caller, MEMBER)
        moderator = rnd.choice(others)
        group.members.setdefault(moderator, MODERATOR)
        crowd(group, rnd.randint(2, upper))
        group.tasks_view = MEMBER if group.is_member(caller) else ANY_EMPLOYEE
        groups.append(group)
    if not special:
        return groups
    base = ordinary
    archived = SimGroup(base + 1, "Archive 2024", rnd.choice(others), project=True, closed=True,
                        created=created, keywords="archive,2024")
    archived.members = {archived.owner_id: OWNER, caller: MEMBER}
    crowd(archived, 3)
    secret = SimGroup(base + 2, "Board", rnd.choice(others), visible=False, opened=False, created=created,
                      image="/upload/resize_cache/socialnetwork/board.png")
    secret.members = {secret.owner_id: OWNER}
    crowd(secret, 2)
    members_only = SimGroup(base + 3, "Partners", rnd.choice(others), opened=False, created=created)
    members_only.members = {members_only.owner_id: OWNER}
    crowd(members_only, 3)
    moving = SimGroup(base + 4, "Office move", rnd.choice(others), project=True, created=created)
    moving.members = {moving.owner_id: OWNER, caller: MEMBER}
    crowd(moving, 2)
    outsiders = [uid for uid in others if uid not in moving.members]
    if len(outsiders) >= 2:
        moving.members[outsiders[0]] = INVITED
        moving.members[outsiders[1]] = BANNED
    if dismissed:
        moving.members[dismissed[0]] = MEMBER
    groups += [archived, secret, members_only, moving]
    return groups


def special_group_ids(ordinary: int) -> dict[str, int]:
    """Ids of the special groups `build_groups` adds after `ordinary` ordinary ones."""
    return {"archived": ordinary + 1, "secret": ordinary + 2, "members_only": ordinary + 3,
            "with_outsiders": ordinary + 4}


def subtree(departments: Iterable[SimDepartment], dept_id: int) -> set[int]:
    """`dept_id` and every department below it (for tests and for the UF_DEPARTMENT filter's callers)."""
    children: dict[int, list[int]] = {}
    for dept in departments:
        if dept.parent is not None:
            children.setdefault(dept.parent, []).append(dept.dept_id)
    out, todo = set(), [dept_id]
    while todo:
        node = todo.pop()
        if node not in out:
            out.add(node)
            todo.extend(children.get(node, []))
    return out
