"""`--web.config.file` in the Prometheus exporter-toolkit format: TLS, bcrypt basic auth, response headers and
a request rate limit. Every key of the format is declared below; one Python's ssl module cannot honour is
refused with a line that names it. exporter/tls.py turns tls_server_config into an SSL context; exporter/webwatch.py
keeps the file in force as it changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import bcrypt

from exporter.errors import ConfigError
from exporter.kinds import integer, mapping_of, optional, parse_duration
from exporter.schema import (
    FILE_PATH,
    TEXT,
    Invalid,
    Kind,
    Reader,
    Secret,
    join,
    kind_of,
    parse_document,
    read_yaml,
    section,
)
from exporter.schema import key as declare  # `key` is a key of tls_server_config
from exporter.tls import (
    CIPHERS,
    CLIENT_AUTH,
    CURVES,
    TLS13_CIPHERS,
    TLS_VERSIONS,
    UNVERIFIED_CLIENT_AUTH,
    server_context,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")
# exporter-toolkit's extraHTTPHeaders: the only headers a web config may add, some only with these values
HEADERS: Mapping[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (), "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"), "X-XSS-Protection": (), "Content-Security-Policy": (),
}
OPEN_PATHS = frozenset({"/healthz", "/ready"})


# --- kinds of the keys below ---------------------------------------------------------------------


def _bcrypt_hash(_reader: Reader, _path: str, raw: Any) -> bytes:
    if not isinstance(raw, str) or not raw.startswith(("$2a$", "$2b$", "$2y$")):
        raise Invalid("must be a bcrypt hash ($2y$...)")
    return raw.replace("$2y$", "$2b$", 1).encode()


def _boolean(_reader: Reader, _path: str, raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise Invalid(f"must be true or false, got {kind_of(raw)}")
    return raw


def _strings(reader: Reader, path: str, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise Invalid(f"must be a list of strings, got {kind_of(raw)}")
    return tuple(TEXT.parse(reader, path, item) for item in raw)


def _names(choices: Mapping[str, object] | tuple[str, ...], noun: str) -> Kind[tuple[str, ...]]:
    """A list of names drawn from `choices`, in preference order (an empty list: the defaults)."""
    def parse(reader: Reader, path: str, raw: Any) -> tuple[str, ...]:
        names = _strings(reader, path, raw)
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise Invalid(f"unknown {noun} {unknown[0]!r} (expected one of: {', '.join(choices)})")
        return tuple(dict.fromkeys(names))

    return Kind(parse, f"list of {noun}s: " + ", ".join(f"`{n}`" for n in choices), lambda v: ", ".join(v) or "[]")


def _client_auth(_reader: Reader, _path: str, raw: Any) -> str:
    if raw in UNVERIFIED_CLIENT_AUTH:
        raise Invalid(f"{raw} is not supported: Python's ssl module verifies every client certificate it asks "
                      "for; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file")
    if raw not in CLIENT_AUTH:
        raise Invalid(f"unknown value {raw!r} (expected one of: {', '.join(CLIENT_AUTH)})")
    return str(raw)


def _version(_reader: Reader, _path: str, raw: Any) -> str:
    if raw not in TLS_VERSIONS:
        raise Invalid(f"unknown value {raw!r} (expected one of: {', '.join(TLS_VERSIONS)})")
    return str(raw)


def _pem(reader: Reader, path: str, raw: Any) -> Secret:
    return Secret(TEXT.parse(reader, path, raw))


def _headers(reader: Reader, path: str, raw: Any) -> dict[str, str]:
    """exporter-toolkit's validateHeaderConfig: names from HEADERS only (exact spelling), enumerated values."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise Invalid(f"must be a mapping of header name to value, got {kind_of(raw)}")
    headers: dict[str, str] = {}
    problems = len(reader.problems)
    for name, value in raw.items():
        where = join(path, str(name))
        allowed = HEADERS.get(str(name))
        if allowed is None:
            reader.fail(where, f"cannot be configured (allowed: {', '.join(HEADERS)})")
        elif not isinstance(value, str) or "\n" in value or "\r" in value:
            reader.fail(where, f"must be one line of text, got {kind_of(value)}")
        elif allowed and value not in allowed:
            reader.fail(where, f"must be one of: {', '.join(allowed)}, got {value!r}")
        elif value:  # blank: unset, as in exporter-toolkit
            headers[str(name)] = value
    if len(reader.problems) > problems:
        raise Invalid()
    return headers


def _http2(reader: Reader, path: str, raw: Any) -> bool:
    if _boolean(reader, path, raw):
        reader.warn(path, "HTTP/2 is not available (the server speaks HTTP/1.1 only); clients use HTTP/1.1")
    return bool(raw)


def _interval(_reader: Reader, _path: str, raw: Any) -> float:
    seconds = parse_duration(raw)
    if seconds is None or seconds < 0:
        raise Invalid(f"invalid duration {raw!r} (use e.g. 100ms, 1s; 0 turns the limit off)")
    return seconds


