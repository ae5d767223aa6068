"""A scripted browser for SSO logins without a real one (the tests' fast path and the demo).

An httpx client that follows 302s, fills and submits a page's form (as a
person would), submits auto-posting forms (SAML's HTTP-POST binding) and
follows Teleport's HTML meta refresh, fully HTML-unescaped (docs/protocol.md §16.4).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx

__all__ = ["Form", "ScriptedBrowser", "forms_of"]

_META = re.compile(r"""<meta http-equiv="refresh" content="0;URL='([^']*)'""")


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
