"""The kinds of value a config key may take: each parses a YAML value and describes itself for the docs.

    integer(1, 50)   # "page_size: 100" -> "page_size: must be between 1 and 50, got 100"
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from exporter.schema import TEXT, Invalid, Kind, Reader, join, kind_of, section

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
D = TypeVar("D", bound="DataclassInstance")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(raw: Any) -> float | None:
    """Prometheus-style durations ("90s", "1m30s", "500ms") or plain seconds; None when malformed."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw) if math.isfinite(raw) else None
    if not isinstance(raw, str) or not raw.strip():
        return None
    text = raw.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) else None


def format_duration(seconds: float) -> str:
    """The shortest whole-unit spelling parse_duration reads back: 900.0 -> "15m"."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def show_list(values: Sequence[object]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def _label(reader: Reader, path: str, raw: Any) -> str:
    text = TEXT.parse(reader, path, raw).strip()
    if not text:
        raise Invalid("is empty")
    return text


def _url(reader: Reader, path: str, raw: Any) -> str:
    url = TEXT.parse(reader, path, raw)
    check_url(reader, path, url)
    return url.rstrip("/")


def _duration(_reader: Reader, _path: str, raw: Any) -> float:
    seconds = parse_duration(raw)
    if seconds is None:
        raise Invalid(f"invalid duration {raw!r} (use e.g. 30s, 5m, 1h30m)")
    if seconds <= 0:
        raise Invalid(f"must be positive, got {raw!r}")
    return seconds


def _positive_number(_reader: Reader, _path: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw <= 0:
        raise Invalid(f"must be a positive number, got {raw!r}")
    return float(raw)


LABEL: Kind[str] = Kind(_label, "non-empty text")
URL: Kind[str] = Kind(_url, "http(s) URL")
DURATION: Kind[float] = Kind(_duration, "duration (500ms, 30s, 5m, 1h30m)", format_duration)
POSITIVE_NUMBER: Kind[float] = Kind(_positive_number, "positive number", lambda n: f"{n:g}")


def integer(minimum: int, maximum: int | None = None) -> Kind[int]:
    """An integer within bounds; a string of digits counts."""
    def parse(_reader: Reader, _path: str, raw: Any) -> int:
        if isinstance(raw, str) and raw.strip().isdigit():
            raw = int(raw.strip())
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise Invalid(f"must be an integer, got {kind_of(raw)}")
        if raw < minimum or (maximum is not None and raw > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise Invalid(f"must be {bound}, got {raw}")
        return raw

    return Kind(parse, f"integer {minimum}-{maximum}" if maximum is not None else f"integer >= {minimum}")


def items(reader: Reader, path: str, raw: Sequence[Any], kind: Kind[T]) -> list[T]:
    """Each item of a list through `kind`, every bad one reported; raises Invalid() if any was bad."""
    good, all_good = each(reader, [(f"{path}[{i}]", item) for i, item in enumerate(raw)], kind)
    if not all_good:
        raise Invalid()
    return good


def each(reader: Reader, entries: Sequence[tuple[str, Any]], kind: Kind[T]) -> tuple[list[T], bool]:
    """`kind` applied to each (path, raw) entry: the values it accepted, and whether it accepted them all."""
    good: list[T] = []
    for path, raw in entries:
        value = reader.value(path, raw, kind)
        if not isinstance(value, Invalid):
            good.append(value)
    return good, len(good) == len(entries)


def int_list(minimum: int) -> Kind[tuple[int, ...]]:
    item = integer(minimum)

    def parse(reader: Reader, path: str, raw: Any) -> tuple[int, ...]:
        if not isinstance(raw, list):
            raise Invalid(f"must be a list of integers, got {kind_of(raw)}")
        if not raw:
            raise Invalid("is empty")
        return tuple(items(reader, path, raw, item))

    return Kind(parse, f"list of integers >= {minimum}", show_list)


def one_of(names: Sequence[str]) -> Kind[str]:
    def parse(_reader: Reader, _path: str, raw: Any) -> str:
        if raw not in names:
            raise Invalid(f"unknown value {raw!r} (expected one of: {', '.join(names)})")
        return str(raw)

    return Kind(parse, "one of " + ", ".join(f"`{n}`" for n in names))


def subset(names: Sequence[str], noun: str) -> Kind[tuple[str, ...]]:
    """A non-empty list drawn from `names`, duplicates dropped, order kept."""
    def item(_reader: Reader, _path: str, raw: Any) -> str:
        if raw not in names:
            raise Invalid(f"unknown {noun} {raw!r} (expected one of: {', '.join(names)})")
        return str(raw)

    def parse(reader: Reader, path: str, raw: Any) -> tuple[str, ...]:
        if not isinstance(raw, list) or not raw:
            raise Invalid(f"must be a non-empty list of {noun}s ({', '.join(names)})")
        return tuple(dict.fromkeys(items(reader, path, raw, Kind(item, noun))))

    return Kind(parse, f"list of {noun}s: " + ", ".join(f"`{n}`" for n in names), show_list)


def optional(kind: Kind[T]) -> Kind[T | None]:
    """`kind`, or nothing at all (a key present with no value)."""
    def parse(reader: Reader, path: str, raw: Any) -> T | None:
        return None if raw is None else kind.parse(reader, path, raw)

    return Kind(parse, kind.shape, lambda v: "none" if v is None else kind.show(v), kind.nested)


def mapping_of(kind: Kind[T], shape: str) -> Kind[dict[str, T]]:
    """A mapping from names to values of `kind`; nothing at all is an empty one."""
    def parse(reader: Reader, path: str, raw: Any) -> dict[str, T]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise Invalid(f"must be a mapping, got {kind_of(raw)}")
        names = [str(name) for name in raw]
        good, all_good = each(reader, [(join(path, n), v) for n, v in zip(names, raw.values(), strict=True)], kind)
        if not all_good:
            raise Invalid()
        return dict(zip(names, good, strict=True))

    return Kind(parse, shape, lambda v: "none" if not v else ", ".join(v))


def sections(cls: type[D], unique: str) -> Kind[tuple[D, ...]]:
    """One mapping or a list of mappings, each parsed by `cls`, whose `unique` attribute must differ."""
    def parse(reader: Reader, path: str, raw: Any) -> tuple[D, ...]:
        if raw is None:
            return ()
        if isinstance(raw, dict):
            entries = [(path, raw)]
        elif isinstance(raw, list):
            if not raw:
                raise Invalid("is an empty list; remove the section or add an entry")
            entries = [(f"{path}[{i}]", entry) for i, entry in enumerate(raw)]
        else:
            raise Invalid(f"must be a mapping or a list of mappings, got {kind_of(raw)}")
        built, all_good = each(reader, entries, section(cls))
        names = [getattr(v, unique) for v in built]
        for name in sorted({n for n in names if names.count(n) > 1}):
            reader.fail(path, f"{unique} {name!r} is used twice; give each entry its own {unique}")
        if not all_good:
            raise Invalid()
        return tuple(built)

    return Kind(parse, f"mapping, or list of mappings with distinct `{unique}`s (keys below)",
                lambda v: "none" if not v else "see below", cls)


def check_url(reader: Reader, path: str, url: str) -> str:
    """The host name of an http(s) URL; plain http to anything but loopback is a warning. Never echoes the URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("must be an http(s) URL with a host name")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise Invalid("has an invalid port") from None
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        reader.warn(path, f"plain http to {parts.hostname}: traffic and secrets are not encrypted")
    return parts.hostname


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