def _checked(cls: type[D], problems: Callable[[D], list[tuple[str, str]]]) -> Kind[D]:
    """A section whose keys are also checked together: `problems` gives (key, reason) pairs."""
    inner = section(cls)

    def parse(reader: Reader, path: str, raw: Any) -> D:
        value = inner.parse(reader, path, raw)
        found = problems(value)
        for name, reason in found:
            reader.fail(join(path, name), reason)
        if found:
            raise Invalid()
        return value

    return Kind(parse, inner.shape, inner.show, inner.nested)


PEM: Kind[Secret] = Kind(_pem, "PEM text")
BOOLEAN: Kind[bool] = Kind(_boolean, "`true` or `false`", lambda v: str(v).lower())
STRINGS: Kind[tuple[str, ...]] = Kind(_strings, "list of strings", lambda v: ", ".join(v) or "[]")


# --- the format ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsServerConfig:
    """exporter-toolkit's tls_server_config. Relative file paths are taken from the web config's folder."""

    cert_file: str | None = field(default=None, metadata=declare(
        optional(FILE_PATH), "Server certificate (PEM), intermediates after it. Required unless `cert` is set."))
    key_file: str | None = field(default=None, metadata=declare(
        optional(FILE_PATH), "Its private key (PEM). Required unless `key` is set."))
    cert: Secret | None = field(default=None, metadata=declare(
        optional(PEM), "The certificate inline, instead of `cert_file`."))
    key: Secret | None = field(default=None, metadata=declare(optional(PEM), "The key inline, instead of `key_file`."))
    client_auth_type: str = field(default="NoClientCert", metadata=declare(
        Kind(_client_auth, "`NoClientCert`, `VerifyClientCertIfGiven` or `RequireAndVerifyClientCert`"),
        "Whether clients must present a certificate that chains to the client CA. exporter-toolkit's "
        "`RequestClientCert` and `RequireAnyClientCert` (a certificate that is not verified) are refused."))
    client_ca_file: str | None = field(default=None, metadata=declare(
        optional(FILE_PATH), "CA certificates that client certificates must chain to (without one: the "
        "system's)."))
    client_ca: Secret | None = field(default=None, metadata=declare(
        optional(PEM), "The client CA certificates inline, instead of `client_ca_file`."))
    client_allowed_sans: tuple[str, ...] = field(default=(), metadata=declare(
        STRINGS, "A client certificate must carry one of these subject alternative names (DNS, IP, e-mail or "
        "URI); others are answered 403."))
    min_version: str = field(default="TLS12", metadata=declare(
        Kind(_version, "`TLS10`, `TLS11`, `TLS12` or `TLS13`"), "Oldest TLS version accepted."))
    max_version: str = field(default="TLS13", metadata=declare(
        Kind(_version, "`TLS10`, `TLS11`, `TLS12` or `TLS13`"), "Newest TLS version accepted."))
    cipher_suites: tuple[str, ...] = field(default=(), metadata=declare(
        _names((*CIPHERS, *TLS13_CIPHERS), "Go cipher suite name"),
        "Cipher suites for TLS 1.2 and older, by Go's names (as in exporter-toolkit); empty: OpenSSL's "
        "defaults. TLS 1.3 suites are not configurable."))
    prefer_server_cipher_suites: bool = field(default=True, metadata=declare(
        BOOLEAN, "Pick the cipher suite by the server's order (`cipher_suites`) rather than the client's."))
    curve_preferences: tuple[str, ...] = field(default=(), metadata=declare(
        _names(tuple(CURVES), "curve"), "The one elliptic curve for key exchange; empty: OpenSSL's "
        "defaults. Python's ssl module sets a single curve, so a list of more is refused."))


@dataclass(frozen=True, slots=True)
class HttpServerConfig:
    """exporter-toolkit's http_server_config."""

    http2: bool = field(default=True, metadata=declare(
        Kind(_http2, "`true` or `false`", lambda v: str(v).lower()),
        "Accepted for compatibility; the server speaks HTTP/1.1 only (`true` is logged as a warning)."))
    headers: Mapping[str, str] = field(default_factory=dict, metadata=declare(
        Kind(_headers, "mapping of header name to value", lambda v: ", ".join(v) or "none"),
        "Headers added to every answer: " + ", ".join(f"`{h}`" for h in HEADERS) + " only (as in exporter-"
        "toolkit); `X-Content-Type-Options` takes `nosniff`, `X-Frame-Options` `deny` or `sameorigin`."))


@dataclass(frozen=True, slots=True)
class RequestRateLimit:
    """exporter-toolkit's rate_limit: a token bucket over every request but the probes."""

    interval: float = field(default=0.0, metadata=declare(
        Kind(_interval, "duration (100ms, 1s)", lambda v: f"{v:g}s"),
        "Time between two requests on average; 0: no limit. Requests over it are answered 429."))
    burst: int = field(default=0, metadata=declare(integer(0), "Requests allowed at once."))


