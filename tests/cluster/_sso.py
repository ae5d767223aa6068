"""Single sign-on on the test cluster: one auth connector, the console flow, IdP callbacks.

What real Teleport's proxy does for ``tsh login`` with an SSO connector
(docs/protocol.md §16), with the same wire format:

* ``POST /webapi/{oidc,saml,github}/login/console`` checks the request as Go
  decodes it for the server's version, runs Teleport's ``ValidateClientRedirect``
  on ``redirect_url`` and answers ``{"redirect_url": <IdP URL>}``; every failure
  is a 403 with one of Teleport's two messages;
* the IdP sends the browser back to the proxy's callback, which redeems the
  answer, certifies the keys, seals the ``SSHLoginResponse`` with the client's
  ``secret_key`` (AES-256-GCM, ``{"ciphertext","nonce"}``) and sends the browser
  to the client's callback with ``response=`` (or ``err=``) through an HTML meta
  refresh, as Teleport's ``WithMetaRedirect``.

Connectors:

* ``oidc``: the cluster is a real OpenID Connect relying party of a real
  provider (``--oidc-issuer``, or oidc-provider-mock started in this process):
  discovery, authorization code flow, the token endpoint with client_secret_basic,
  the id_token's RS256 signature checked against the provider's JWKS, and its
  ``iss``, ``aud``, ``exp`` and ``nonce`` claims. Claims map to a user as a
  Teleport connector with ``claims_to_roles: [{claim: groups, value: ssh-users,
  roles: [access]}]`` and a role with ``logins: ['{{external.logins}}']``: the
  user name is the ``email`` claim, the logins the ``logins`` claim.
* ``github`` and ``saml``: smaller stand-ins served by the cluster itself under
  ``/fake-idp/``: a login form checking the cluster's local users' passwords
  (``users add``), then a one-time code (GitHub) or an HMAC-signed assertion
  POSTed to the ACS (SAML). The console protocol around them is the same.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from aiohttp import ClientSession, web

from . import _trust
from ._state import _LOGIN_RE, _USER_RE, User

if TYPE_CHECKING:
    from ._web import WebAPI, _Keys

__all__ = ["CONNECTOR_KINDS", "SSOService", "meta_redirect", "validate_client_redirect"]

log = logging.getLogger("tests.cluster.sso")

CONNECTOR_KINDS = ("oidc", "saml", "github")
LOGIN_FAILED = "Failed to login. Please check Teleport's log for more details."
LOGIN_FAILED_REDIRECT = (
    "Failed to login due to a disallowed callback URL. Please check Teleport's log for more details."
)
NO_ROLES = "No roles mapped from claims. The mappings may contain typos."
#: Teleport's defaults.OIDCAuthRequestTTL: a started login must finish within it.
AUTH_REQUEST_TTL_S = 600
#: The connector's claims_to_roles (see the module docstring).
ROLE_CLAIM, ROLE_VALUE, ROLES = "groups", "ssh-users", ("access",)

_STR, _BYTES, _INT, _ANY = "string", "[]uint8", "time.Duration", "any"
# SSOLoginConsoleReq's fields by era (docs/protocol.md §16.2); Go matches keys case-insensitively.
_FIELDS_V16 = {
    "redirect_url": _STR, "public_key": _BYTES, "cert_ttl": _INT, "connector_id": _STR,
    "compatibility": _STR, "routetocluster": _STR, "kubernetescluster": _STR,
    "attestation_statement": _ANY,
}  # fmt: skip
_FIELDS_V17 = {
    **_FIELDS_V16,
    "ssh_pub_key": _BYTES, "tls_pub_key": _BYTES,
    "ssh_attestation_statement": _ANY, "tls_attestation_statement": _ANY,
}  # fmt: skip
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def validate_client_redirect(url: str) -> None:
    """Teleport's ``ValidateClientRedirect`` (no custom hosts allowed); ValueError if refused.

    Path exactly ``/callback``, exactly one query key ``secret_key``, no
    userinfo, fragment or opaque part, http(s) to a loopback host only.
    """
    try:
        u = urlsplit(url)
        host = u.hostname or ""
        u.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise ValueError("invalid client redirect URL") from None
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ValueError("invalid scheme or opaque client redirect URL")
    if u.username is not None or u.password is not None:
        raise ValueError("client redirect URL must not contain userinfo")
    if u.fragment or "#" in url:
        raise ValueError("client redirect URL must not contain a fragment")
    if u.path != "/callback":
        raise ValueError("invalid path in client redirect URL")
    query = parse_qs(u.query, keep_blank_values=True)
    if list(query) != ["secret_key"] or len(query["secret_key"]) != 1:
        raise ValueError("client redirect URL must have exactly one query parameter, secret_key")
    if host not in _LOOPBACK:
        raise ValueError("unknown custom client redirect URL hostname")


def _go_html_escape(text: str) -> str:
    """Go html/template's escaping of an attribute value (``+`` too, as ``&#43;``)."""
    return html.escape(text, quote=True).replace("&#x27;", "&#39;").replace("+", "&#43;")


