"""The fake portal's employees and `user.get` as the portal answers it (docs/api-notes.md).

Which fields come back depends on the webhook's scope: `user` gives everything (EMAIL, LAST_LOGIN),
`user_basic` EMAIL but no LAST_LOGIN, `user_brief` names, position and departments but no EMAIL. Types
follow recorded answers: ID a string, ACTIVE a JSON bool, UF_DEPARTMENT a list of ints, LAST_LOGIN ""
for someone who never logged in, TIMESTAMP_X an empty object; a field whose value is NULL is left out,
so users on one page have different key sets. Filters read keys in any case (a FILTER object replaces
the top-level ones), take operator prefixes, and ignore fields the scope does not allow.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from exporter.simulator.bitrix24_php import offset_nav, php_intval, php_list, php_str, php_truthy, upper_keys

FIRST = ["Anna", "Boris", "Vera", "Gleb", "Daria", "Egor", "Zoya", "Ivan", "Kira", "Lev", "Maria", "Nikita",
         "Olga", "Pavel", "Rita", "Sergey", "Tanya", "Uliana", "Fedor", "Yana"]
LAST = ["Ivanova", "Petrov", "Smirnova", "Kuznetsov", "Popova", "Sokolov", "Lebedeva", "Kozlov", "Novikova",
        "Morozov", "Volkova", "Orlov"]

# The fields each scope may read, in the order the portal writes them (rest/lib/api/user.php).
USER_SCOPE_FIELDS: dict[str, tuple[str, ...]] = {
    "user": ("ID", "XML_ID", "ACTIVE", "NAME", "LAST_NAME", "SECOND_NAME", "TITLE", "EMAIL", "LAST_LOGIN",
             "DATE_REGISTER", "TIME_ZONE", "IS_ONLINE", "TIMESTAMP_X", "LAST_ACTIVITY_DATE", "PERSONAL_GENDER",
             "PERSONAL_BIRTHDAY", "PERSONAL_MOBILE", "WORK_PHONE", "WORK_POSITION", "UF_EMPLOYMENT_DATE",
             "UF_DEPARTMENT", "UF_PHONE_INNER", "USER_TYPE"),
    "user_basic": ("ID", "XML_ID", "ACTIVE", "NAME", "LAST_NAME", "SECOND_NAME", "TITLE", "EMAIL", "WORK_PHONE",
                   "WORK_POSITION", "IS_ONLINE", "TIME_ZONE", "TIMESTAMP_X", "DATE_REGISTER",
                   "LAST_ACTIVITY_DATE", "PERSONAL_GENDER", "PERSONAL_BIRTHDAY", "PERSONAL_MOBILE",
                   "UF_DEPARTMENT", "UF_PHONE_INNER", "UF_EMPLOYMENT_DATE", "USER_TYPE"),
    "user_brief": ("ID", "XML_ID", "ACTIVE", "NAME", "LAST_NAME", "SECOND_NAME", "TITLE", "IS_ONLINE",
                   "TIME_ZONE", "TIMESTAMP_X", "DATE_REGISTER", "PERSONAL_GENDER", "PERSONAL_BIRTHDAY",
                   "WORK_POSITION", "LAST_ACTIVITY_DATE", "UF_EMPLOYMENT_DATE", "UF_DEPARTMENT", "UF_PHONE_INNER",
                   "USER_TYPE"),
}
USER_SCOPES = tuple(USER_SCOPE_FIELDS)
_FILTER_ONLY = ("HAS_DEPARTAMENT", "NAME_SEARCH")
_FILTER_KEY = re.compile(r"^(\W{1,2})(.+)$", re.DOTALL)


@dataclass
class SimUser:
    """An employee of the fake portal; `departments` is UF_DEPARTMENT, `last_login` "" if never."""

    user_id: int
    name: str
    last_name: str
    active: bool = True
    email: str = ""  # "" means NULL: the EMAIL key is left out
    departments: list[int] = field(default_factory=list)
    position: str = ""
    second_name: str | None = None
    last_login: str = "2026-08-20T09:15:00+03:00"
    registered: str = "2021-04-12T03:00:00+03:00"
    online: bool = False
    gender: str = ""
    time_zone: str | None = None
    mobile: str | None = None
    inner_phone: str | None = None
    xml_id: str | None = None

    def values(self) -> dict[str, Any]:
        """Every field the portal could write; None is a NULL, which user.get leaves out."""
        return {
            "ID": str(self.user_id), "XML_ID": self.xml_id, "ACTIVE": self.active, "NAME": self.name,
            "LAST_NAME": self.last_name, "SECOND_NAME": self.second_name, "TITLE": None,
            "EMAIL": self.email or None, "LAST_LOGIN": self.last_login, "DATE_REGISTER": self.registered,
            "TIME_ZONE": self.time_zone, "IS_ONLINE": "Y" if self.online else "N", "TIMESTAMP_X": {},
            "LAST_ACTIVITY_DATE": {} if self.last_login else None, "PERSONAL_GENDER": self.gender,
            "PERSONAL_BIRTHDAY": "", "PERSONAL_MOBILE": self.mobile, "WORK_PHONE": None,
            "WORK_POSITION": self.position, "UF_EMPLOYMENT_DATE": "", "UF_DEPARTMENT": list(self.departments),
            "UF_PHONE_INNER": self.inner_phone, "USER_TYPE": "employee" if self.departments else "extranet",
        }


def generate_people(count: int, *, seed: int = 7, inactive: int = 0) -> list[SimUser]:
    """`count` active employees then `inactive` dismissed ones, ids from 1, names and e-mails from `seed`.

    The names, e-mails and order depend only on `seed` and the index, so a portal and a workspace built
    from the same seed share their people (the Pachca simulator reuses them for e-mail matching).
    """
    rnd = random.Random(seed)
    people = []
    for i in range(count + inactive):
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        people.append(SimUser(user_id=i + 1, name=first, last_name=last, active=i < count,
                              email=f"{first.lower()}.{last.lower()}{i}@example.com"))
    details = random.Random(f"{seed}:details")
    for person in people:
        n = person.user_id
        person.gender = "F" if person.name.endswith("a") else "M"
        person.online = details.random() < 0.3
        person.time_zone = "Europe/Moscow" if n % 4 == 0 else None
        person.mobile = f"+7 900 {n:03d}-{details.randint(10, 99)}-{details.randint(10, 99)}" if n % 3 == 0 else None
        person.inner_phone = str(100 + n) if n % 2 == 0 else None
        person.second_name = "" if n % 5 == 0 else None
        if n % 9 == 0:
            person.last_login = ""  # invited, never logged in
    return people


def user_get(users: list[SimUser], params: dict[str, Any], scopes: set[str], *, module_admin: bool = False,
             group_mates: set[int] | None = None) -> tuple[list[Any], dict[str, Any]]:
    """user.get: filter (any key case, FILTER replaces the top level), sort+order, ORM paging.

    Someone without a department (an extranet user) is answered only if they share a workgroup with the
    webhook's owner (`group_mates`), unless ADMIN_MODE is set by a socialnetwork module admin.
    """
    fields = fields_for(scopes)
    query = upper_keys(params)
    sort, order = query.get("SORT"), query.get("ORDER")
    admin_mode = module_admin and php_truthy(query.get("ADMIN_MODE"))
    start = params.get("start", 0)  # read by the REST server itself, in lower case
    if isinstance(query.get("FILTER"), dict):
        query = upper_keys(query["FILTER"])
    allowed = set(fields) | set(_FILTER_ONLY) | {"IS_ONLINE"}
    matched = users
    if not admin_mode and not (module_admin and "ID" in query):
        mates = group_mates or set()
        matched = [u for u in matched if u.departments or u.user_id in mates]
    for key, value in query.items():
        found = _FILTER_KEY.match(key)
        operation, name = (found.group(1), found.group(2)) if found else ("", key)
        if name not in allowed:
            continue  # not readable with this scope (or not a field): ignored, no error
        if operation == "" and name in ("ACTIVE", "USER_TYPE"):
            operation = "="
        matched = [u for u in matched if _user_matches(u, operation, name, value)]
    if isinstance(sort, str) and order and sort.upper() in fields:
        key_name = sort.upper()
        matched = sorted(matched, key=lambda u: _sort_value(u, key_name),
                         reverse=str(order).upper() == "DESC")
    page, extra = offset_nav(matched, start)
    return [user_record(u, fields) for u in page], extra


def fields_for(scopes: set[str]) -> tuple[str, ...]:
    for scope in USER_SCOPES:  # `user` wins over `user_basic` over `user_brief`
        if scope in scopes:
            return USER_SCOPE_FIELDS[scope]
    return ()


def user_record(user: SimUser, fields: tuple[str, ...]) -> dict[str, Any]:
    values = user.values()
    return {name: values[name] for name in fields if values[name] is not None}


def _user_matches(user: SimUser, operation: str, name: str, raw: Any) -> bool:
    negate = operation.startswith("!")
    operation = operation.lstrip("!")
    if name == "HAS_DEPARTAMENT":
        return php_str(raw) != "Y" or bool(user.departments)
    if name == "NAME_SEARCH":
        needle = php_str(raw).lower()
        return needle in f"{user.name} {user.last_name}".lower()
    listed = php_list(raw)
    if name == "ACTIVE":
        want = php_truthy(raw) and raw != "N"  # ($value && $value !== 'N') ? 'Y' : 'N'
        return (user.active == want) != negate
    if name == "ID":
        actual_id = user.user_id
        wanted = [php_intval(v) for v in listed] if listed is not None else [php_intval(raw)]
        if operation in (">", ">=", "<", "<="):
            first = wanted[0] if wanted else 0
            result = {">": actual_id > first, ">=": actual_id >= first, "<": actual_id < first,
                      "<=": actual_id <= first}[operation]
        else:
            result = actual_id in wanted
        return result != negate
    if name == "UF_DEPARTMENT":
        wanted = [php_intval(v) for v in listed] if listed is not None else [php_intval(raw)]
        return bool(set(user.departments) & set(wanted)) != negate
    actual = user.values()[name]
    text = "" if actual is None else str(actual).lower()
    options = [php_str(v).lower() for v in listed] if listed is not None else [php_str(raw).lower()]
    result = any(o in text for o in options) if operation == "%" else text in options
    return result != negate


def _sort_value(user: SimUser, name: str) -> Any:
    if name == "ID":
        return user.user_id
    value = user.values()[name]
    return "" if value is None else str(value)