@dataclass(frozen=True, slots=True)
class WebConfig:
    """How the exporter serves HTTP: TLS, and the basic auth, rate limit and headers of every answer."""

    tls_server_config: TlsServerConfig | None = field(default=None, metadata=declare(
        optional(_checked(TlsServerConfig, lambda tls: _tls_problems(tls))), "Serve HTTPS instead of HTTP."))
    basic_auth_users: Mapping[str, bytes] = field(default_factory=dict, metadata=declare(
        mapping_of(Kind(_bcrypt_hash, "bcrypt hash"), "mapping of user name to bcrypt hash"),
        "Require HTTP basic auth on every path but /healthz and /ready (probes carry no credentials)."))
    http_server_config: HttpServerConfig = field(default_factory=HttpServerConfig, metadata=declare(
        section(HttpServerConfig), "HTTP options."))
    rate_limit: RequestRateLimit = field(default_factory=RequestRateLimit, metadata=declare(
        _checked(RequestRateLimit, lambda limit: _rate_limit_problems(limit)),
        "Limit the request rate on every path but /healthz and /ready."))
    path: str = field(default="", compare=False)  # not a key: the file it was read from
    warnings: tuple[str, ...] = field(default=(), compare=False)  # not a key: what parsing accepted with a note
    _verified: set[bytes] = field(default_factory=set, init=False, compare=False, repr=False)

    @property
    def has_tls(self) -> bool:
        return self.tls_server_config is not None

    @property
    def has_auth(self) -> bool:
        return bool(self.basic_auth_users)

    @property
    def files(self) -> tuple[str, ...]:
        """The files this config was read from: when one changes, the config is read again."""
        tls = self.tls_server_config
        named = (tls.cert_file, tls.key_file, tls.client_ca_file) if tls else ()
        return tuple(p for p in (self.path, *named) if p)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A fresh server context; raises ConfigError naming the key whose file or value OpenSSL refused."""
        tls = self.tls_server_config
        return None if tls is None else server_context(tls)

    def check(self, header: str | None) -> bool:
        """Basic auth check; a verified credential is remembered (as a digest) so bcrypt runs once."""
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.basic_auth_users.get(user)
        if hashed is None:
            return False
        digest = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        if any(hmac.compare_digest(digest, seen) for seen in self._verified):
            return True
        if bcrypt.checkpw(password.encode("utf-8"), hashed):
            self._verified.add(digest)
            return True
        return False


def _tls_problems(tls: TlsServerConfig) -> list[tuple[str, str]]:
    """What exporter-toolkit refuses across keys, and what Python's ssl module cannot do."""
    found: list[tuple[str, str]] = []
    for file_key, inline_key in (("cert_file", "cert"), ("key_file", "key"), ("client_ca_file", "client_ca")):
        from_file, inline = getattr(tls, file_key), getattr(tls, inline_key)
        if from_file is not None and inline is not None:
            found.append((file_key, f"set either {file_key} or {inline_key}, not both"))
        elif from_file is None and inline is None and file_key != "client_ca_file":
            found.append((file_key, f"is required (or set {inline_key})"))
    has_ca = tls.client_ca_file is not None or tls.client_ca is not None
    if has_ca and tls.client_auth_type == "NoClientCert":
        found.append(("client_auth_type", "is NoClientCert but a client CA is set; use RequireAndVerifyClientCert "
                                          "(or VerifyClientCertIfGiven)"))
    if tls.client_allowed_sans and tls.client_auth_type == "NoClientCert":
        found.append(("client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert "
                                             "(or VerifyClientCertIfGiven)"))
    if TLS_VERSIONS[tls.max_version] < TLS_VERSIONS[tls.min_version]:
        found.append(("max_version", f"{tls.max_version} is older than min_version {tls.min_version}"))
    if len(tls.curve_preferences) > 1:
        found.append(("curve_preferences", f"lists {len(tls.curve_preferences)} curves; Python's ssl module sets "
                                           "a single one, so list one"))
    return found


def _rate_limit_problems(limit: RequestRateLimit) -> list[tuple[str, str]]:
    if limit.interval > 0 and limit.burst < 1:
        return [("burst", "must be at least 1 when interval is set (0 would refuse every request)")]
    return []


def load_web_config(path: str) -> WebConfig:
    """Parse and validate the file, including that its TLS files load; raises ConfigError, one line a problem."""
    where = f"web config {path}"
    raw = read_yaml(path, where)
    try:
        config, warnings = parse_document(raw, WebConfig, env=None)  # exporter-toolkit expands no ${VAR}
        config = replace(config, tls_server_config=_relative_to(Path(path).parent, config.tls_server_config),
                         path=path, warnings=tuple(f"{where}: {w}" for w in warnings))
        config.ssl_context()
    except ConfigError as exc:
        raise ConfigError([f"{where}: {problem}" for problem in exc.problems]) from None
    return config


def _relative_to(folder: Path, tls: TlsServerConfig | None) -> TlsServerConfig | None:
    """Relative paths are taken from the web config's folder, as exporter-toolkit does."""
    if tls is None:
        return None
    def resolve(path: str | None) -> str | None:
        return None if path is None else str(folder / path)

    return replace(tls, cert_file=resolve(tls.cert_file), key_file=resolve(tls.key_file),
                   client_ca_file=resolve(tls.client_ca_file))
