"""YAML + environment -> frozen, typed config. Every problem is one line that names its key."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from exporter.errors import ConfigError

ROLES: dict[str, str] = {
    "all": "view_all",
    "responsible": "view_role_responsible",
    "accomplice": "view_role_accomplice",
    "auditor": "view_role_auditor",
    "originator": "view_role_originator",
}
PACHCA_DEFAULT_URL = "https://api.pachca.com/api/shared/v1"
_WEBHOOK_PATH = re.compile(r"^(?P<prefix>.*/rest)/(?P<user>\d+)/(?P<secret>[^/]+)/?$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Client-side leaky bucket that mirrors the portal's (2 req/s, burst 50 on plain plans)."""

    requests_per_second: float = 2.0
    burst: int = 50


@dataclass(frozen=True, slots=True)
class Bitrix24Config:
    name: str
    webhook_url: Secret
    users: tuple[int, ...] | None = None  # None = auto (every active employee)
    groups: tuple[int, ...] = (0,)
    roles: tuple[str, ...] = tuple(ROLES)
    interval: float = 60.0
    timeout: float = 10.0
    cycle_timeout: float = 900.0
    max_concurrency: int = 16
    rate_limit: RateLimit = field(default_factory=RateLimit)

    @property
    def masked_url(self) -> str:
        return mask_webhook(self.webhook_url.reveal())


@dataclass(frozen=True, slots=True)
class PachcaConfig:
    name: str
    token: Secret
    base_url: str = PACHCA_DEFAULT_URL
    interval: float = 60.0
    due_soon: float = 86400.0
    timeout: float = 10.0
    cycle_timeout: float = 600.0
    page_size: int = 50
    max_pages: int = 2000
    performer_names: bool | None = None  # None = auto: try GET /users, turn off on 403


@dataclass(frozen=True, slots=True)
class Config:
    bitrix24: tuple[Bitrix24Config, ...] = ()
    pachca: tuple[PachcaConfig, ...] = ()
    warnings: tuple[str, ...] = ()


