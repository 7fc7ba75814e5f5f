"""How the fake Pachca API pages a list: opaque cursors (base64 of a small JSON object, as the real ones look),
`meta.paginate` with a cursor that is never null and `has_next` (docs/api-notes.md#pachca-has-next), the search
meta of GET /users?query=, and the quirks tests switch on (short pages mid-stream, a cursor that repeats, a
list that never ends, no `has_next` as before 2026-05-06)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Protocol


class Quirks(Protocol):
    """The paging quirks a simulated workspace has switched on (PachcaSimulator's attributes)."""

    short_pages: bool
    endless: bool
    repeat_cursor: bool
    omit_has_next: bool


def page(records: list[Any], limit: int, offset: int, quirks: Quirks) -> dict[str, Any]:
    """The page of `records` at `offset`, with the meta the API sends since 2026-05-06 (or without `has_next`,
    as before), bent by `quirks`."""
    size = limit
    if quirks.short_pages and (offset // limit) % 2 == 0 and offset + limit < len(records):
        size = max(1, limit // 3)
    if quirks.endless and records:
        data = [records[(offset + i) % len(records)] for i in range(size)]
    else:
        data = records[offset: offset + size]
    end = offset + len(data)
    has_next = (quirks.endless and bool(records)) or end < len(records)
    next_page = encode_cursor(end if data else offset)  # never null (docs/api-notes.md#pachca-has-next)
    if quirks.repeat_cursor and not has_next and data:
        has_next, next_page = True, encode_cursor(offset)
    paginate: dict[str, Any] = {"next_page": next_page, "prev_page": encode_cursor(offset, "desc")}
    if not quirks.omit_has_next:
        paginate["has_next"] = has_next
        paginate["has_prev"] = offset > 0
    return {"data": data, "meta": {"paginate": paginate}}


def search_page(records: list[Any], limit: int, offset: int) -> dict[str, Any]:
    """The search meta: `total` and a forward cursor only (no prev_page, no has_next)."""
    data = records[offset: offset + limit]
    return {"data": data, "meta": {"total": len(records),
                                   "paginate": {"next_page": encode_cursor(offset + len(data))}}}


def encode_cursor(offset: int, direction: str = "asc") -> str:
    """An opaque-looking cursor like the real ones (base64 of a small JSON object)."""
    raw = json.dumps({"offset": offset, "dir": direction}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    offset = value.get("offset") if isinstance(value, dict) else None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        return None
    return offset
