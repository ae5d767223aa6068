"""tsh.cli.main: every failure is one line on stderr and an exit status, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tsh.cli import _app, _hotpath, main


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["status", "--bogus"], "No such option: --bogus (see 'tsh status -h')"),
        (["nosuch"], "No such command 'nosuch'"),
        (["login", "--proxy=x", "--ttl=abc"], "'abc' is not a valid int"),
        (["ssh"], "Missing argument"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err


def test_unexpected_exception_is_one_line_unless_debugging(capsys, monkeypatch):
    def boom() -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(_app.version, "version", boom)
    monkeypatch.setattr(_app.app.registered_commands[0], "callback", boom)
    monkeypatch.delenv("TSH_DEBUG", raising=False)
    assert main(["version"]) == 1
    err = capsys.readouterr().err
    assert err == "error: internal error: RuntimeError: kaboom (TSH_DEBUG=1 shows the traceback)\n"
    monkeypatch.setenv("TSH_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["version"])


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("tsh-py v")


@pytest.mark.parametrize("typer_path", [False, True], ids=["hot-path", "typer"])
def test_dash_dash_version_is_tsh_version(capsys, monkeypatch, typer_path):
    assert main(["version"]) == 0
    expected = capsys.readouterr()
    if typer_path:
        monkeypatch.setattr(_hotpath, "run_hot", lambda args: None)
    assert main(["--version"]) == 0
    assert capsys.readouterr() == expected


def test_version_starts_without_typer():
    # `tsh version` has a start-up budget (benchmarks/startup.py) below typer's import.
    code = "import sys; from tsh.cli import main; main(['--version']); main(['version']); " \
        "print(sorted(m for m in ('typer', 'click') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "[]"


def test_os_errors_are_one_line(capsys, monkeypatch):
    def denied() -> None:
        raise PermissionError(13, "Permission denied", "/root/.local/share/tsh-py")

    monkeypatch.setattr(_app.version, "version", denied)
    assert main(["version"]) == 1
    assert capsys.readouterr().err == "error: Permission denied: /root/.local/share/tsh-py\n"


def test_update_equals_path_is_the_update_file_option():
    from tsh.cli.config import spell_update_path

    assert spell_update_path(["config", "--update=/x/c", "-p", "22"]) == [
        "config", "--update-file=/x/c", "-p", "22",
    ]  # fmt: skip
    assert spell_update_path(["config", "--update"]) == ["config", "--update"]
    assert spell_update_path(["config", "--update="]) == ["config", "--update="]  # click refuses it
    assert spell_update_path(["config", "--", "--update=x"]) == ["config", "--", "--update=x"]


def test_update_with_an_empty_path_is_a_usage_error(capsys):
    assert main(["config", "--update="]) == 2
    assert "does not take a value" in capsys.readouterr().err


def _write_profile(home, name: str, text: str, current: bool = True) -> str:
    import os

    os.makedirs(home, exist_ok=True)
    path = os.path.join(home, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(text)
    if current:
        with open(os.path.join(home, "current-profile"), "w") as f:
            f.write(f"{name}\n")
    return path


CORRUPT = {
    "not json": "web_proxy_addr: a.test:443\n",
    "wrong type": '{"web_proxy_addr": "a.test:443", "ssh_proxy_addr": "a.test:3023", '
    '"user": "joe", "cluster": "c", "valid_before": "tomorrow"}',
}


@pytest.mark.parametrize("text", sorted(CORRUPT.values()))
@pytest.mark.parametrize(
    "argv", [["status"], ["status", "-f", "json"], ["config"], ["ssh", "node1", "true"]]
)
def test_corrupt_current_profile_names_the_file_and_the_fix(capsys, monkeypatch, tmp_path, argv, text):
    home = tmp_path / "tsh"
    monkeypatch.setenv("TELEPORT_HOME", str(home))
    path = _write_profile(home, "a.test", text)
    assert main(argv) == 1
    out = capsys.readouterr()
    assert out.err.startswith(f"error: cannot read the profile {path}: "), out.err
    assert out.err.endswith(f"; run tsh logout, or delete {path}\n") and out.err.count("\n") == 1
    assert out.out == ""


def test_status_shows_good_profiles_and_warns_about_a_corrupt_one(capsys, monkeypatch, tmp_path):
    import time

    from tsh import Profile

    home = tmp_path / "tsh"
    monkeypatch.setenv("TELEPORT_HOME", str(home))
    good = Profile(
        web_proxy_addr="b.test:443", ssh_proxy_addr="b.test:3023", user="joe", cluster="c",
        valid_before=int(time.time()) + 3600,
    )  # fmt: skip
    _write_profile(home, "b.test", good.to_json())
    bad = _write_profile(home, "a.test", CORRUPT["wrong type"], current=False)
    assert main(["status"]) == 0
    out = capsys.readouterr()
    assert "> Profile URL:        https://b.test:443" in out.out
    assert out.err.startswith(f"WARNING: cannot read the profile {bad}: ") and out.err.count("\n") == 1
