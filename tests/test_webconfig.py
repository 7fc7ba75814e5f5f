"""--web.config.file: TLS and bcrypt basic auth in the exporter-toolkit format, validated up front."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from exporter import log
from exporter.app import running
from exporter.config import Config
from exporter.errors import ConfigError
from exporter.webconfig import load_web_config
from tests.conftest import der_of, eventually, make_certificate, served_certificate


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


async def test_tls_and_basic_auth_protect_every_endpoint(tmp_path, certificate):
    cert, key = certificate
    hashed = bcrypt.hashpw(b"s3cret-pass", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$")
    web = load_web_config(write(tmp_path, f"""
tls_server_config:
  cert_file: {cert}
  key_file: {key}
basic_auth_users:
  prometheus: {hashed}
"""))
    context = ssl.create_default_context(cafile=str(cert))
    async with running(Config(), web_config=web) as exp, httpx.AsyncClient(verify=context) as client:
        assert exp.url.startswith("https://")
        assert (await client.get(f"{exp.url}/metrics")).status_code == 401
        wrong = await client.get(f"{exp.url}/metrics", auth=("prometheus", "nope"))
        assert wrong.status_code == 401
        ok = await client.get(f"{exp.url}/metrics", auth=("prometheus", "s3cret-pass"))
        assert ok.status_code == 200
        assert "tasks_exporter_build_info" in ok.text
        assert (await client.get(f"{exp.url}/")).status_code == 401
        assert (await client.get(f"{exp.url}/healthz")).status_code == 200  # probes carry no credentials
        assert (await client.get(f"{exp.url}/ready")).status_code == 200


@pytest.mark.parametrize(("text", "message"), [
    ("basic_auth_users: {u: plaintext}", "basic_auth_users.u: must be a bcrypt hash"),
    ("tls_server_config: {cert_file: /nonexistent.pem, key_file: /nonexistent.key}", "cannot load certificate"),
    ("tls_server_config: {cert_file: /x.pem}", "tls_server_config.key_file: is required"),
    ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS99}", "min_version: unknown value"),
    ("tls: {}", "tls: unknown key"),
    ("[1]", "must be a mapping"),
    ("a: [", "not valid YAML"),
])
def test_web_config_mistakes_are_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_web_config(write(tmp_path, text))
    assert any(message in p for p in err.value.problems), err.value.problems


def test_missing_web_config_file():
    with pytest.raises(ConfigError, match="cannot read"):
        load_web_config("/nonexistent/web.yml")


def test_web_config_reports_every_problem_at_once_like_the_config_file(tmp_path):
    path = write(tmp_path, "tls: {}\ntls_server_config: {cert_file: a, key_file: b, min_version: TLS99}\n"
                           "basic_auth_users: {u: plaintext}\n")
    with pytest.raises(ConfigError) as err:
        load_web_config(path)
    assert err.value.problems == [
        f"web config {path}: tls: unknown key (expected one of: basic_auth_users, http_server_config, "
        "rate_limit, tls_server_config)",
        f"web config {path}: tls_server_config.min_version: unknown value 'TLS99' (expected one of: TLS10, TLS11, "
        "TLS12, TLS13)",
        f"web config {path}: basic_auth_users.u: must be a bcrypt hash ($2y$...)",
    ]


async def test_min_version_is_enforced_on_the_wire(tmp_path, certificate):
    cert, key = certificate
    web = load_web_config(write(tmp_path, f"tls_server_config: {{cert_file: {cert}, key_file: {key}, "
                                          "min_version: TLS13}\n"))
    modern = ssl.create_default_context(cafile=str(cert))
    legacy = ssl.create_default_context(cafile=str(cert))
    legacy.maximum_version = ssl.TLSVersion.TLSv1_2
    async with running(Config(), web_config=web) as exp:
        async with httpx.AsyncClient(verify=modern) as client:
            assert (await client.get(f"{exp.url}/healthz")).status_code == 200
        async with httpx.AsyncClient(verify=legacy) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{exp.url}/healthz")


# --- every exporter-toolkit key: supported on the wire, or refused by name ------------------------


@pytest.fixture
def log_events() -> Callable[[], list[dict[str, Any]]]:
    buffer = io.StringIO()
    log.configure("info", "json", stream=buffer)
    return lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]


def hashed(password: bytes) -> str:
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode()


def client_context(cert: tuple[Path, Path] | None = None, **settings: Any) -> ssl.SSLContext:
    """A TLS client that does not check the server (certificates are made per test), optionally with a client
    certificate; `settings` are SSLContext attributes (maximum_version...) or `ciphers`."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(*cert)
    if "ciphers" in settings:
        context.set_ciphers(settings.pop("ciphers"))
    for name, setting in settings.items():
        setattr(context, name, setting)
    return context


