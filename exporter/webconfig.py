"""`--web.config.file` in the Prometheus exporter-toolkit format: TLS and bcrypt basic auth."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Middleware

from exporter.errors import ConfigError
from exporter.kinds import mapping_of, one_of, optional
from exporter.schema import FILE_PATH, Invalid, Kind, Reader, key, parse_document, read_yaml, section

_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_OPTIONAL,
                "RequireAnyClientCert": ssl.CERT_REQUIRED, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
OPEN_PATHS = frozenset({"/healthz", "/ready"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bcrypt_hash(_reader: Reader, _path: str, raw: Any) -> bytes:
    if not isinstance(raw, str) or not raw.startswith(("$2a$", "$2b$", "$2y$")):
        raise Invalid("must be a bcrypt hash ($2y$...)")
    return raw.replace("$2y$", "$2b$", 1).encode()


def _anything(_reader: Reader, _path: str, raw: Any) -> object:
    return raw


@dataclass(frozen=True, slots=True)
class TlsServerConfig:
    """exporter-toolkit's tls_server_config; the files are loaded once before the server starts."""

    cert_file: str = field(metadata=key(FILE_PATH, "Server certificate (PEM), intermediates after it."))
    key_file: str = field(metadata=key(FILE_PATH, "Its private key (PEM)."))
    client_ca_file: str | None = field(default=None, metadata=key(
        optional(FILE_PATH), "CA certificates that client certificates must chain to."))
    client_auth_type: str = field(default="NoClientCert", metadata=key(
        one_of(list(_CLIENT_AUTH)), "Whether clients must present a certificate, as in exporter-toolkit."))
    min_version: str = field(default="TLS12", metadata=key(
        one_of(list(_TLS_VERSIONS)), "Oldest TLS version accepted."))


@dataclass(frozen=True, slots=True)
class WebConfig:
    """How the exporter serves HTTP: TLS, and basic auth that `middleware()` enforces."""

    tls_server_config: TlsServerConfig | None = field(default=None, metadata=key(
        optional(section(TlsServerConfig)), "Serve HTTPS instead of HTTP."))
    basic_auth_users: Mapping[str, bytes] = field(default_factory=dict, metadata=key(
        mapping_of(Kind(_bcrypt_hash, "bcrypt hash"), "mapping of user name to bcrypt hash"),
        "Require HTTP basic auth on every path but /healthz and /ready (probes carry no credentials)."))
    http_server_config: Mapping[str, object] = field(default_factory=dict, metadata=key(
        mapping_of(Kind(_anything, "anything"), "mapping"), "Accepted for exporter-toolkit compatibility; not used."))
    _verified: set[bytes] = field(default_factory=set, init=False, compare=False, repr=False)

    @property
    def has_tls(self) -> bool:
        return self.tls_server_config is not None

    @property
    def has_auth(self) -> bool:
        return bool(self.basic_auth_users)

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.tls_server_config
        if tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        ctx.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
        if tls.client_ca_file:
            ctx.load_verify_locations(tls.client_ca_file)
        return ctx

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

    def middleware(self) -> Middleware:
        @web.middleware
        async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            # probes (container HEALTHCHECK, kubelet) carry no credentials; these two paths reveal nothing
            if request.path not in OPEN_PATHS and not self.check(request.headers.get("Authorization")):
                return web.Response(status=401, text="Unauthorized\n",
                                    headers={"WWW-Authenticate": 'Basic realm="tasks-exporter"'})
            return await handler(request)
        return basic_auth


def load_web_config(path: str) -> WebConfig:
    """Parse and validate the file, including that TLS files load; raises ConfigError."""
    where = f"web config {path}"
    raw = read_yaml(path, where)
    try:
        config, _ = parse_document(raw, WebConfig, env=None)  # exporter-toolkit expands no ${VAR}
    except ConfigError as exc:
        raise ConfigError([f"{where}: {problem}" for problem in exc.problems]) from None
    try:
        config.ssl_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"{where}: tls_server_config: cannot load certificate or key ({exc})"]) from None
    return config
