"""How both API clients send one request: wait for the client-side rate limit, send within a timeout, read the
whole answer, and count what came back. A missing answer and a redirect become ApiErrors here, before any
decoding. The one HTTP stack of exporter/sources (aiohttp's client) is set up here too."""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import certifi
import orjson
import structlog
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from exporter.errors import ApiError
from exporter.ratelimit import LeakyBucket
from exporter.snapshot import ApiTelemetry

HEADERS = {"Accept": "application/json", "User-Agent": "tasks-exporter"}
JSON_BODY = {"Content-Type": "application/json"}

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Answer:
    """An API's answer, read whole within the request's timeout (never a redirect: that is an ApiError)."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes

    def content_type(self) -> str:
        return self.headers.get("Content-Type", "unknown").split(";")[0]

    def json(self) -> Any:
        """The body decoded, or None when it is not JSON (HTML from a proxy, a truncated answer, not UTF-8).
        orjson: a steady-state cycle of a 100-user portal takes ~15 % less CPU than with json (bench/RESULTS.md)."""
        try:
            return orjson.loads(self.body)
        except ValueError:  # orjson.JSONDecodeError, invalid UTF-8 included
            return None


async def pace(bucket: LeakyBucket, telemetry: ApiTelemetry) -> None:
    """Wait for room in the client-side bucket. This is pacing, not a fault: it happens before the request
    is sent, so it counts neither against the request's timeout nor against its retry budget."""
    waited = await bucket.acquire()
    if waited:
        telemetry.waited(waited)


class Sender:
    """Sends one API target's requests over kept connections: at most `connections` at once, an idle one kept
    `keepalive` seconds (one the server closed meanwhile is dropped before it is used, and a new one opened).

    The aiohttp session is made on the first request (aiohttp needs a running loop; sources are built before
    one runs) and closed by `aclose`. Each URL is parsed, and its proxy looked up in the environment
    (HTTPS_PROXY, NO_PROXY...), once, not per request; no cookies are kept (the credential is in the URL or a
    header)."""

    def __init__(self, telemetry: ApiTelemetry, *, timeout: float, connections: int = 100,
                 keepalive: float = 5.0, headers: Mapping[str, str] | None = None) -> None:
        self._telemetry = telemetry
        self._timeout = timeout
        self._connections = connections
        self._keepalive = keepalive
        self._headers = {**HEADERS, **(headers or {})}
        self._session: aiohttp.ClientSession | None = None
        self._targets: dict[str, _Target] = {}  # by URL: a client asks for a handful (its methods or paths)
        self._closed = False

    async def send(self, method: str, verb: str, url: str, *, json: Any = None,
                   params: Mapping[str, str] | None = None) -> Answer:
        """Send (with `json` as the JSON body, if any) within `timeout` seconds for the whole exchange, the
        answer's body included (aiohttp's own timeouts are per phase, so a server that trickles bytes would
        never trip them); timeouts and network errors become retryable ApiErrors, a redirect a final one
        (`redirected`). `method` names the request in the telemetry."""
        session = self._open() if self._session is None else self._session
        body = None if json is None else orjson.dumps(json)
        target = self._targets.get(url) or self._target(url)
        try:
            async with asyncio.timeout(self._timeout), session.request(
                    verb, target.url, data=body, params=params, headers=None if body is None else JSON_BODY,
                    allow_redirects=False, proxy=target.proxy, proxy_auth=target.proxy_auth) as response:
                content = await response.read()
                status, location = response.status, response.headers.get("Location")
        except TimeoutError:
            self._telemetry.request(method, "timeout")
            raise ApiError("timeout", f"no answer within {self._timeout:g}s", retryable=True) from None
        except (aiohttp.ClientError, OSError) as exc:  # the exception's text may carry the URL: its type only
            self._telemetry.request(method, "network_error")
            raise ApiError("network_error", type(exc).__name__, retryable=True) from None
        log.debug("api_request", method=method, status=status, bytes=len(content))
        if 300 <= status < 400:
            raise refused(self._telemetry, method, redirected(status, target.url, location))
        return Answer(status, response.headers, content)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the API client is closed")
        connector = aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=self._keepalive,
                                         ssl=shared_tls())
        session = aiohttp.ClientSession(connector=connector, headers=self._headers,
                                        timeout=aiohttp.ClientTimeout(), cookie_jar=aiohttp.DummyCookieJar())
        # aiohttp sends a GET again by itself when its connection fails: a request the telemetry would not
        # count and the bucket would not pace; the retry policy decides instead (aiohttp's client.py)
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False
        self._session = session
        return session

    def _target(self, url: str) -> _Target:
        parsed = URL(url)
        try:
            proxy, proxy_auth = get_env_proxy_for_url(parsed)
        except LookupError:
            proxy, proxy_auth = None, None
        target = self._targets[url] = _Target(parsed, proxy, proxy_auth)
        return target


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL a client sends to, parsed, with the proxy the environment names for it."""

    url: URL
    proxy: URL | None
    proxy_auth: aiohttp.BasicAuth | None


def refused(telemetry: ApiTelemetry, method: str, error: ApiError) -> ApiError:
    """Count an answer that is an error, by its reason and its code; returns the error for the caller to raise."""
    telemetry.request(method, error.reason)
    telemetry.error(error.code)
    return error


def redirected(status: int, url: URL, location: str | None) -> ApiError:
    """A 3xx answer, which is never followed: the request carries its credential (the Bitrix24 webhook secret
    in the path, the Pachca token in a header), and following would send it to whatever host the Location
    names (docs/api-notes.md#b24-webhook-url). The error names that host, never the Location's path."""
    try:
        host = url.join(URL(location)).host if location else ""
    except (ValueError, TypeError):
        host = ""
    where = f"to {host}" if host else "without a usable Location"
    return ApiError(f"http_{status}", f"HTTP {status} redirect {where}, not followed (it would carry the "
                    "credentials there); if the address moved, update the config", status=status,
                    reason="api_error")


@functools.cache
def shared_tls() -> ssl.SSLContext:
    """One TLS context for every client: each would otherwise load the CA bundle into a context of its own,
    ~0.8 MB per portal. The CA bundle is certifi's, or the one SSL_CERT_FILE or SSL_CERT_DIR names (as httpx,
    the client before aiohttp, did)."""
    if cafile := os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=cafile)
    if capath := os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=capath)
    return ssl.create_default_context(cafile=certifi.where())
