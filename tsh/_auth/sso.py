"""Single sign-on (OIDC, SAML, GitHub): the console flow with a loopback callback.

The flow (docs/protocol.md §16):

1. a callback server listens on ``127.0.0.1:<random>`` (or the bind address
   the user gave) and a fresh 32-byte key is made;
2. ``POST /v1/webapi/<type>/login/console`` sends the public keys and the
   callback URL ``http://127.0.0.1:PORT/callback?secret_key=<key, hex>``; the
   proxy answers with the identity provider's URL;
3. the browser is sent to a short link on the callback server, which
   redirects it to the identity provider; the user logs in there;
4. the proxy redeems the provider's answer and sends the browser back to the
   callback with ``response=`` (the certificates, AES-256-GCM sealed with the
   key) or ``err=``; the callback server answers the browser with a redirect to
   the proxy's success or error page and hands the decrypted answer to login().

The key never leaves this process except inside the callback URL given to the
proxy over verified TLS; nothing of the answer is logged. The callback server
accepts exactly one callback, only GET, POST and OPTIONS on ``/callback`` and
GET on the short link; every other request is refused without effect.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core.addr import join_host_port
from .._exceptions import SSOError, UsageError
from .authenticators import PublicKeys

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

    from .._web.client import WebClient
    from .._web.wire import LoginResponse, PingResponse

__all__ = [
    "SSO_CALLBACK_TIMEOUT",
    "CallbackServer",
    "SSOAuthenticator",
    "decrypt_response",
    "open_in_browser",
]

#: Seconds tsh waits for the browser to come back (Teleport's SSOCallbackTimeout).
SSO_CALLBACK_TIMEOUT = 180.0
#: ``--browser`` / ``TELEPORT_LOGIN_BROWSER`` value that opens nothing and prints the URL.
BROWSER_NONE = "none"
#: A callback carries a few KiB of certificates; a POST body beyond this is refused.
_MAX_CALLBACK_BODY = 1 << 20
_FAIL_PAGE = "/web/msg/error/login"
_SUCCESS_PAGE = "/web/msg/info/login_success"


def decrypt_response(key: bytes, sealed: str) -> Any:
    """Open the proxy's ``response``: JSON ``{"ciphertext","nonce"}``, AES-256-GCM, no AAD.

    Returns the decoded JSON inside. Raises SSOError for anything that is not
    a sealed message for ``key`` (a tampered, truncated or foreign one).
    """
    import base64
    import binascii
    import json

    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        envelope = json.loads(sealed)
        if not isinstance(envelope, dict):
            raise ValueError("not an object")
        nonce = base64.b64decode(envelope["nonce"], validate=True)
        ciphertext = base64.b64decode(envelope["ciphertext"], validate=True)
        if len(nonce) != 12:
            raise ValueError("bad nonce")
        plain = AESGCM(key).decrypt(nonce, ciphertext, None)
        return json.loads(plain)
    except (ValueError, KeyError, TypeError, binascii.Error, InvalidTag, RecursionError):
        raise SSOError(
            "the SSO response could not be decrypted (tampered with, or not for this login)"
        ) from None


class _Outcome:
    """The one callback's result, handed from the server thread to the waiting login."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.claimed = False
        self.answer: Any = None
        self.error: SSOError | None = None


