"""What a web config's tls_server_config becomes for OpenSSL: exporter-toolkit's (Go's) names for versions,
client auth, cipher suites and curves mapped to Python's ssl module, and the server context built from them."""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.errors import ConfigError
from exporter.schema import Secret

if TYPE_CHECKING:
    from exporter.webconfig import TlsServerConfig

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
# exporter-toolkit's values that ask for a client certificate without verifying it: Python's ssl module
# verifies every certificate it asks for, so these cannot be honoured (RequireClientCert: an old alias)
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
# Go's crypto/tls.CipherSuites() (the ones exporter-toolkit accepts) -> OpenSSL's names. TLS 1.3 suites are
# not configurable, in Go as in OpenSSL's cipher list: they are accepted and change nothing.
CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
TLS13_CIPHERS = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}


def server_context(tls: TlsServerConfig) -> ssl.SSLContext:
    """A fresh server context; raises ConfigError naming the key whose file or value OpenSSL refused."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    with (_refused("cert_file" if tls.cert_file else "cert", "cannot load certificate or key"),
          _pem_path(tls.cert_file, tls.cert) as cert, _pem_path(tls.key_file, tls.key) as private):
        ctx.load_cert_chain(cert, private)
    ctx.verify_mode = CLIENT_AUTH[tls.client_auth_type]
    if ctx.verify_mode != ssl.CERT_NONE:
        with _refused("client_ca_file" if tls.client_ca_file else "client_ca", "cannot load CA certificates"):
            if tls.client_ca_file:
                ctx.load_verify_locations(cafile=tls.client_ca_file)
            elif tls.client_ca:
                ctx.load_verify_locations(cadata=tls.client_ca.reveal())
            else:
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    suites = [CIPHERS[name] for name in tls.cipher_suites if name in CIPHERS]
    if suites:
        with _refused("cipher_suites", "OpenSSL refused them"):
            ctx.set_ciphers(":".join(suites))
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.curve_preferences:
        with _refused("curve_preferences", "OpenSSL refused it"):
            ctx.set_ecdh_curve(CURVES[tls.curve_preferences[0]])
    return ctx


@contextlib.contextmanager
def _refused(name: str, what: str) -> Iterator[None]:
    try:
        yield
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError([f"tls_server_config.{name}: {what} ({exc})"]) from None


@contextlib.contextmanager
def _pem_path(path: str | None, inline: Secret | None) -> Iterator[str]:
    """A path OpenSSL can read: the file named, or inline PEM in a file only this process can read, removed
    once loaded (load_cert_chain takes paths only)."""
    if path is not None or inline is None:
        yield path or ""
        return
    with tempfile.TemporaryDirectory(prefix="tasks-exporter-") as folder:
        written = Path(folder) / "pem"
        fd = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(inline.reveal())
        yield str(written)
