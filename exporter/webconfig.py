"""`--web.config.file` in the Prometheus exporter-toolkit format: TLS and bcrypt basic auth."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from aiohttp import web
from aiohttp.typedefs import Middleware

from exporter.errors import ConfigError

_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_OPTIONAL,
                "RequireAnyClientCert": ssl.CERT_REQUIRED, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
OPEN_PATHS = frozenset({"/healthz", "/ready"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class WebConfig:
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    _verified: set[bytes] = field(default_factory=set, compare=False, repr=False)

    @property
    def has_tls(self) -> bool:
        return self.cert_file is not None

    @property
    def has_auth(self) -> bool:
        return bool(self.users)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.has_tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = _TLS_VERSIONS[self.min_version]
        ctx.load_cert_chain(self.cert_file or "", self.key_file)
        ctx.verify_mode = _CLIENT_AUTH[self.client_auth_type]
        if self.client_ca_file:
            ctx.load_verify_locations(self.client_ca_file)
        return ctx

    def check(self, header: str | None) -> bool:
        """Basic auth check; a verified credential is remembered (as a digest) so bcrypt runs once."""
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
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
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read ({exc.strerror or exc})"]) from None
    except yaml.YAMLError:
        raise ConfigError([f"{where}: not valid YAML"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{where}: must be a mapping"])
    problems: list[str] = []
    known = {"tls_server_config", "basic_auth_users", "http_server_config"}
    problems += [f"{where}: {k}: unknown key (expected one of: {', '.join(sorted(known))})"
                 for k in raw if k not in known]
    tls = _mapping(raw.get("tls_server_config"), f"{where}: tls_server_config", problems)
    users_raw = _mapping(raw.get("basic_auth_users"), f"{where}: basic_auth_users", problems)
    users: dict[str, bytes] = {}
    for user, hashed in users_raw.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            problems.append(f"{where}: basic_auth_users.{user}: must be a bcrypt hash ($2y$...)")
        else:
            users[str(user)] = hashed.replace("$2y$", "$2b$", 1).encode()
    config = WebConfig(users=users)
    if tls:
        config = _tls(tls, where, problems, users)
    if problems:
        raise ConfigError(problems)
    try:
        config.ssl_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"{where}: tls_server_config: cannot load certificate or key ({exc})"]) from None
    return config


def _tls(tls: dict[str, Any], where: str, problems: list[str], users: dict[str, bytes]) -> WebConfig:
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if not isinstance(cert, str) or not isinstance(key, str):
        problems.append(f"{where}: tls_server_config: cert_file and key_file are both required")
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in _CLIENT_AUTH:
        problems.append(f"{where}: tls_server_config.client_auth_type: unknown value {auth!r}")
    version = tls.get("min_version", "TLS12")
    if version not in _TLS_VERSIONS:
        problems.append(f"{where}: tls_server_config.min_version: unknown value {version!r}")
    ca = tls.get("client_ca_file")
    return WebConfig(cert_file=cert if isinstance(cert, str) else None,
                     key_file=key if isinstance(key, str) else None,
                     client_ca_file=ca if isinstance(ca, str) else None,
                     client_auth_type=auth if auth in _CLIENT_AUTH else "NoClientCert",
                     min_version=version if version in _TLS_VERSIONS else "TLS12", users=users)


def _mapping(raw: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping")
        return {}
    return raw
