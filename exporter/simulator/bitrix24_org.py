"""The company around the fake portal's users: departments, workgroups and their members.

Answers `department.get`, `sonet_group.get` and `sonet_group.user.get` the way the portal's PHP does
(docs/api-notes.md): ids come back as strings, a root department has no PARENT key and a department
without a head no UF_HEAD key, department filter keys count only in upper case while sort/order do in
any case, sonet_group.get reads ORDER/FILTER/IS_ADMIN only in upper case, and sonet_group.user.get
answers owners (A), moderators (E) and members (K) who are active, nobody invited or banned.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.simulator.bitrix24_php import MethodError, page_nav, php_intval, php_list, php_str, upper_keys

OWNER, MODERATOR, MEMBER, INVITED, BANNED = "A", "E", "K", "Z", "T"
MEMBER_ROLES = (OWNER, MODERATOR, MEMBER)
ANY_EMPLOYEE = "L"  # a tasks_view that lets every employee read the group's tasks


@dataclass
class SimDepartment:
    """One iblock section of the company structure; `active=False` hides it and its subtree."""

    dept_id: int
    name: str
    parent: int | None = None
    head: int | None = None
    sort: int = 500
    active: bool = True


@dataclass
class SimGroup:
    """A workgroup or project. `members` maps user id -> role (A/E/K, or Z invited, T banned), oldest first.

    `tasks_view` is the lowest role that may see the group's tasks (the `tasks` feature's `view`
    permission): A, E, K (members, Bitrix24's default) or L (any employee). It decides whether a webhook
    whose owner is not a member may read counters with this groupId.
    """

    group_id: int
    name: str
    owner_id: int
    project: bool = False
    members: dict[int, str] = field(default_factory=dict)
    active: bool = True
    visible: bool = True
    opened: bool = True
    closed: bool = False  # archived
    tasks_view: str = MEMBER
    description: str = ""
    keywords: str | None = None
    image: str | None = None
    created: float = 1_700_000_000.0

    def role(self, user_id: int) -> str | None:
        return self.members.get(user_id)

    def is_member(self, user_id: int) -> bool:
        return self.members.get(user_id) in MEMBER_ROLES


# --- department.get -------------------------------------------------------------------------------

DEPARTMENT_FIELDS = ("ID", "NAME", "SORT", "PARENT", "UF_HEAD")


def globally_active(dept: SimDepartment, by_id: dict[int, SimDepartment]) -> bool:
    """GLOBAL_ACTIVE: the department and every ancestor are active."""
    seen: set[int] = set()
    node: SimDepartment | None = dept
    while node is not None and node.dept_id not in seen:
        if not node.active:
            return False
        seen.add(node.dept_id)
        node = by_id.get(node.parent) if node.parent is not None else None
    return True


def preorder(departments: Sequence[SimDepartment]) -> list[SimDepartment]:
    """LEFT_MARGIN order: a parent before its children, siblings by SORT then NAME."""
    children: dict[int | None, list[SimDepartment]] = {}
    known = {d.dept_id for d in departments}
    for dept in departments:
        parent = dept.parent if dept.parent in known else None
        children.setdefault(parent, []).append(dept)
    out: list[SimDepartment] = []

    def walk(parent: int | None) -> None:
        for dept in sorted(children.get(parent, []), key=lambda d: (d.sort, d.name, d.dept_id)):
            out.append(dept)
            walk(dept.dept_id)

    walk(None)
    return out


def department_get(departments: Sequence[SimDepartment], params: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """department.get: filter by upper-case keys, sort/order in any case, old-style paging."""
    start = params.get("start", 0)
    query = params.get("FILTER") if isinstance(params.get("FILTER"), dict) else params
    assert isinstance(query, dict)
    by_id = {d.dept_id: d for d in departments}
    ordered = [d for d in preorder(departments) if globally_active(d, by_id)]
    for key in DEPARTMENT_FIELDS:  # case-sensitive: `id` or `parent` filter nothing
        if key in query:
            ordered = [d for d in ordered if _department_matches(d, key, query[key])]
    sort_key = _department_sort(query)
    if sort_key is not None:
        name, descending = sort_key
        position = {d.dept_id: i for i, d in enumerate(ordered)}
        ordered.sort(key=lambda d: position[d.dept_id])
        ordered.sort(key=lambda d: _department_value(d, name), reverse=descending)
    page, extra = page_nav(ordered, start)
    return [department_record(d) for d in page], extra


def department_record(dept: SimDepartment) -> dict[str, Any]:
    record: dict[str, Any] = {"ID": str(dept.dept_id), "NAME": dept.name, "SORT": dept.sort}
    if dept.parent is not None:
        record["PARENT"] = str(dept.parent)
    if dept.head is not None:
        record["UF_HEAD"] = str(dept.head)
    return record


def _department_matches(dept: SimDepartment, key: str, raw: Any) -> bool:
    if key == "NAME":
        return dept.name == php_str(raw)
    values = php_list(raw)
    if key == "SORT":  # cast with intval, arrays included (intval of an array is 1)
        return dept.sort == php_intval(raw)
    wanted = {php_intval(v) for v in values} if values is not None else {php_intval(raw)}
    if key == "ID":
        return dept.dept_id in wanted
    if key == "PARENT":  # SECTION_ID = 0 selects the top level
        return (dept.parent if dept.parent is not None else 0) in wanted
    return dept.head is not None and dept.head in wanted


def _department_sort(query: dict[str, Any]) -> tuple[str, bool] | None:
    upper = upper_keys(query)
    field_name, order = upper.get("SORT"), upper.get("ORDER")
    if not isinstance(field_name, str) or field_name.upper() not in DEPARTMENT_FIELDS:
        return None
    return field_name.upper(), isinstance(order, str) and order.upper() == "DESC"


def _department_value(dept: SimDepartment, name: str) -> tuple[int, Any]:
    value: Any = {"ID": dept.dept_id, "NAME": dept.name, "SORT": dept.sort, "PARENT": dept.parent,
                  "UF_HEAD": dept.head}[name]
    return (0, 0) if value is None else (1, value)  # NULL sorts first, as in MySQL


# --- sonet_group.get / sonet_group.user.get ---------------------------------------------------------

_OPERATIONS = ("", "!", ">=", ">", "<=", "<", "><", "!><", "?", "=", "!=", "%", "!%")
_GROUP_INT_FIELDS = ("ID", "OWNER_ID", "SUBJECT_ID", "NUMBER_OF_MEMBERS")
_GROUP_STRING_FIELDS = ("NAME", "DESCRIPTION", "ACTIVE", "VISIBLE", "OPENED", "CLOSED", "PROJECT", "KEYWORDS",
                        "SITE_ID")
_FILTER_KEY = re.compile(r"^([^a-zA-Z]*)(.*)$", re.DOTALL)


def visible_to(group: SimGroup, caller: int) -> bool:
    """CHECK_PERMISSIONS: visible groups, plus secret ones the caller owns, moderates or belongs to."""
    return group.visible or group.is_member(caller)


def can_view_tasks(group: SimGroup, caller: int, module_admin: bool) -> bool:
    """The `tasks` feature check tasks.task.counters.get makes on the calling user (not on userId)."""
    if module_admin:
        return True
    role = group.role(caller)
    if role == BANNED:
        return False
    needed = group.tasks_view
    if needed == ANY_EMPLOYEE and group.visible:
        return True
    allowed = {OWNER: (OWNER,), MODERATOR: (OWNER, MODERATOR)}.get(needed, MEMBER_ROLES)
    return role in allowed


def sonet_group_get(groups: Sequence[SimGroup], params: dict[str, Any], *, caller: int,
                    module_admin: bool) -> tuple[list[Any], dict[str, Any]]:
    """sonet_group.get: ORDER (default ID DESC), FILTER, GROUP_ID, IS_ADMIN, all read in upper case only."""
    order = params.get("ORDER")
    if not isinstance(order, dict | list):
        order = {"ID": "DESC"}
    is_admin = params.get("IS_ADMIN") == "Y" and module_admin  # silently dropped for anyone else
    conditions = _group_filter(params.get("FILTER"))
    if php_intval(params.get("GROUP_ID")) > 0:
        conditions.append(("", "ID", params["GROUP_ID"]))
    rows = [g for g in groups if all(_group_matches(g, op, name, value) for op, name, value in conditions)]
    if not is_admin:
        rows = [g for g in rows if visible_to(g, caller)]
    rows.sort(key=lambda g: g.group_id)
    if isinstance(order, dict):
        for name, direction in reversed(list(order.items())):  # the first key sorts last, so it wins
            if name in _GROUP_INT_FIELDS or name in _GROUP_STRING_FIELDS or name.startswith("DATE_"):
                values = {g.group_id: _group_sort_value(g, name) for g in rows}
                rows.sort(key=lambda g: values[g.group_id], reverse=str(direction).upper() == "DESC")
    page, extra = page_nav(rows, params.get("start", 0))
    return [group_record(g) for g in page], extra


def sonet_group_user_get(groups: Sequence[SimGroup], params: dict[str, Any], *, caller: int, module_admin: bool,
                         active_users: set[int]) -> list[dict[str, str]]:
    """sonet_group.user.get: every active owner/moderator/member of group ID, no paging (one plain list)."""
    group_id = php_intval(params.get("ID"))
    if group_id <= 0:
        raise MethodError(400, "", "Wrong socialnetwork group ID")
    group = next((g for g in groups if g.group_id == group_id), None)
    if group is None or not (module_admin or visible_to(group, caller)):
        raise MethodError(400, "", "Socialnetwork group not found")
    return [{"USER_ID": str(uid), "ROLE": role} for uid, role in group.members.items()
            if role in MEMBER_ROLES and uid in active_users]


def group_record(group: SimGroup) -> dict[str, Any]:
    """One row as CSocNetGroup::GetList fetches it: every value a string (or null)."""
    created = _iso(group.created)
    record: dict[str, Any] = {
        "ID": str(group.group_id), "SITE_ID": "s1", "NAME": group.name, "DESCRIPTION": group.description,
        "DATE_CREATE": created, "DATE_UPDATE": _iso(group.created + 86_400 * 3), "ACTIVE": _yn(group.active),
        "VISIBLE": _yn(group.visible), "OPENED": _yn(group.opened), "CLOSED": _yn(group.closed),
        "SUBJECT_ID": "1", "OWNER_ID": str(group.owner_id), "KEYWORDS": group.keywords,
        "NUMBER_OF_MEMBERS": str(sum(1 for r in group.members.values() if r in MEMBER_ROLES)),
        "DATE_ACTIVITY": _iso(group.created + 86_400 * 30), "SUBJECT_NAME": "Workgroups",
        "PROJECT": _yn(group.project),
    }
    if group.image is not None:
        record["IMAGE"] = group.image
    return record


def _group_filter(raw: Any) -> list[tuple[str, str, Any]]:
    if not isinstance(raw, dict):
        return []
    conditions = []
    for key, value in raw.items():
        match = _FILTER_KEY.match(str(key))
        assert match is not None
        operation, name = match.group(1), match.group(2)
        if operation in _OPERATIONS:  # a key with any other prefix is dropped
            conditions.append((operation, name, value))
    return conditions


def _group_matches(group: SimGroup, operation: str, name: str, raw: Any) -> bool:
    if name in _GROUP_INT_FIELDS:
        actual: Any = _group_sort_value(group, name)
        values: list[Any] = [php_intval(v) for v in (php_list(raw) or [raw])]
    elif name in _GROUP_STRING_FIELDS:  # MySQL compares strings case-insensitively
        actual = str(_group_sort_value(group, name) or "").lower()
        values = [php_str(v).lower() for v in (php_list(raw) or [raw])]
    else:
        return True  # a field CSocNetGroup does not know (or a date) does not narrow the list here
    negate = operation.startswith("!")
    operation = operation.lstrip("!")
    if operation in ("", "="):
        result = actual in values
    elif operation in ("%", "?"):
        result = any(str(v) in str(actual) for v in values)
    elif operation == "><":
        result = len(values) >= 2 and values[0] <= actual <= values[1]
    else:
        first = values[0] if values else None
        result = first is not None and {">": actual > first, ">=": actual >= first, "<": actual < first,
                                         "<=": actual <= first}[operation]
    return result != negate


def _group_sort_value(group: SimGroup, name: str) -> Any:
    record = group_record(group)
    if name in _GROUP_INT_FIELDS:
        return php_intval(record[name])
    value = record.get(name)
    return "" if value is None else value


def _yn(flag: bool) -> str:
    return "Y" if flag else "N"


def _iso(moment: float) -> str:
    """CRestUtil::ConvertDateTime: ISO-8601 in the portal's time zone (Moscow here)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+03:00", time.gmtime(moment + 3 * 3600))
