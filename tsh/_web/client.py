"""The proxy's web API over httpx: ``/webapi/ping``, ``/v1/webapi/ssh/certs``, ``/webapi/auth/export``.

:class:`WebClient` does the I/O (verified TLS, a total deadline per call,
bounded bodies, errors mapped to the tsh exception tree); tsh._web.wire checks
and decodes what comes back. It accepts an httpx transport, so tests can use
``httpx.MockTransport`` (docs/protocol.md §2-§4).
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from typing import Any

import httpx

from .._core.addr import FALLBACK_WEB_PORT, join_host_port, split_host_port
from .._core.knownhosts import CAKey
from .._exceptions import (
    AccessDeniedError,
    ProxyConnectionError,
    ProxyResponseError,
    ProxyTLSError,
)
from .wire import MAX_BODY, LoginResponse, PingResponse, error_message, parse_login_response, parse_ping

__all__ = ["DEFAULT_DEADLINE", "WebClient"]

#: Seconds one web API call may take in all, connect to last body byte. httpx's
#: timeouts are per network operation, so a proxy that trickles a byte at a
#: time would otherwise hold `tsh login` forever.
DEFAULT_DEADLINE = 30.0


def _tls_failure(exc: BaseException) -> tuple[bool, str] | None:
    """(is_verification_failure, reason) of a TLS error in an httpx exception chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True, seen.verify_message or str(seen)
        if isinstance(seen, ssl.SSLError):
            return False, seen.reason or str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return True, text
    return None