class CallbackServer:
    """The loopback HTTP server the browser comes back to (one login, one callback).

    Use as a context manager: it listens on entering (``bind_addr``, default
    ``127.0.0.1:0``) and stops on leaving.
    """

    def __init__(self, proxy_url: str, bind_addr: str | None = None) -> None:
        # Imported here: `import tsh` should not pay for an HTTP server.
        import secrets
        import socket
        import uuid
        from http.server import ThreadingHTTPServer

        class V6Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        self._proxy_url = proxy_url.rstrip("/")
        self._key = secrets.token_bytes(32)
        self._link_path = f"/{uuid.uuid4()}"
        self._idp_url: str | None = None
        self._outcome = _Outcome()
        host, port = ("127.0.0.1", 0) if not bind_addr else _parse_bind(bind_addr)
        self._host = host
        server_class = V6Server if ":" in host else ThreadingHTTPServer
        try:
            self._server = server_class((host, port), self._handler_class())
        except OSError as e:
            raise UsageError(
                f"cannot listen on {join_host_port(host, port)} for the SSO callback: "
                f"{e.strerror or e}"
            ) from None
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="tsh-sso", daemon=True)

    def __enter__(self) -> CallbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def base_url(self) -> str:
        return f"http://{join_host_port(self._host, self.port)}"

    @property
    def callback_url(self) -> str:
        """What the proxy sends the browser back to (it holds the key)."""
        return f"{self.base_url}/callback?secret_key={self._key.hex()}"

    def link(self, idp_url: str) -> str:
        """The short URL to open in a browser; it redirects to ``idp_url``.

        Unspecified bind addresses (``0.0.0.0``, ``::``) become loopback, as
        real tsh's clickable URL does.
        """
        self._idp_url = idp_url
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self._host, self._host)
        return f"http://{join_host_port(host, self.port)}{self._link_path}"

    def wait(self, timeout: float) -> Any:
        """The decrypted answer of the one callback; SSOError on ``err=``, a bad answer or timeout.

        Ctrl-C (KeyboardInterrupt) ends the wait; the caller's ``with`` then
        stops the server.
        """
        outcome = self._outcome
        if not outcome.done.wait(timeout):
            raise SSOError(
                f"timed out waiting for callback (no answer from the browser in {timeout:g} s)"
            )
        if outcome.error is not None:
            raise outcome.error
        return outcome.answer

    # -- the request handler ----------------------------------------------------

    def _finish(self, form: dict[str, list[str]]) -> bool | None:
        """Decide the login from one callback's form: True on success, None if another
        callback came first (only the first counts).

        The caller sets ``done`` once the browser has its answer, so that tsh
        never exits before the browser is sent to the result page.
        """
        outcome = self._outcome
        with outcome.lock:
            if outcome.claimed:
                return None
            outcome.claimed = True
        try:
            err = form.get("err")
            response = form.get("response")
            if err:
                # Printable only, and short: it is shown on the user's terminal.
                text = "".join(c for c in err[0] if c.isprintable())[:300]
                raise SSOError(f"identity provider callback failed with error: {text}")
            if not response or len(response) != 1:
                raise SSOError("the SSO callback carried no response")
            outcome.answer = decrypt_response(self._key, response[0])
        except SSOError as e:
            outcome.error = e
        return outcome.error is None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        from http.server import BaseHTTPRequestHandler
        from urllib.parse import parse_qs, urlsplit

        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "tsh"
            sys_version = ""
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the query holds the sealed certificates: never log it

            def _reply(self, status: int, text: str = "", headers: dict[str, str] | None = None) -> None:
                body = text.encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def _route(self, method: str) -> None:
                path = urlsplit(self.path).path
                if path == "/callback":
                    self._callback(method)
                elif path == server._link_path and server._idp_url is not None:
                    if method != "GET":
                        self._reply(405, "method not allowed\n", {"Allow": "GET"})
                    else:
                        self._reply(302, "", {"Location": server._idp_url})
                else:
                    self._reply(404, "404 page not found\n")

            def _callback(self, method: str) -> None:
                cors = {"Allow": "GET, OPTIONS, POST", "Access-Control-Allow-Origin": "*"}
                if method == "OPTIONS":
                    self._reply(200, "", cors)
                    return
                if method not in ("GET", "POST"):
                    self._reply(405, "method not allowed\n", cors)
                    return
                form = parse_qs(urlsplit(self.path).query)
                if method == "POST":
                    try:
                        length = int(self.headers.get("Content-Length") or 0)
                    except ValueError:
                        length = -1
                    if not 0 <= length <= _MAX_CALLBACK_BODY:
                        self._reply(413, "request body too large\n", cors)
                        return
                    kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                    body = self.rfile.read(length)
                    if kind == "application/x-www-form-urlencoded":
                        for name, values in parse_qs(body.decode("utf-8", "replace")).items():
                            form.setdefault(name, []).extend(values)
                ok = server._finish(form)
                if ok is None:
                    self._reply(409, "this login has already received its callback\n", cors)
                    return
                try:
                    page = _SUCCESS_PAGE if ok else _FAIL_PAGE
                    self._reply(302, "", {**cors, "Location": server._proxy_url + page})
                finally:
                    server._outcome.done.set()

            def do_GET(self) -> None:  # noqa: N802 (http.server's names)
                self._route("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._route("POST")

            def do_OPTIONS(self) -> None:  # noqa: N802
                self._route("OPTIONS")

            def do_PUT(self) -> None:  # noqa: N802
                self._route("PUT")

            def do_DELETE(self) -> None:  # noqa: N802
                self._route("DELETE")

            def do_HEAD(self) -> None:  # noqa: N802
                self._route("HEAD")

        return Handler


def _parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``); port 0 means any free port."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"invalid --bind-addr {text!r}: expected HOST:PORT")
    return host, int(port)


