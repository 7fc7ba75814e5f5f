"""--web.config.file: TLS and bcrypt basic auth in the exporter-toolkit format, validated up front."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import bcrypt
import httpx
import pytest

from exporter.app import running
from exporter.config import Config
from exporter.errors import ConfigError
from exporter.webconfig import load_web_config


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
        assert ok.status_code == 200 and "tasks_exporter_build_info" in ok.text
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