class _Deadline:
    """Ends one request when its total time is up, by shutting its socket down.

    httpx's timeouts bound each network operation, not the request, and offer
    no total timeout; httpcore's ``trace`` extension hands over each new
    connection's stream, whose socket a timer can shut down (which wakes a
    blocked read). A connection is never reused (see WebClient), so every
    request's connection passes through :meth:`trace`.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        # The TCP stream first; after the handshake, the TLS stream owns the descriptor.
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            sock = info["return_value"].get_extra_info("socket")
            with self._lock:
                self._socket = sock
                if self.expired:
                    self._shut_down()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shut_down()

    def _shut_down(self) -> None:
        if self._socket is not None:
            try:
                # socket.socket's own shutdown: SSLSocket's would also drop its TLS state
                # under the reading thread.
                socket.socket.shutdown(self._socket, socket.SHUT_RDWR)
            except OSError:
                pass  # already closed, or handed over to the TLS stream


class WebClient:
    """A client for one proxy's web API.

    TLS is verified against the system trust store (``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` honoured) unless ``insecure`` is set; the caller is
    responsible for warning the user about ``insecure``. Redirects are never
    followed; bodies are capped at 1 MiB. ``timeout`` bounds each network
    operation, ``deadline`` each call (connect, request and the whole answer).
    """

    def __init__(
        self,
        web_proxy_addr: str,
        *,
        insecure: bool = False,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 15.0,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.web_proxy_addr = web_proxy_addr
        self.deadline = deadline
        # Built by us so OpenSSL's SSL_CERT_FILE/SSL_CERT_DIR apply, not certifi's bundle.
        context = ssl.create_default_context()
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.host, port = split_host_port(web_proxy_addr, FALLBACK_WEB_PORT)
        self.base_url = f"https://{join_host_port(self.host, port)}"
        self._client = httpx.Client(
            base_url=self.base_url,
            verify=context,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0, deadline)),
            # A new connection per call, so that _Deadline sees each call's socket
            # (login makes two calls: one more TLS handshake).
            limits=httpx.Limits(max_keepalive_connections=0),
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> WebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, raw: bool = False
    ) -> Any:
        deadline = _Deadline(self.deadline)
        request = self._client.build_request(
            method,
            path,
            content=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"} if body is not None else None,
            extensions={"trace": deadline.trace},
        )
        too_slow = ProxyConnectionError(
            f"the proxy at {self.base_url} did not answer {path} within {deadline.seconds:g} s"
        )
        try:
            with deadline:
                response = self._client.send(request, stream=True)
                try:
                    content = bytearray()
                    for chunk in response.iter_bytes():
                        content += chunk
                        if len(content) > MAX_BODY:
                            raise ProxyResponseError(
                                f"the answer from {self.base_url}{path} is too large; "
                                f"is {self.base_url} a Teleport proxy?"
                            )
                        if deadline.expired:  # no socket to shut down (e.g. a mock transport)
                            raise too_slow
                finally:
                    response.close()
        except httpx.TimeoutException:
            if deadline.expired:
                raise too_slow from None
            raise ProxyConnectionError(
                f"timed out talking to the proxy at {self.base_url}"
            ) from None
        except httpx.TransportError as e:
            if deadline.expired:  # the read that _Deadline ended
                raise too_slow from None
            failure = _tls_failure(e)
            if failure is not None and failure[0]:
                raise ProxyTLSError(
                    f"TLS verification of {self.host} failed: {failure[1]} "
                    "(trust its CA via SSL_CERT_FILE)",
                    verification=True,
                ) from None
            if failure is not None:
                raise ProxyTLSError(
                    f"TLS handshake with {self.base_url} failed: {failure[1]}; "
                    "is it a Teleport proxy's HTTPS port?"
                ) from None
            raise ProxyConnectionError(
                f"cannot reach the proxy at {self.base_url}: {e or type(e).__name__}"
            ) from None
        except httpx.DecodingError:  # e.g. a body that is not the gzip it claims to be
            raise ProxyResponseError(
                f"cannot decode the answer from {self.base_url}{path}; is it a Teleport proxy?"
            ) from None
        if raw and response.status_code == 200:
            return bytes(content)
        return self._decode(response.status_code, bytes(content), path)

    def _decode(self, status: int, body: bytes, path: str) -> Any:
        not_teleport = (
            f"cannot parse the answer from {self.base_url}{path}; is it a Teleport proxy?"
        )
        if status == 200:
            try:
                return json.loads(body)
            except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
                raise ProxyResponseError(not_teleport, status) from None
        message = error_message(body)
        if message is None:
            raise ProxyResponseError(f"{not_teleport} (HTTP {status})", status)
        message = message.strip().splitlines()[0][:300] if message.strip() else f"HTTP {status}"
        if status == 403:
            raise AccessDeniedError(f"access denied: {message}", status)
        raise ProxyResponseError(
            f"the proxy refused the request: {message} (HTTP {status})", status
        )

    def auth_export(self, ca_type: str) -> tuple[CAKey, ...]:
        """``GET /webapi/auth/export?type=``: the CA keys the cluster trusts now (public).

        Raises:
            ProxyResponseError: an answer that is not export lines.
        """
        from .._core.rotation import parse_export

        if ca_type not in ("host", "user"):
            raise ValueError(f"unsupported CA type {ca_type!r}")
        data = self._request("GET", f"/webapi/auth/export?type={ca_type}", raw=True)
        try:
            return parse_export(data.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise ProxyResponseError(
                f"malformed response from the proxy: bad {ca_type} CA export"
            ) from None

    def ping(self) -> PingResponse:
        """``GET /webapi/ping``: check the proxy is a Teleport proxy and learn its settings."""
        try:
            data = self._request("GET", "/webapi/ping")
        except ProxyResponseError as e:
            if isinstance(e, AccessDeniedError) or e.status_code == 200:
                raise
            raise ProxyResponseError(
                f"proxy service returned unsuccessful ping response: {e}", e.status_code
            ) from None
        return parse_ping(data, self.web_proxy_addr)

    def ssh_certs(
        self,
        *,
        user: str,
        password: str,
        otp_token: str = "",
        ttl_seconds: float,
        ssh_pub_key: str | None = None,
        tls_pub_key: str | None = None,
        pub_key: str | None = None,
        route_to_cluster: str = "",
    ) -> LoginResponse:
        """``POST /v1/webapi/ssh/certs``: exchange a password (and OTP) for certificates.

        Pass ``ssh_pub_key`` and ``tls_pub_key`` to v17+ servers, ``pub_key`` to
        older ones (docs/protocol.md §3.2: sending both is a 400).
        """
        body: dict[str, Any] = {
            "user": user,
            "password": password,
            "otp_token": otp_token,
            "ttl": int(ttl_seconds * 1_000_000_000),
            "RouteToCluster": route_to_cluster,  # no JSON tag on the Go side: exact casing
            "KubernetesCluster": "",
        }

        def b64(text: str) -> str:
            return base64.b64encode(text.encode()).decode()

        if pub_key is not None:
            body["pub_key"] = b64(pub_key)
        else:
            if ssh_pub_key is None or tls_pub_key is None:
                raise ValueError("ssh_pub_key and tls_pub_key are both needed")
            body["ssh_pub_key"] = b64(ssh_pub_key)
            body["tls_pub_key"] = b64(tls_pub_key)
        return parse_login_response(self._request("POST", "/v1/webapi/ssh/certs", body))
