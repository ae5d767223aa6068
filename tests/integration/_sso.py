"""SSO test helpers: `tsh login` in the background, a scripted browser, the mock IdP's users.

:class:`ScriptedBrowser` is the fast path without a real browser: an httpx
client that follows 302s, fills and submits the page's form (as a person
would), submits auto-posting forms (SAML's HTTP-POST binding) and follows
Teleport's HTML meta refresh, fully HTML-unescaped.
"""

from __future__ import annotations

import html
import re
import subprocess
import threading
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx

from tests.integration._tsh import tsh_argv

_META = re.compile(r"""<meta http-equiv="refresh" content="0;URL='([^']*)'""")
URL_LINE = re.compile(r"^ (http://\S+)\r?$", re.M)


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)  # inputs and buttons, to pick the form
    submit_on_load: bool = False


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.scripted_submit = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif tag in ("input", "button") and self.forms and a.get("name"):
            self.forms[-1].names.add(a["name"])
            if tag == "input" and a.get("type") in ("hidden", "text", "password", None, ""):
                self.forms[-1].fields.setdefault(a["name"], a.get("value", ""))

    def handle_data(self, data: str) -> None:
        if ".submit()" in data:
            self.scripted_submit = True


def forms_of(page: str) -> list[Form]:
    parser = _Forms()
    parser.feed(page)
    if parser.scripted_submit and parser.forms:
        parser.forms[0].submit_on_load = True
    return parser.forms


class ScriptedBrowser:
    """An HTTP client walking an SSO login like a browser (no JavaScript beyond auto-submit)."""

    def __init__(self, verify: object) -> None:
        self.http = httpx.Client(verify=verify, follow_redirects=True, timeout=30)  # type: ignore[arg-type]
        self.visited: list[str] = []

    def close(self) -> None:
        self.http.close()

    def _settle(self, r: httpx.Response) -> httpx.Response:
        """Follow meta refreshes and auto-submitting forms until a page needs a person."""
        for _ in range(10):
            self.visited.extend(str(h.url) for h in r.history)
            self.visited.append(str(r.url))
            m = _META.search(r.text)
            if m:
                r = self.http.get(html.unescape(m.group(1)))
                continue
            forms = forms_of(r.text)
            if forms and forms[0].submit_on_load:
                f = forms[0]
                r = self.http.post(urljoin(str(r.url), f.action), data=f.fields)
                continue
            return r
        raise AssertionError("too many redirects")

    def open(self, url: str) -> httpx.Response:
        return self._settle(self.http.get(url))

    def submit(self, page: httpx.Response, values: dict[str, str]) -> httpx.Response:
        """Fill the page's form that has all of ``values``' names, submit it, settle."""
        for f in forms_of(page.text):
            if set(values) <= f.names:
                data = {**f.fields, **values}
                url = urljoin(str(page.url), f.action) if f.action else str(page.url)
                return self._settle(self.http.request(f.method.upper(), url, data=data))
        raise AssertionError(f"no form with {sorted(values)} in {page.text[:500]}")


class BackgroundLogin:
    """`tsh login ... --browser=none` as a subprocess; :meth:`url` waits for the URL it prints."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*tsh_argv(installed=False), "login", "--browser=none", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env,
        )  # fmt: skip
        self._err: list[str] = []
        self._out = ""
        self._url = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line)
            if URL_LINE.match(line):
                self._url.set()
        self._url.set()

    def url(self, timeout: float = 30) -> str:
        assert self._url.wait(timeout), "tsh login printed no URL"
        m = URL_LINE.search("".join(self._err))
        assert m, f"no URL in tsh's stderr: {''.join(self._err)!r}"
        return m.group(1)

    def wait(self, timeout: float = 60) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) once tsh exits."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()  # a login's few lines fit in the pipe
        self._reader.join(5)
        return self.proc.returncode, out, "".join(self._err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def set_idp_user(issuer: str, sub: str, claims: dict[str, object]) -> None:
    """Give the mock IdP's subject ``sub`` these claims (oidc-provider-mock's PUT /users/<sub>)."""
    r = httpx.put(f"{issuer}/users/{sub}", json=claims, timeout=10)
    assert r.status_code == 204, r.text
