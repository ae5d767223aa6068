"""SSO test helpers: `tsh login` in the background, the scripted browser, the mock IdP's users.

:class:`ScriptedBrowser` (tests/cluster/_browser.py, shared with the demo) is
the fast path without a real browser.
"""

from __future__ import annotations

import re
import subprocess
import threading

import httpx
import pytest

from tests.cluster._browser import ScriptedBrowser
from tests.cluster.launch import Cluster, launch_cluster
from tests.integration._tsh import tsh_argv

__all__ = [
    "URL_LINE", "BackgroundLogin", "ScriptedBrowser", "issuer", "oidc_cluster", "set_idp_user",
    "start_oidc_cluster",
]  # fmt: skip


def start_oidc_cluster(tmp_path_factory: pytest.TempPathFactory, version: str = "17.0.0") -> Cluster:
    """A cluster whose auth connector is OIDC (named ``okta``), with its own mock provider."""
    return launch_cluster(
        tmp_path_factory.mktemp(f"oidc-{version}") / "data", server_version=version,
        extra_args=("--auth=oidc", "--connector-name=okta"),
    )  # fmt: skip


@pytest.fixture(scope="module")
def oidc_cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """start_oidc_cluster() shared by one test module (import the fixture into it)."""
    c = start_oidc_cluster(tmp_path_factory)
    yield c
    c.stop()


def issuer(cluster: Cluster) -> str:
    """The cluster's OpenID provider (its ``PUT /users/<sub>`` sets claims)."""
    return str(cluster.info["oidc_issuer"])

URL_LINE = re.compile(r"^ (http://\S+)\r?$", re.M)


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
