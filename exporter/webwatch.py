"""The web config in force, and what it does to every connection and answer.

Like exporter-toolkit, which reads its web config on every request and TLS handshake, the file is read again
when it, or a certificate, key or CA file it names, has changed (a stat per file per new connection and per
request): a renewed certificate is served from the next handshake on, without a restart or a reload.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from exporter.errors import ConfigError
from exporter.webconfig import OPEN_PATHS, RequestRateLimit, WebConfig, load_web_config

log = structlog.get_logger()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Signature = tuple[tuple[int, int, int, int] | None, ...]


class LiveWebConfig:
    """Holds the WebConfig in force and its server TLS context; swaps both when their files change.

    A change that cannot be loaded (a certificate written before its key, a typo) is logged once as
    `web_config_reload_failed`; the last good config stays in force, and the files are tried again at most
    once a second (two writes within one tick of the file system's clock may leave the same mtime).
    """

    def __init__(self, config: WebConfig, retry_after: float = 1.0) -> None:
        self._config = config
        self._context = config.ssl_context()
        self._signature = _signature(config.files)
        self._limiter = RequestLimiter(config.rate_limit)
        self._retry_after = retry_after
        self._failed: tuple[Signature, float] | None = None  # the files that did not load, and when

    def current(self) -> WebConfig:
        """The config in force, read again first when one of its files changed since it was loaded."""
        signature = _signature(self._config.files)
        if signature == self._signature:
            return self._config
        now = time.monotonic()
        if self._failed is not None and self._failed[0] == signature and now - self._failed[1] < self._retry_after:
            return self._config
        try:
            self.install(self.load())
        except ConfigError as exc:
            if self._failed is None or self._failed[0] != signature:
                log.error("web_config_reload_failed", trigger="file_changed", problems=exc.problems,
                          hint="the last good web config stays in force")
            self._failed = (signature, now)
        else:
            log.info("web_config_reloaded", trigger="file_changed")
        return self._config

    def load(self) -> WebConfig:
        """The file as it is now, validated; raises ConfigError. Nothing changes until `install`."""
        config = load_web_config(self._config.path)
        if config.has_tls != self._config.has_tls:
            raise ConfigError([f"web config {config.path}: tls_server_config: switching between HTTP and HTTPS "
                               "needs a restart"])
        return config

    def install(self, config: WebConfig) -> None:
        context = config.ssl_context()
        for warning in config.warnings:
            log.warning("web_config_warning", detail=warning)
        if config.rate_limit != self._config.rate_limit:
            self._limiter = RequestLimiter(config.rate_limit)
        self._config, self._context = config, context
        self._signature = _signature(config.files)
        self._failed = None

    def tls_context(self) -> ssl.SSLContext | None:
        """The server context of the config in force: a new connection's handshake uses it."""
        self.current()
        return self._context

    def ssl_context(self) -> ssl.SSLContext | None:
        """What the listening socket is given: it hands each new connection to `tls_context()`."""
        return ReloadingContext(self) if self._context is not None else None

    def middleware(self) -> Middleware:
        """Client certificate SANs, the request rate limit and basic auth, by the config in force."""
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            config = self.current()
            tls = config.tls_server_config
            if tls is not None and tls.client_allowed_sans and not _san_allowed(request, tls.client_allowed_sans):
                return web.Response(status=403, text="Forbidden: client certificate has no allowed SAN\n")
            # probes (container HEALTHCHECK, kubelet) carry no credentials; these two paths reveal nothing
            if request.path in OPEN_PATHS:
                return await handler(request)
            if not self._limiter.allow():
                return web.Response(status=429, text="Too Many Requests\n")
            if config.has_auth and not config.check(request.headers.get("Authorization")):
                return web.Response(status=401, text="Unauthorized\n",
                                    headers={"WWW-Authenticate": 'Basic realm="tasks-exporter"'})
            return await handler(request)
        return guard

    async def add_headers(self, _request: web.Request, response: web.StreamResponse) -> None:
        """aiohttp's on_response_prepare: http_server_config.headers on every answer, errors included."""
        response.headers.update(self._config.http_server_config.headers)


class ReloadingContext(ssl.SSLContext):
    """The context the listening socket holds. asyncio wraps every accepted connection with `wrap_bio`, which
    here hands the connection to the context of the web config in force: certificate, versions, client CA and
    ciphers all follow the files."""

    _live: LiveWebConfig

    def __new__(cls, live: LiveWebConfig) -> ReloadingContext:
        context = super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)
        context._live = live
        return context

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None
                 ) -> ssl.SSLObject:
        context = self._live.tls_context()
        assert context is not None  # switching between HTTP and HTTPS is refused (LiveWebConfig.load)
        return context.wrap_bio(incoming, outgoing, server_side, server_hostname, session)


class RequestLimiter:
    """exporter-toolkit's rate_limit (Go's rate.Limiter): a bucket of `burst` tokens, one back per `interval`."""

    def __init__(self, limit: RequestRateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._tokens = float(limit.burst)
        self._updated = clock()

    def allow(self) -> bool:
        if self._limit.interval <= 0:
            return True
        now = self._clock()
        self._tokens = min(float(self._limit.burst), self._tokens + (now - self._updated) / self._limit.interval)
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def _signature(paths: tuple[str, ...]) -> Signature:
    """What tells a changed file: a new inode (a renamed-over or re-linked file), mtime or size."""
    return tuple(_stat(path) for path in paths)


def _stat(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def _san_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """exporter-toolkit's VerifyPeerCertificate: one of the certificate's SANs is listed (IPs compared as
    addresses). No certificate at all (VerifyClientCertIfGiven) is refused too, as in exporter-toolkit."""
    transport = request.transport
    cert: Any = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return False
    wanted = {_normal(value) for value in allowed}
    return any(_normal(value) in wanted for _, value in cert.get("subjectAltName", ()))


def _normal(value: str) -> str:
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        return value
