"""The organisation around a portal's users: departments, workgroups and memberships, as plain values.

Sources build these; the collector turns them into info series that PromQL joins against the counters:

    bitrix24_department_info{portal="acme",department_id="5",name="Sales Moscow",parent_id="2",head_user_id="17"} 1
    bitrix24_user_department{portal="acme",user_id="17",department_id="2",direct="false"} 1
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

GROUP_KINDS = ("group", "project")
MEMBER_ROLES = ("owner", "moderator", "member")


@dataclass(frozen=True, slots=True)
class Department:
    """One department of the company structure; a root has no parent, a department may have no head."""

    dept_id: int
    name: str
    parent_id: int | None = None
    head_user_id: int | None = None


@dataclass(frozen=True, slots=True)
class Workgroup:
    """A workgroup or project whose counters are read; `kind` is one of GROUP_KINDS."""

    group_id: int
    name: str
    kind: str = "group"


@dataclass(frozen=True, slots=True)
class Membership:
    """A user in a workgroup with one of MEMBER_ROLES."""

    group_id: int
    user_id: int
    role: str


@dataclass(frozen=True, slots=True)
class UserDepartment:
    """A user in a department: directly (listed in the user's departments) or through a department below it."""

    user_id: int
    dept_id: int
    direct: bool


@dataclass(frozen=True, slots=True)
class PortalOrg:
    """The structure a snapshot shows; an empty tuple means the feature is off or found nothing."""

    departments: tuple[Department, ...] = ()
    user_departments: tuple[UserDepartment, ...] = ()
    groups: tuple[Workgroup, ...] = ()
    members: tuple[Membership, ...] = ()


@dataclass(frozen=True, slots=True)
class StructureStatus:
    """How a source's structure refreshes went: they run on their own interval, apart from the counters,
    and a failed one keeps the last good structure."""

    up: bool = False
    last_success: float | None = None  # Unix time
    failures: Mapping[str, int] = field(default_factory=dict)  # reason -> count


def ancestors(dept_id: int, tree: Mapping[int, Department]) -> Iterator[int]:
    """The departments above `dept_id`, nearest first; stops at a parent the tree does not hold, or a loop."""
    seen = {dept_id}
    node = tree.get(dept_id)
    while node is not None and node.parent_id is not None and node.parent_id not in seen:
        seen.add(node.parent_id)
        yield node.parent_id
        node = tree.get(node.parent_id)


def memberships(user_id: int, direct: Iterable[int], tree: Mapping[int, Department]) -> list[UserDepartment]:
    """A user's departments: each direct one the tree holds, then every ancestor of those once, never a
    department that is already direct."""
    mine = [d for d in dict.fromkeys(direct) if d in tree]
    out = [UserDepartment(user_id, d, True) for d in mine]
    seen = set(mine)
    for d in mine:
        for above in ancestors(d, tree):
            if above not in seen:
                seen.add(above)
                out.append(UserDepartment(user_id, above, False))
    return out


def subtree(roots: Iterable[int], tree: Mapping[int, Department]) -> set[int]:
    """`roots` and every department below them (the roots themselves even when the tree does not hold them)."""
    children: dict[int, list[int]] = {}
    for dept in tree.values():
        if dept.parent_id is not None:
            children.setdefault(dept.parent_id, []).append(dept.dept_id)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        node = todo.pop()
        if node not in found:
            found.add(node)
            todo.extend(children.get(node, ()))
    return found