def open_in_browser(url: str, browser: str | None, notify: Callable[[str], None]) -> None:
    """Show ``url`` to the user as real tsh does: open it in ``browser`` and print it.

    ``browser``: None for the system's opener (``xdg-open``, macOS ``open``,
    Windows ``rundll32``, as real tsh), ``"none"`` to only print the URL, else
    a command run as ``BROWSER URL`` (e.g. ``wslview``). The browser is never
    waited for, and never gets the terminal.
    """
    import subprocess

    if browser == BROWSER_NONE:
        notify(f"Use the following URL to authenticate:\r\n {url}\r\n")
        return
    if browser:
        argv = [browser, url]
    elif sys.platform == "darwin":
        argv = ["open", url]
    elif sys.platform == "win32":
        argv = ["rundll32", "url.dll,FileProtocolHandler", url]
    else:
        argv = ["xdg-open", url]
    try:
        # Its own session: Ctrl-C at the terminal is for tsh, not the browser.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    except OSError as e:
        notify(f"Failed to open a browser window for login: {e.strerror or e}\n")
    else:
        # Not waited for (a browser may outlive tsh), but reaped if it ends first.
        threading.Thread(target=proc.wait, name="tsh-browser", daemon=True).start()
    notify(f"If browser window does not open automatically, open it by clicking on the link:\n {url}\n")


def _stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


class SSOAuthenticator:
    """SSO logins: the proxy's identity provider, in a browser, back through a loopback callback.

    Args:
        open_url: called with the URL the user must open (the Python API's
            way: the caller shows or opens it). Default: open a browser as
            ``browser`` says and print the URL.
        browser: None (the system's browser), ``"none"`` (print only) or a command.
        bind_addr: where the callback server listens (default ``127.0.0.1:0``).
        timeout: seconds to wait for the browser to come back (default 180).
        notify: where messages for the user go (default stderr).
    """

    def __init__(
        self,
        open_url: Callable[[str], None] | None = None,
        *,
        browser: str | None = None,
        bind_addr: str | None = None,
        timeout: float = SSO_CALLBACK_TIMEOUT,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self._open_url = open_url
        self._browser = browser
        self._bind_addr = bind_addr
        self._timeout = timeout
        self._notify = notify or _stderr

    def authenticate(
        self,
        ping: PingResponse,
        user: str,
        client: WebClient,
        keys: PublicKeys,
        ttl_seconds: float,
        cluster: str,
    ) -> LoginResponse:
        """See :meth:`tsh._auth.authenticators.Authenticator.authenticate`; ``user`` is unused
        (the identity provider says who the user is)."""
        from .._web.wire import SSO_TYPES, parse_login_response

        if ping.auth_type not in SSO_TYPES:
            raise UsageError(
                f"the proxy uses {ping.auth_type} logins (a password), not single sign-on"
            )
        key_args = (
            {"public_key": keys.ssh}
            if keys.tls is None
            else {"ssh_pub_key": keys.ssh, "tls_pub_key": keys.tls}
        )
        with CallbackServer(client.base_url, self._bind_addr) as server:
            idp_url = client.sso_login_console(
                ping.auth_type,
                connector_id=ping.connector_name,
                redirect_url=server.callback_url,
                ttl_seconds=ttl_seconds,
                route_to_cluster=cluster,
                **key_args,
            )
            link = server.link(idp_url)
            if self._open_url is not None:
                self._open_url(link)
            else:
                open_in_browser(link, self._browser, self._notify)
            answer = server.wait(self._timeout)
        return parse_login_response(answer)


def browser_from_env(flag: str | None, environ: dict[str, str] | None = None) -> str | None:
    """``--browser``, else ``TELEPORT_LOGIN_BROWSER``, else None (the system's browser)."""
    env = os.environ if environ is None else environ
    return flag or env.get("TELEPORT_LOGIN_BROWSER") or None
