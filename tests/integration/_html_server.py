"""A tiny HTTPS server on 127.0.0.1 that answers every request with an HTML page.

It plays a captive portal or a misconfigured reverse proxy standing where a
Teleport proxy should be; its self-signed certificate is returned so the test
can trust it (the point is the HTML, not the TLS). With ``trickle`` it plays a
slow-loris proxy instead: the answer's headers (or, after them, its body)
arrive one byte at a time, a byte every 0.2 s, for as long as the client waits.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "html-cert.pem", directory / "html-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class _Handler(http.server.BaseHTTPRequestHandler):
    def _html(self) -> None:
        body = b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _html

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


class _Trickler(_Handler):
    """Headers (``trickle = "headers"``) or the body (``"body"``) a byte at a time."""

    trickle = "headers"
    stop: threading.Event

    def _html(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n"
        if self.trickle == "body":
            self.wfile.write(head + b"\r\n")
            head = b"[" * 100000
        try:
            for i in range(len(head)):
                self.wfile.write(head[i : i + 1])
                if self.stop.wait(0.2):
                    return
        except OSError:
            pass  # the client gave up: the point of the test

    do_GET = do_POST = _html


@contextmanager
def html_server(directory: Path, trickle: str | None = None) -> Iterator[tuple[str, Path]]:
    """Yield ("127.0.0.1:PORT", CA file to trust); the server stops on exit.

    ``trickle``: "headers" or "body", to answer as a slow-loris proxy.
    """
    cert_file, key_file = _self_signed(directory)
    handler: type[_Handler] = _Handler
    stop = threading.Event()
    if trickle is not None:
        handler = type("Trickler", (_Trickler,), {"trickle": trickle, "stop": stop})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", cert_file
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