def meta_redirect(url: str) -> web.Response:
    """Teleport's ``WithMetaRedirect`` page: a 200 whose meta refresh sends the browser on."""
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n\t<head>\n\t\t<title>Teleport Redirection Service</title>\n'
        '\t\t<meta http-equiv="cache-control" content="no-cache"/>\n'
        f"\t\t<meta http-equiv=\"refresh\" content=\"0;URL='{_go_html_escape(url)}'\" />\n"
        "\t</head>\n\t<body></body>\n</html>\n"
    )
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


def seal(key: bytes, plaintext: bytes) -> str:
    """lib/secret's Seal: AES-256-GCM, random 12-byte nonce, no AAD, as JSON of base64 fields."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(12)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, None)
    return json.dumps(
        {"ciphertext": base64.b64encode(ciphertext).decode(), "nonce": base64.b64encode(nonce).decode()},
        separators=(",", ":"),
    )


def _with_query(url: str, query: dict[str, str]) -> str:
    u = urlsplit(url)
    return urlunsplit((u.scheme, u.netloc, u.path, urlencode(query), ""))


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        f"<!DOCTYPE html>\n<html><head><title>{html.escape(title)}</title></head>"
        f"<body>{body}</body></html>\n"
    )
    return web.Response(status=status, text=text, content_type="text/html")


@dataclass
class AuthRequest:
    """One console login under way (Teleport's OIDCAuthRequest and its kin)."""

    state: str
    kind: str
    keys: _Keys
    ttl_ns: int
    redirect_url: str
    route: str
    nonce: str
    created: float


class SSOService:
    """The SSO routes of one proxy; ``config.auth`` says which connector (if any) exists."""

    def __init__(self, api: WebAPI) -> None:
        self.api = api
        self.config = api.config
        self._requests: dict[str, AuthRequest] = {}
        self._codes: dict[str, tuple[str, str]] = {}  # stand-in IdPs: code -> (state, user)
        self._saml_key = secrets.token_bytes(32)
        self._oidc_meta: dict[str, Any] | None = None

    @property
    def kind(self) -> str | None:
        return self.config.auth if self.config.auth in CONNECTOR_KINDS else None

    @property
    def connector_name(self) -> str:
        return self.config.connector_name or (self.kind or "")

    def routes(self) -> dict[str, dict[str, Any]]:
        routes: dict[str, dict[str, Any]] = {
            "/web/msg/info/login_success": {"GET": self.login_success_page},
            "/web/msg/error/login": {"GET": self.login_error_page},
            "/web/msg/error/login/callback": {"GET": self.login_error_page},
            "/webapi/oidc/callback": {"GET": self.oidc_callback},
            "/webapi/github/callback": {"GET": self.github_callback},
            "/webapi/saml/acs": {"POST": self.saml_acs},
            "/fake-idp/github/authorize": {"GET": self.fake_idp_form, "POST": self.fake_idp_login},
            "/fake-idp/saml/sso": {"GET": self.fake_idp_form, "POST": self.fake_idp_login},
        }
        for kind in CONNECTOR_KINDS:
            routes[f"/webapi/{kind}/login/console"] = {"POST": self._console_for(kind)}
        if self.kind == "saml":
            routes[f"/webapi/saml/acs/{self.connector_name}"] = {"POST": self.saml_acs}
        return routes

    # ---- ping
    def auth_settings(self) -> dict[str, Any] | None:
        """Ping's ``auth.type`` and ``auth.<type>`` for the connector, or None for local."""
        kind = self.kind
        if kind is None:
            return None
        base = self.config.web_addr
        settings: dict[str, Any] = {"name": self.connector_name, "display": self.connector_name}
        if kind == "oidc":
            settings["IssuerURL"] = self.config.oidc_issuer
        elif kind == "saml":
            settings["SSO"] = f"https://{base}/fake-idp/saml/sso"
        else:
            settings["EndpointURL"] = f"https://{base}/fake-idp/github"
        return {"type": kind, kind: settings}

    # ---- pages
    async def login_success_page(self, request: web.Request) -> web.Response:
        return _page("Login Successful", "<h1>Login Successful</h1>"
                     "<p>You have successfully signed into your account. "
                     "You can close this window and continue using the product.</p>")

    async def login_error_page(self, request: web.Request) -> web.Response:
        return _page("Login Failed", "<h1>Login Failed</h1><p>Unable to log in, please "
                     "check Teleport's log for details.</p>")

    # ---- console
    def _console_for(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return await self.login_console(request, kind)

        return handler

    async def login_console(self, request: web.Request, kind: str) -> web.Response:
        from ._web import ApiError, decode_request, json_response

        mime = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        try:
            if mime != "application/json":
                raise ValueError("invalid request")
            fields = _FIELDS_V17 if self.config.split_keys else _FIELDS_V16
            req = decode_request(await request.read(), fields)
            keys = self._keys(req)
            if kind != self.kind or req.get("connector_id", "") != self.connector_name:
                raise ValueError(f"{kind} connector {req.get('connector_id', '')!r} not found")
            route = req.get("routetocluster", "")
            if route and route != self.api.state.name and route not in _trust.remote_host_cas(
                self.api.state
            ):  # a joined leaf is a route too (its certificate comes from certify())
                raise ValueError(f"remote cluster {route!r} is not found")
        except (ValueError, ApiError) as e:
            log.warning("SSO console login refused: %s", e)
            raise ApiError(403, LOGIN_FAILED) from None
        redirect = req.get("redirect_url", "")
        try:
            validate_client_redirect(redirect)
        except ValueError as e:
            log.warning("SSO console login refused: %s: %r", e, redirect)
            raise ApiError(403, LOGIN_FAILED_REDIRECT) from None
        self._expire()
        auth = AuthRequest(
            state=secrets.token_hex(16), kind=kind, keys=keys,
            ttl_ns=req.get("cert_ttl") or 0, redirect_url=redirect, route=route,
            nonce=secrets.token_urlsafe(16), created=time.time(),
        )  # fmt: skip
        if auth.ttl_ns < 0:
            raise ApiError(403, LOGIN_FAILED)
        self._requests[auth.state] = auth
        return json_response({"redirect_url": await self._idp_url(auth)})

    def _keys(self, req: dict[str, Any]) -> _Keys:
        from ._web import _Keys, _parse_ssh_key, _parse_tls_key

        pub = req.get("public_key", b"")
        ssh_raw, tls_raw = req.get("ssh_pub_key", b""), req.get("tls_pub_key", b"")
        if pub and (ssh_raw or tls_raw):
            raise ValueError("'public_key' and 'ssh_pub_key'/'tls_pub_key' cannot both be set")
        if pub:
            ssh = _parse_ssh_key(pub)
            return _Keys(ssh, ssh.pyca_key)
        if not ssh_raw and not tls_raw:
            raise ValueError("'ssh_pub_key' or 'tls_pub_key' must be set")
        return _Keys(
            _parse_ssh_key(ssh_raw) if ssh_raw else None,
            _parse_tls_key(tls_raw) if tls_raw else None,
        )

    def _expire(self) -> None:
        now = time.time()
        for state, auth in list(self._requests.items()):
            if now - auth.created > AUTH_REQUEST_TTL_S:
                del self._requests[state]

    def _take(self, state: str, kind: str) -> AuthRequest | None:
        self._expire()
        auth = self._requests.get(state)
        if auth is None or auth.kind != kind:
            return None
        del self._requests[state]  # one use
        return auth

    async def _idp_url(self, auth: AuthRequest) -> str:
        base = f"https://{self.config.web_addr}"
        if auth.kind == "oidc":
            meta = await self._oidc_discovery()
            query = {
                "response_type": "code", "client_id": self.config.oidc_client_id,
                "redirect_uri": f"{base}/v1/webapi/oidc/callback", "scope": "openid email profile",
                "state": auth.state, "nonce": auth.nonce,
            }  # fmt: skip
            return f"{meta['authorization_endpoint']}?{urlencode(query)}"
        if auth.kind == "github":
            return f"{base}/fake-idp/github/authorize?{urlencode({'state': auth.state})}"
        return f"{base}/fake-idp/saml/sso?{urlencode({'RelayState': auth.state})}"

    # ---- completing a login
    def _finish(self, auth: AuthRequest, user: User) -> web.Response:
        """Certify, seal with the client's key, send the browser to its callback."""
        from ._web import ApiError

        try:
            answer = self.api.certify(user, auth.keys, auth.ttl_ns or 12 * 3600 * 10**9, auth.route)
            self.api.state.upsert_sso_user(user)
        except ApiError as e:
            return self._fail(auth, e.message)
        key_hex = parse_qs(urlsplit(auth.redirect_url).query)["secret_key"][0]
        try:
            key = bytes.fromhex(key_hex)
            if len(key) != 32:
                raise ValueError
        except ValueError:
            return self._fail(auth, "invalid secret key")
        sealed = seal(key, json.dumps(answer).encode())
        log.info("SSO login of %s (%s) completed", user.name, auth.kind)
        # As ConstructSSHResponse: the whole query becomes response=<sealed JSON>.
        return meta_redirect(_with_query(auth.redirect_url, {"response": sealed}))

    def _fail(self, auth: AuthRequest, message: str) -> web.Response:
        """RedirectURLWithError: the client's callback with ``err=`` (secret_key kept)."""
        log.warning("SSO login (%s) failed: %s", auth.kind, message)
        key = parse_qs(urlsplit(auth.redirect_url).query)["secret_key"][0]
        return meta_redirect(_with_query(auth.redirect_url, {"secret_key": key, "err": message}))

    @staticmethod
    def _lost() -> web.Response:
        # No console request to return to: the proxy's own error page.
        return _redirect("/web/msg/error/login/callback")

    # ---- OIDC: a real relying party
    async def _oidc_discovery(self) -> dict[str, Any]:
        if self._oidc_meta is None:
            url = self.config.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
            async with ClientSession() as session, session.get(url) as r:
                r.raise_for_status()
                meta = await r.json()
            if meta.get("issuer") != self.config.oidc_issuer.rstrip("/"):
                raise RuntimeError(f"OIDC discovery: issuer {meta.get('issuer')!r} is not ours")
            self._oidc_meta = meta
        return self._oidc_meta

    async def oidc_callback(self, request: web.Request) -> web.Response:
        auth = self._take(request.query.get("state", ""), "oidc")
        if auth is None:
            return self._lost()
        if "error" in request.query:
            detail = request.query.get("error_description", "")
            return self._fail(
                auth, f"OIDC provider returned error: {request.query['error']}"
                + (f": {detail}" if detail else "")
            )
        code = request.query.get("code", "")
        try:
            claims = await self._oidc_redeem(code, auth)
        except Exception as e:  # any failure of the provider or its token is a failed login
            return self._fail(auth, f"OIDC login failed: {e}")
        groups = claims.get(ROLE_CLAIM) or []
        if not isinstance(groups, list) or ROLE_VALUE not in groups:
            return self._fail(auth, NO_ROLES)
        name, logins = claims.get("email"), claims.get("logins") or []
        if not isinstance(name, str) or not _USER_RE.match(name):
            return self._fail(auth, "OIDC claim email is not a valid user name")
        if not isinstance(logins, list) or not all(
            isinstance(x, str) and _LOGIN_RE.match(x) for x in logins
        ):
            return self._fail(auth, "OIDC claim logins is not a list of logins")
        user = User(name=name, password_hash="", logins=tuple(logins), roles=ROLES)
        return self._finish(auth, user)

    async def _oidc_redeem(self, code: str, auth: AuthRequest) -> dict[str, Any]:
        """Token endpoint (client_secret_basic), then the id_token's signature and claims."""
        from aiohttp import BasicAuth
        from joserfc import jwt
        from joserfc.jwk import KeySet

        meta = await self._oidc_discovery()
        base = f"https://{self.config.web_addr}"
        form = {
            "grant_type": "authorization_code", "code": code,
            "redirect_uri": f"{base}/v1/webapi/oidc/callback",
        }  # fmt: skip
        basic = BasicAuth(self.config.oidc_client_id, self.config.oidc_client_secret)
        async with ClientSession() as session:
            async with session.post(meta["token_endpoint"], data=form, auth=basic) as r:
                tokens = await r.json(content_type=None)
                if r.status != 200:
                    raise ValueError(f"token endpoint: {tokens.get('error', r.status)}")
            async with session.get(meta["jwks_uri"]) as r:
                jwks = await r.json()
        token = jwt.decode(tokens["id_token"], KeySet.import_key_set(jwks), algorithms=["RS256"])
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": meta["issuer"]},
            aud={"essential": True, "value": self.config.oidc_client_id},
            exp={"essential": True},
            nonce={"essential": True, "value": auth.nonce},
        ).validate(token.claims)
        return dict(token.claims)

    # ---- GitHub and SAML: stand-in IdPs on this server
    async def fake_idp_form(self, request: web.Request, problem: str = "") -> web.Response:
        saml = request.path.startswith("/fake-idp/saml")
        state = request.query.get("RelayState" if saml else "state", "")
        title = "SAML IdP" if saml else "GitHub"
        note = f'<p class="flash-error">{html.escape(problem)}</p>' if problem else ""
        return _page(
            f"Sign in to {title}",
            f"<h1>Sign in to {title}</h1>{note}"
            f'<form method="post"><input type="hidden" name="state" value="{html.escape(state)}">'
            '<label>Username <input type="text" name="login" id="login_field" autofocus></label>'
            '<label>Password <input type="password" name="password" id="password"></label>'
            '<button type="submit" name="commit" value="signin">Sign in</button>'
            '<button type="submit" name="commit" value="cancel">Cancel</button></form>',
        )

    async def fake_idp_login(self, request: web.Request) -> web.Response:
        saml = request.path.startswith("/fake-idp/saml")
        form = await request.post()
        state = str(form.get("state", ""))
        if form.get("commit") == "cancel":
            if saml:
                return self._saml_post(state, None)
            query = {"error": "access_denied",
                     "error_description": "The user has denied your application access.",
                     "state": state}
            return _redirect(f"/webapi/github/callback?{urlencode(query)}")
        user = self.api.state.check_password(str(form.get("login", "")), str(form.get("password", "")))
        if user is None:
            return await self.fake_idp_form(request, "Incorrect username or password.")
        if saml:
            return self._saml_post(state, user.name)
        code = secrets.token_hex(16)
        self._codes[code] = (state, user.name)
        return _redirect(f"/webapi/github/callback?{urlencode({'code': code, 'state': state})}")

    async def github_callback(self, request: web.Request) -> web.Response:
        auth = self._take(request.query.get("state", ""), "github")
        if auth is None:
            return self._lost()
        if "error" in request.query:
            return self._fail(
                auth, f"GitHub returned error: {request.query['error']}: "
                f"{request.query.get('error_description', '')}"
            )
        redeemed = self._codes.pop(request.query.get("code", ""), None)
        if redeemed is None or redeemed[0] != auth.state:
            return self._fail(auth, "GitHub: invalid or used code")
        return self._local_user(auth, redeemed[1])

    def _local_user(self, auth: AuthRequest, name: str) -> web.Response:
        user = self.api.state.users().get(name)
        if user is None:
            return self._fail(auth, NO_ROLES)
        return self._finish(auth, user)

    def _saml_post(self, state: str, name: str | None) -> web.Response:
        """The IdP's HTTP-POST binding: an auto-submitting form to the ACS."""
        assertion = json.dumps({"in_response_to": state, "name_id": name}).encode()
        mac = hmac.new(self._saml_key, assertion, hashlib.sha256).hexdigest()
        response = base64.b64encode(assertion).decode() + "." + mac
        acs = f"/webapi/saml/acs/{self.connector_name}"
        return _page(
            "SAML POST",
            f'<form method="post" action="{html.escape(acs)}" id="saml">'
            f'<input type="hidden" name="SAMLResponse" value="{html.escape(response)}">'
            f'<input type="hidden" name="RelayState" value="{html.escape(state)}"></form>'
            '<script>document.getElementById("saml").submit()</script>'
            '<noscript><button form="saml" type="submit">Continue</button></noscript>',
        )

    async def saml_acs(self, request: web.Request) -> web.Response:
        form = await request.post()
        blob, _, mac = str(form.get("SAMLResponse", "")).partition(".")
        try:
            assertion_raw = base64.b64decode(blob, validate=True)
        except ValueError:
            assertion_raw = b""
        good = hmac.new(self._saml_key, assertion_raw, hashlib.sha256).hexdigest()
        if not assertion_raw or not hmac.compare_digest(good, mac):
            return _redirect("/web/msg/error/login/callback")
        assertion = json.loads(assertion_raw)
        auth = self._take(assertion["in_response_to"], "saml")
        if auth is None:
            return self._lost()
        if assertion["name_id"] is None:
            return self._fail(auth, "SAML: the identity provider denied the login")
        return self._local_user(auth, assertion["name_id"])