def mask_webhook(url: str) -> str:
    """Hide the webhook secret: https://portal/rest/1/abcdef/ -> https://portal/rest/1/***/."""
    return re.sub(r"(/rest/\d+/)[^/]+", r"\1***", url)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem found."""
    env = os.environ if env is None else env
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"config file {path}: cannot read ({exc.strerror or exc})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise ConfigError([f"config file {path}: not valid YAML{where}: {problem}"]) from None
    return parse_config(raw, env)


def parse_config(raw: Any, env: Mapping[str, str]) -> Config:
    """Validate an already-parsed YAML document."""
    parser = _Parser(env)
    config = parser.document(raw)
    if parser.problems:
        raise ConfigError(parser.problems)
    return config


T = TypeVar("T")


class _Parser:
    """Walks the document once, collecting every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def fail(self, key: str, reason: str) -> None:
        self.problems.append(f"{key}: {reason}")

    def document(self, raw: Any) -> Config:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.fail("(top level)", f"must be a mapping with bitrix24 and/or pachca, got {_kind(raw)}")
            return Config()
        self._unknown_keys("(top level)", raw, {"bitrix24", "pachca"})
        b24 = self._sections("bitrix24", raw.get("bitrix24"), self._bitrix24)
        pachca = self._sections("pachca", raw.get("pachca"), self._pachca)
        return Config(bitrix24=tuple(b24), pachca=tuple(pachca), warnings=tuple(self.warnings))

    def _sections(self, key: str, raw: Any, build: Callable[[str, dict[str, Any], bool], T | None]) -> list[T]:
        if raw is None:
            return []
        if isinstance(raw, dict):
            items, listed = [(key, raw)], False
        elif isinstance(raw, list):
            items, listed = [(f"{key}[{i}]", item) for i, item in enumerate(raw)], True
            if not raw:
                self.fail(key, "is an empty list; remove the section or add an entry")
        else:
            self.fail(key, f"must be a mapping or a list of mappings, got {_kind(raw)}")
            return []
        built: list[T] = []
        for where, item in items:
            if not isinstance(item, dict):
                self.fail(where, f"must be a mapping, got {_kind(item)}")
                continue
            value = build(where, item, listed)
            if value is not None:
                built.append(value)
        names = [getattr(b, "name", "") for b in built]
        for name in sorted({n for n in names if names.count(n) > 1}):
            self.fail(key, f"name {name!r} is used twice; give each entry its own name")
        return built

    # --- sections -------------------------------------------------------------------------------

    def _bitrix24(self, where: str, raw: dict[str, Any], listed: bool) -> Bitrix24Config | None:
        self._unknown_keys(where, raw, {
            "name", "webhook_url", "webhook_url_file", "users", "groups", "roles", "interval", "timeout",
            "cycle_timeout", "max_concurrency", "rate_limit",
        })
        url = self._secret(where, raw, "webhook_url")
        host = ""
        if url is not None:
            host = self._check_webhook(f"{where}.webhook_url", url.reveal())
        name = self._name(where, raw, host, listed)
        users = self._users(f"{where}.users", raw.get("users", "auto"))
        groups = self._int_list(f"{where}.groups", raw.get("groups", [0]), minimum=0)
        roles = self._roles(f"{where}.roles", raw.get("roles", list(ROLES)))
        interval = self._duration(f"{where}.interval", raw.get("interval", "60s"))
        timeout = self._duration(f"{where}.timeout", raw.get("timeout", "10s"))
        cycle_timeout = self._duration(f"{where}.cycle_timeout", raw.get("cycle_timeout", "15m"))
        concurrency = self._int(f"{where}.max_concurrency", raw.get("max_concurrency", 16), minimum=1)
        rate = self._rate_limit(f"{where}.rate_limit", raw.get("rate_limit", {}))
        if url is None or None in (interval, timeout, cycle_timeout, concurrency, rate) or not groups or not roles:
            return None
        return Bitrix24Config(
            name=name, webhook_url=url, users=users, groups=tuple(groups), roles=tuple(roles),
            interval=interval, timeout=timeout, cycle_timeout=cycle_timeout,  # type: ignore[arg-type]
            max_concurrency=concurrency, rate_limit=rate,  # type: ignore[arg-type]
        )

    def _pachca(self, where: str, raw: dict[str, Any], listed: bool) -> PachcaConfig | None:
        self._unknown_keys(where, raw, {
            "name", "base_url", "token", "token_file", "interval", "due_soon", "timeout", "cycle_timeout",
            "page_size", "max_pages", "performer_names",
        })
        token = self._secret(where, raw, "token")
        base_url = self._string(f"{where}.base_url", raw.get("base_url", PACHCA_DEFAULT_URL))
        host = self._check_url(f"{where}.base_url", base_url) if base_url is not None else ""
        name = self._name(where, raw, host, listed)
        interval = self._duration(f"{where}.interval", raw.get("interval", "60s"))
        due_soon = self._duration(f"{where}.due_soon", raw.get("due_soon", "24h"))
        timeout = self._duration(f"{where}.timeout", raw.get("timeout", "10s"))
        cycle_timeout = self._duration(f"{where}.cycle_timeout", raw.get("cycle_timeout", "10m"))
        page_size = self._int(f"{where}.page_size", raw.get("page_size", 50), minimum=1, maximum=50)
        max_pages = self._int(f"{where}.max_pages", raw.get("max_pages", 2000), minimum=1)
        names = raw.get("performer_names", "auto")
        if names == "auto":
            performer_names: bool | None = None
        elif isinstance(names, bool):
            performer_names = names
        else:
            self.fail(f"{where}.performer_names", f"must be auto, true or false, got {names!r}")
            performer_names = None
        if token is None or base_url is None or None in (
            interval, due_soon, timeout, cycle_timeout, page_size, max_pages
        ):
            return None
        return PachcaConfig(
            name=name, token=token, base_url=base_url.rstrip("/"), interval=interval,  # type: ignore[arg-type]
            due_soon=due_soon, timeout=timeout, cycle_timeout=cycle_timeout,  # type: ignore[arg-type]
            page_size=page_size, max_pages=max_pages,  # type: ignore[arg-type]
            performer_names=performer_names,
        )

    # --- fields ---------------------------------------------------------------------------------

    def _unknown_keys(self, where: str, raw: dict[Any, Any], known: set[str]) -> None:
        for key in raw:
            if key not in known:
                hint = ", ".join(sorted(known))
                self.fail(f"{where}.{key}" if where != "(top level)" else str(key),
                          f"unknown key (expected one of: {hint})")

    def _string(self, key: str, raw: Any) -> str | None:
        if not isinstance(raw, str):
            self.fail(key, f"must be a string, got {_kind(raw)}")
            return None
        return self._expand(key, raw)

    def _expand(self, key: str, value: str) -> str | None:
        missing = [m for m in _ENV_REF.findall(value) if m not in self.env]
        if missing:
            self.fail(key, f"environment variable {missing[0]} is not set")
            return None
        return _ENV_REF.sub(lambda m: self.env[m.group(1)], value)

    def _secret(self, where: str, raw: dict[str, Any], key: str) -> Secret | None:
        """A secret comes inline (usually `${VAR}`) or from `<key>_file`, never both."""
        file_key = f"{key}_file"
        if key in raw and file_key in raw:
            self.fail(f"{where}.{key}", f"set either {key} or {file_key}, not both")
            return None
        if file_key in raw:
            path = self._string(f"{where}.{file_key}", raw[file_key])
            if path is None:
                return None
            try:
                value = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                self.fail(f"{where}.{file_key}", f"cannot read {path} ({exc.strerror or exc})")
                return None
            if not value:
                self.fail(f"{where}.{file_key}", f"{path} is empty")
                return None
            return Secret(value)
        if key not in raw:
            self.fail(f"{where}.{key}", f"is required (or set {file_key})")
            return None
        inline = self._string(f"{where}.{key}", raw[key])
        if inline is None:
            return None
        if not inline.strip():
            self.fail(f"{where}.{key}", "is empty")
            return None
        return Secret(inline.strip())

    def _check_url(self, key: str, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(key, "must be an http(s) URL with a host name")
            return ""
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            self.fail(key, "has an invalid port")
            return ""
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            self.warnings.append(f"{key}: plain http to {parts.hostname}: traffic and secrets are not encrypted")
        return parts.hostname

    def _check_webhook(self, key: str, url: str) -> str:
        host = self._check_url(key, mask_webhook(url))
        if host and not _WEBHOOK_PATH.match(urlsplit(url).path):
            self.fail(key, "must look like https://PORTAL/rest/USER_ID/SECRET/ (the incoming webhook address)")
            return ""
        return host

    def _name(self, where: str, raw: dict[str, Any], host: str, listed: bool) -> str:
        if "name" in raw:
            name = self._string(f"{where}.name", raw["name"])
            if name is not None and not name.strip():
                self.fail(f"{where}.name", "is empty")
            return (name or "").strip()
        return host

    def _users(self, key: str, raw: Any) -> tuple[int, ...] | None:
        if raw == "auto":
            return None
        if not isinstance(raw, list):
            self.fail(key, f"must be auto or a list of user ids, got {_kind(raw)}")
            return None
        ids = self._int_list(key, raw, minimum=1)
        if not ids:
            self.fail(key, "is empty; use auto or list at least one user id")
        return tuple(dict.fromkeys(ids))

    def _int_list(self, key: str, raw: Any, minimum: int) -> list[int]:
        if not isinstance(raw, list):
            self.fail(key, f"must be a list of integers, got {_kind(raw)}")
            return []
        values: list[int] = []
        for i, item in enumerate(raw):
            value = self._int(f"{key}[{i}]", item, minimum=minimum)
            if value is not None:
                values.append(value)
        if not raw:
            self.fail(key, "is empty")
        return values

    def _int(self, key: str, raw: Any, minimum: int, maximum: int | None = None) -> int | None:
        if isinstance(raw, str) and raw.strip().isdigit():
            raw = int(raw.strip())
        if isinstance(raw, bool) or not isinstance(raw, int):
            self.fail(key, f"must be an integer, got {_kind(raw)}")
            return None
        if raw < minimum or (maximum is not None and raw > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            self.fail(key, f"must be {bound}, got {raw}")
            return None
        return raw

    def _roles(self, key: str, raw: Any) -> list[str]:
        if not isinstance(raw, list) or not raw:
            self.fail(key, f"must be a non-empty list of roles ({', '.join(ROLES)})")
            return []
        roles: list[str] = []
        for i, role in enumerate(raw):
            if role not in ROLES:
                self.fail(f"{key}[{i}]", f"unknown role {role!r} (expected one of: {', '.join(ROLES)})")
            elif role not in roles:
                roles.append(role)
        return roles

    def _duration(self, key: str, raw: Any) -> float | None:
        seconds = parse_duration(raw)
        if seconds is None:
            self.fail(key, f"invalid duration {raw!r} (use e.g. 30s, 5m, 1h30m)")
        elif seconds <= 0:
            self.fail(key, f"must be positive, got {raw!r}")
            return None
        return seconds

    def _rate_limit(self, key: str, raw: Any) -> RateLimit | None:
        if not isinstance(raw, dict):
            self.fail(key, f"must be a mapping with requests_per_second and burst, got {_kind(raw)}")
            return None
        self._unknown_keys(key, raw, {"requests_per_second", "burst"})
        rps = raw.get("requests_per_second", 2.0)
        if isinstance(rps, bool) or not isinstance(rps, int | float) or not math.isfinite(rps) or rps <= 0:
            self.fail(f"{key}.requests_per_second", f"must be a positive number, got {rps!r}")
            return None
        burst = self._int(f"{key}.burst", raw.get("burst", 50), minimum=1)
        if burst is None:
            return None
        return RateLimit(requests_per_second=float(rps), burst=burst)


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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