@pytest.mark.parametrize(("text", "message"), [
    ("http_server_config: {headers: {Server: tasks}}", "http_server_config.headers.Server: cannot be configured "
     "(allowed: Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, X-XSS-Protection, "
     "Content-Security-Policy)"),
    ("http_server_config: {headers: {Content-Type: text/html}}", "headers.Content-Type: cannot be configured"),
    ("http_server_config: {headers: {x-frame-options: deny}}", "headers.x-frame-options: cannot be configured"),
    ("http_server_config: {headers: {X-Frame-Options: DENY}}",
     "headers.X-Frame-Options: must be one of: deny, sameorigin, got 'DENY'"),
    ("http_server_config: {headers: {X-Content-Type-Options: sniff}}", "must be one of: nosniff"),
    ("http_server_config: {http2: yes please}", "http_server_config.http2: must be true or false"),
    ("http_server_config: {h3: true}", "http_server_config.h3: unknown key"),
    ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequestClientCert}",
     "tls_server_config.client_auth_type: RequestClientCert is not supported: Python's ssl module verifies"),
    ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAnyClientCert}",
     "client_auth_type: RequireAnyClientCert is not supported"),
    ("tls_server_config: {cert_file: a, key_file: b, client_ca_file: c}",
     "tls_server_config.client_auth_type: is NoClientCert but a client CA is set"),
    ("tls_server_config: {cert_file: a, key_file: b, client_allowed_sans: [x]}",
     "tls_server_config.client_allowed_sans: needs client_auth_type RequireAndVerifyClientCert"),
    ("tls_server_config: {cert_file: a, cert: b, key_file: c}",
     "tls_server_config.cert_file: set either cert_file or cert, not both"),
    ("tls_server_config: {cert_file: a}", "tls_server_config.key_file: is required (or set key)"),
    ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS13, max_version: TLS12}",
     "tls_server_config.max_version: TLS12 is older than min_version TLS13"),
    ("tls_server_config: {cert_file: a, key_file: b, cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]}",
     "tls_server_config.cipher_suites: unknown Go cipher suite name 'TLS_RSA_WITH_RC4_128_SHA'"),
    ("tls_server_config: {cert_file: a, key_file: b, curve_preferences: [X25519, CurveP256]}",
     "tls_server_config.curve_preferences: lists 2 curves; Python's ssl module sets a single one"),
    ("tls_server_config: {cert_file: a, key_file: b, curve_preferences: [CurveP999]}", "unknown curve 'CurveP999'"),
    ("tls_server_config: {cert_file: a, key_file: b, prefer_server_cipher_suites: 1}",
     "prefer_server_cipher_suites: must be true or false"),
    ("rate_limit: {interval: 1s}", "rate_limit.burst: must be at least 1 when interval is set"),
    ("rate_limit: {interval: soon, burst: 1}", "rate_limit.interval: invalid duration 'soon'"),
])
def test_every_toolkit_key_is_checked_with_one_line_naming_it(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_web_config(write(tmp_path, text))
    assert len(err.value.problems) == 1, err.value.problems
    assert message in err.value.problems[0], err.value.problems


def test_http2_is_accepted_with_a_warning_that_the_server_speaks_http_1_1(tmp_path):
    assert load_web_config(write(tmp_path, "http_server_config: {http2: false}")).warnings == ()
    (warning,) = load_web_config(write(tmp_path, "http_server_config: {http2: true}")).warnings
    assert warning.endswith("http_server_config.http2: HTTP/2 is not available (the server speaks HTTP/1.1 only); "
                            "clients use HTTP/1.1")


async def test_headers_are_added_to_every_answer(tmp_path):
    web = load_web_config(write(tmp_path, f"""
basic_auth_users: {{prometheus: '{hashed(b"pass")}'}}
http_server_config:
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Content-Security-Policy: "default-src 'none'"
    X-XSS-Protection: ""
"""))
    expected = {"x-frame-options": "deny", "x-content-type-options": "nosniff",
                "content-security-policy": "default-src 'none'"}
    async with running(Config(), web_config=web) as exp, httpx.AsyncClient() as client:
        answers = [await client.get(f"{exp.url}/metrics", auth=("prometheus", "pass")),
                   await client.get(f"{exp.url}/metrics"),
                   await client.get(f"{exp.url}/nowhere", auth=("prometheus", "pass")),
                   await client.get(f"{exp.url}/-/reload", auth=("prometheus", "pass")),
                   await client.get(f"{exp.url}/healthz")]
    assert [a.status_code for a in answers] == [200, 401, 404, 405, 200]
    for answer in answers:
        assert {k: answer.headers.get(k) for k in expected} == expected, answer.request.url
        assert "x-xss-protection" not in answer.headers  # blank: unset, as in exporter-toolkit


async def test_rate_limit_answers_429_over_the_burst_but_never_to_probes(tmp_path):
    web = load_web_config(write(tmp_path, "rate_limit: {interval: 1h, burst: 2}"))
    async with running(Config(), web_config=web) as exp, httpx.AsyncClient() as client:
        codes = [(await client.get(f"{exp.url}/metrics")).status_code for _ in range(3)]
        probes = [(await client.get(f"{exp.url}{path}")).status_code for path in ("/healthz", "/ready")]
    assert codes == [200, 200, 429]
    assert probes == [200, 200]


async def test_max_version_is_enforced_on_the_wire(tmp_path, certificate):
    cert, key = certificate
    web = load_web_config(write(tmp_path, f"tls_server_config: {{cert_file: {cert}, key_file: {key}, "
                                          "max_version: TLS12}\n"))
    async with running(Config(), web_config=web) as exp:
        _, writer = await asyncio.open_connection("127.0.0.1", exp.port, ssl=client_context())
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.2"
        writer.close()
        modern = client_context(minimum_version=ssl.TLSVersion.TLSv1_3)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await served_certificate(exp.port, modern)


@pytest.mark.parametrize(("prefer_server", "chosen"), [
    (True, "ECDHE-RSA-AES256-GCM-SHA384"), (False, "ECDHE-RSA-AES128-GCM-SHA256")])
async def test_cipher_suites_and_their_order_are_enforced(tmp_path, certificate, prefer_server, chosen):
    cert, key = certificate  # RSA
    web = load_web_config(write(tmp_path, f"""
tls_server_config:
  cert_file: {cert}
  key_file: {key}
  max_version: TLS12
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
  prefer_server_cipher_suites: {str(prefer_server).lower()}
"""))
    async with running(Config(), web_config=web) as exp:
        client_order = client_context(ciphers="ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384")
        _, writer = await asyncio.open_connection("127.0.0.1", exp.port, ssl=client_order)
        assert writer.get_extra_info("ssl_object").cipher()[0] == chosen
        writer.close()
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await served_certificate(exp.port, client_context(ciphers="ECDHE-RSA-CHACHA20-POLY1305"))


async def test_one_curve_preference_is_enforced_on_the_wire(tmp_path):
    cert, key = make_certificate(tmp_path, "server")
    web = load_web_config(write(tmp_path, f"tls_server_config: {{cert_file: {cert}, key_file: {key}, "
                                          "curve_preferences: [CurveP384]}\n"))
    async with running(Config(), web_config=web) as exp:
        p384, p256 = client_context(), client_context()
        p384.set_ecdh_curve("secp384r1")
        p256.set_ecdh_curve("prime256v1")
        assert await served_certificate(exp.port, p384) == der_of(cert)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await served_certificate(exp.port, p256)


async def test_client_certificates_are_verified_and_their_sans_checked(tmp_path):
    ca, other_ca = make_certificate(tmp_path, "ca", ca=True, san=""), make_certificate(tmp_path, "other", ca=True,
                                                                                       san="")
    allowed = make_certificate(tmp_path, "prometheus", san="DNS:prometheus.example", issuer=ca)
    stranger = make_certificate(tmp_path, "grafana", san="DNS:grafana.example", issuer=ca)
    forged = make_certificate(tmp_path, "forged", san="DNS:prometheus.example", issuer=other_ca)
    cert, key = make_certificate(tmp_path, "server")
    web = load_web_config(write(tmp_path, f"""
tls_server_config:
  cert_file: {cert}
  key_file: {key}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {ca[0]}
  client_allowed_sans: [prometheus.example]
"""))
    async with running(Config(), web_config=web) as exp:
        async def status(client_cert: tuple[Path, Path] | None) -> int | str:
            async with httpx.AsyncClient(verify=client_context(client_cert)) as client:
                try:
                    return (await client.get(f"{exp.url}/metrics")).status_code
                except httpx.TransportError as exc:
                    return type(exc).__name__
        assert await status(allowed) == 200
        assert await status(stranger) == 403  # verified, but not a SAN this config allows
        assert isinstance(await status(forged), str)  # refused in the handshake
        assert isinstance(await status(None), str)


async def test_inline_certificate_and_key_are_served(tmp_path):
    cert, key = make_certificate(tmp_path, "inline")
    indent = "\n".join("    " + line for line in cert.read_text().splitlines())
    key_indent = "\n".join("    " + line for line in key.read_text().splitlines())
    web = load_web_config(write(tmp_path, f"tls_server_config:\n  cert: |\n{indent}\n  key: |\n{key_indent}\n"))
    async with running(Config(), web_config=web) as exp:
        assert await served_certificate(exp.port) == der_of(cert)
    assert "PRIVATE KEY" not in repr(web)


async def test_renewed_certificate_is_served_at_the_next_handshake_without_a_reload(tmp_path, log_events):
    first, second, third = (make_certificate(tmp_path, name) for name in ("first", "second", "third"))
    live_cert, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    live_cert.write_bytes(first[0].read_bytes())
    live_key.write_bytes(first[1].read_bytes())
    web = load_web_config(write(tmp_path, "tls_server_config: {cert_file: tls.crt, key_file: tls.key}\n"))
    async with running(Config(), web_config=web) as exp:
        assert await served_certificate(exp.port) == der_of(first[0])
        live_key.write_bytes(second[1].read_bytes())
        live_cert.write_bytes(second[0].read_bytes())
        assert await served_certificate(exp.port) == der_of(second[0])  # no restart, no reload
        live_cert.write_bytes(third[0].read_bytes())  # renewal half done: this certificate's key is not there yet
        assert await served_certificate(exp.port) == der_of(second[0])
        (failed,) = [e for e in log_events() if e["event"] == "web_config_reload_failed"]
        assert "tls_server_config.cert_file: cannot load certificate or key" in failed["problems"][0]
        live_key.write_bytes(third[1].read_bytes())
        assert await eventually(lambda: _is(served_certificate(exp.port), der_of(third[0])), timeout=5)
    assert [e["trigger"] for e in log_events() if e["event"] == "web_config_reloaded"] == ["file_changed"] * 2


async def _is(answer: Awaitable[object], expected: object) -> bool:
    return await answer == expected
