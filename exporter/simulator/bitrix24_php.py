"""How the portal's PHP reads parameters and writes answers, for the fake Bitrix24 portal.

The real REST layer is PHP: query strings are parsed into nested arrays, values are cast with `intval` and
PHP truthiness, an array whose keys are 0..n-1 is serialised as a JSON list, and list methods page in
two different ways (old-style page numbers or ORM offsets). Getting these right is what makes the fake
a fair oracle (docs/api-notes.md).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl

PAGE_SIZE = 50  # IRestService::LIST_LIMIT

T = TypeVar("T")


class MethodError(Exception):
    """A method's error answer: HTTP status, `error` code (may be "" or "0") and `error_description`."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(code)
        self.status, self.code, self.description = status, code, description


def php_query(query: str) -> dict[str, Any]:
    """Parse a PHP-style query string (`FILTER[ACTIVE]=true&cmd[0]=...`) into nested dicts."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return out


@functools.lru_cache(maxsize=16384)
def parsed_command(text: str) -> tuple[str, dict[str, Any]]:
    """A batch command `method?query` split and parsed, once per distinct text: a client sends the same
    commands every cycle. The params are shared between calls: read them, never change them."""
    method, _, query = text.partition("?")
    return method, php_query(query)


_LEADING_INT = re.compile(r"\s*([+-]?\d+)")


def php_intval(value: Any) -> int:
    """PHP's intval: leading digits of a string ("12abc" -> 12, "NAME" -> 0), 1 for a non-empty array."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else 0
    if isinstance(value, str):
        match = _LEADING_INT.match(value)
        return int(match.group(1)) if match else 0
    if isinstance(value, dict | list):
        return 1 if value else 0
    return 0


def php_str(value: Any) -> str:
    """PHP's string cast: true -> "1", false/null -> ""."""
    if value is True:
        return "1"
    if value is False or value is None:
        return ""
    return str(value)


def php_truthy(value: Any) -> bool:
    """PHP truthiness: "", "0", 0, null, false and empty arrays are false; the string "false" is true."""
    if isinstance(value, str):
        return value not in ("", "0")
    return bool(value)


def php_list(value: Any) -> list[Any] | None:
    """The values of a PHP array (a JSON list, or a dict parsed from `a[0]=..&a[1]=..`); None for a scalar."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return None


def php_array(section: dict[str, Any]) -> Any:
    """json_encode of a PHP array: keys exactly 0..n-1 in order make a JSON list (an empty one too)."""
    if list(section) == [str(i) for i in range(len(section))]:
        return list(section.values())
    return section


def upper_keys(params: dict[str, Any]) -> dict[str, Any]:
    """array_change_key_case(..., CASE_UPPER): on a clash the later key wins, as in PHP."""
    return {str(key).upper(): value for key, value in params.items()}


def page_nav(rows: Sequence[T], start: Any) -> tuple[list[T], dict[str, Any]]:
    """Old-style (CDBResult) paging: 50 a page, page = start // 50 + 1, `total` always, `next` while more.

    A page past the end is answered with the first page (CDBResult falls back to page 1), so a client
    that stops on an empty page never stops; `next` is the only end-of-data signal.
    """
    offset = php_intval(start)
    if offset < 0:  # start=-1: no count, the first 50 rows
        return list(rows[:PAGE_SIZE]), {"total": 0}
    pages = math.ceil(len(rows) / PAGE_SIZE)
    page = offset // PAGE_SIZE + 1
    if page > pages:
        page = 1
    extra: dict[str, Any] = {"total": len(rows)}
    if page < pages:
        extra["next"] = page * PAGE_SIZE
    return list(rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]), extra


def offset_nav(rows: Sequence[T], start: Any) -> tuple[list[T], dict[str, Any]]:
    """ORM paging (user.get): 50 rows from offset `start`; an empty page has no `total`; start=-1 counts 0."""
    offset = php_intval(start)
    counted = offset >= 0
    offset = max(offset, 0)
    page = list(rows[offset: offset + PAGE_SIZE])
    if not page:
        return page, {}
    total = len(rows) if counted else 0
    extra: dict[str, Any] = {"total": total}
    if offset + len(page) < total:
        extra["next"] = offset + len(page)
    return page, extra
