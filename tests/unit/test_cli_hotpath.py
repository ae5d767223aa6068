"""tsh.cli._hotpath: `tsh proxy ssh` without typer reads every command line as typer does."""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsh.cli import _hotpath, main

REPO = Path(__file__).resolve().parents[2]

WORDS = st.sampled_from(
    ["proxy", "ssh", "--cluster", "--cluster=c1", "--cluster=", "--proxy", "--proxy=p:3080",
     "root@node1:22", "node2:3022", "-h", "--help", "--", "--bogus", "-x", "c2", "p2:1",
     "--no-reuse"]
)  # fmt: skip


def _typer_reading(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, object] | None:
    """What the typer command passes to proxy_ssh for ``args`` (None: it does not call it)."""
    import tsh._proxy.command

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(tsh._proxy.command, "proxy_ssh", lambda target, **kw: calls.append(
        {"target": target, **kw}) or 0)  # fmt: skip
    monkeypatch.setattr(_hotpath, "run_hot", lambda args: None)  # force the typer path
    main(args)
    return calls[0] if calls else None


@settings(max_examples=300, deadline=None)
@given(tail=st.lists(WORDS, max_size=5))
def test_every_plain_reading_is_typers(tail: list[str]) -> None:
    args = ["proxy", "ssh", *tail]
    fast = _hotpath.parse_proxy_ssh(args)
    if fast is None:
        return  # left to typer: nothing to compare
    with pytest.MonkeyPatch.context() as mp:
        reading = _typer_reading(args, mp)
    assert reading is not None
    if not reading.pop("reuse"):
        reading["no_reuse"] = "yes"
    assert reading == fast


def test_the_line_tsh_config_writes_takes_the_hot_path() -> None:
    args = ["proxy", "ssh", "--cluster=example.test", "--proxy=proxy.example.com:3080",
            "root@node1.example.test:3022"]  # fmt: skip
    assert _hotpath.parse_proxy_ssh(args) == {
        "target": "root@node1.example.test:3022",
        "cluster": "example.test",
        "proxy": "proxy.example.com:3080",
    }
    assert _hotpath.parse_proxy_ssh(["proxy", "ssh", "--cluster", "c", "n:22"]) == {
        "target": "n:22", "cluster": "c", "proxy": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [["proxy", "ssh"], ["proxy", "ssh", "-h"], ["proxy", "ssh", "--bogus", "n:22"],
     ["proxy", "ssh", "n:22", "extra"], ["proxy", "ssh", "--cluster"], ["proxy", "ssh", "--", "n:22"],
     ["proxy"], ["status"], []],
)  # fmt: skip
def test_anything_else_is_left_to_typer(args: list[str]) -> None:
    assert _hotpath.parse_proxy_ssh(args) is None


def test_usage_errors_still_come_from_typer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", "ssh", "--bogus", "n:22"]) == 2
    assert capsys.readouterr().err == "error: No such option: --bogus (see 'tsh proxy ssh -h')\n"


