"""A schema registry as production runs one: behind HTTPS with a certificate of its own CA, and
credentials on every request (HTTP Basic USER:PASSWORD, or a Bearer token), else 401. A small
reverse proxy (the standard library's HTTP server, TLS by ``ssl``, the certificates made with
``cryptography``) in front of the local Apicurio, bound to 127.0.0.1 on a port the OS picks."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _certificates(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed for 127.0.0.1 and localhost: (CA, cert, key) PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pktstream test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = d / "ca.pem", d / "server.pem", d / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


class AuthProxy:
    """``url``: the proxy's base (https://127.0.0.1:PORT), ``ca``: the CA file a client trusts it by;
    ``seen``: (method, path, authorized) of every request; ``failing``: an outage (503) while set."""

    def __init__(self, upstream: str, workdir: Path, user: str = "pktstream", password: str = "s3cret-pw",
                 token: str = "token-0123456789") -> None:
        self.upstream = upstream.rstrip("/")
        self.user, self.password, self.token = user, password, token
        self.ca, cert, key = _certificates(workdir)
        self.seen: list[tuple[str, str, bool]] = []
        self.failing = False  # answer 503 to every request (an outage) while set
        accepted = {"Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(), f"Bearer {token}"}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                ok = self.headers.get("Authorization", "") in accepted
                proxy.seen.append((self.command, self.path, ok))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not ok:
                    return self._reply(401, b'{"error_code":401,"message":"Unauthorized"}')
                if proxy.failing:
                    return self._reply(503, b'{"error_code":50301,"message":"Service Unavailable"}')
                req = urllib.request.Request(proxy.upstream + self.path, data=body or None, method=self.command,
                                             headers={k: v for k, v in self.headers.items()
                                                      if k.lower() in ("content-type", "accept")})
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        self._reply(r.status, r.read(), r.headers.get("Content-Type"))
                except urllib.error.HTTPError as e:
                    self._reply(e.code, e.read(), e.headers.get("Content-Type"))

            def _reply(self, status: int, body: bytes, ctype: str | None = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype or "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def __enter__(self) -> AuthProxy:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