@pytest.fixture(scope="module")
def fresh_imports() -> dict[str, list[str]]:
    """One fresh interpreter: the modules the hot path's imports load ("hot"), also for
    `-k only` profiles ("hot_agent"), then every module loaded once `tsh config`'s
    tsh._openssh.config_file is imported as well ("all").

    Without site (``-S``): an editable install's import hook, run by site, loads
    pathlib and more before any of tsh, which would hide them here.
    """
    code = (
        "import sys\n"
        f"sys.path[:0] = {[str(REPO), *site.getsitepackages()]!r}\n"
        "before = set(sys.modules)\n"
        "import tsh.cli, tsh.cli._hotpath, tsh._proxy.command, tsh._openssh.hop, tsh._store.store\n"
        "import tsh._proxy.mux\n"  # hop reuse
        "import tsh._agent.private\n"
        "hot = set(sys.modules) - before\n"
        "import tsh._agent.agent, tsh._openssh.binary\n"  # `-k only` profiles
        "hot_agent = set(sys.modules) - before\n"
        "import tsh._openssh.config_file\n"
        "loaded = set(sys.modules)\n"
        "import json\n"
        "print(json.dumps({'hot': sorted(hot), 'hot_agent': sorted(hot_agent), 'all': sorted(loaded)}))\n"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


#: Every tsh module `tsh proxy ssh` loads with the key on disk. A new import into the hot
#: path changes this set: its start-up cost is then a visible decision (benchmarks/proxy_ssh.py).
HOT_PATH_TSH_MODULES = {
    "tsh", "tsh._exceptions", "tsh._version",
    "tsh.cli", "tsh.cli._hotpath",
    "tsh._proxy", "tsh._proxy.command", "tsh._proxy.target", "tsh._proxy.dial", "tsh._proxy.retry",
    "tsh._proxy.child", "tsh._proxy.supervisor", "tsh._proxy.relay", "tsh._proxy.mux",
    "tsh._openssh.reuse",
    "tsh._core", "tsh._core.addr", "tsh._core.names", "tsh._core.profile",
    "tsh._store", "tsh._store.fs", "tsh._store.layout", "tsh._store.store",
    "tsh._openssh", "tsh._openssh.hop",
    "tsh._agent", "tsh._agent.private", "tsh._agent.procs",
}  # fmt: skip
#: What `-k only` profiles load on top (the agent must hold the key).
HOT_PATH_AGENT_TSH_MODULES = {"tsh._agent.agent", "tsh._agent.probe", "tsh._openssh.binary"}


def _tsh_modules(names: list[str]) -> set[str]:
    return {name for name in names if name == "tsh" or name.startswith("tsh.")}


def test_the_hot_path_loads_exactly_these_tsh_modules(fresh_imports: dict[str, list[str]]) -> None:
    assert _tsh_modules(fresh_imports["hot"]) == HOT_PATH_TSH_MODULES
    assert _tsh_modules(fresh_imports["hot_agent"]) == HOT_PATH_TSH_MODULES | HOT_PATH_AGENT_TSH_MODULES


def test_the_hot_path_imports_only_what_the_data_path_needs(fresh_imports: dict[str, list[str]]) -> None:
    # Start-up time is part of every connection's set-up (benchmarks/proxy_ssh.py);
    # these modules cost more than the rest of it together.
    slow = {"typer", "click", "rich", "dataclasses", "inspect", "typing", "tempfile", "shutil",
            "random", "getpass", "ipaddress", "asyncssh", "httpx", "keyring", "cryptography",
            "platformdirs", "asyncio", "ssl", "tsh._openssh.argv", "tsh._openssh.config",
            "tsh._openssh.config_file", "tsh._web", "tsh._auth", "tsh._connect", "tsh._asyncssh",
            "tsh._store.secrets", "tsh._core.certs", "tsh._core.knownhosts", "tsh._core.status",
            "tsh._types"}  # fmt: skip
    loaded = set(fresh_imports["hot_agent"]) & slow
    assert not loaded, sorted(loaded)


def test_the_hop_starts_before_the_copying_is_imported(fresh_imports: dict[str, list[str]]) -> None:
    # With the key on disk, these load only once the hop to the proxy has started (if
    # at all), so their import overlaps with its connection instead of delaying it.
    after_start = {"pathlib", "urllib", "subprocess", "socket", "selectors", "threading", "locale",
                   "importlib", "warnings"}  # fmt: skip
    loaded = set(fresh_imports["hot"]) & after_start
    assert not loaded, sorted(loaded)


def test_config_and_proxy_cli_import_nothing_heavy(fresh_imports: dict[str, list[str]]) -> None:
    heavy = {"asyncssh", "httpx", "keyring", "cryptography"} & set(fresh_imports["all"])
    assert not heavy, heavy
