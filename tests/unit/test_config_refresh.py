"""Keeping the `tsh config --update` block current: the record, the refresh, the opt-out."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tsh._core.profile import Profile
from tsh._openssh.config_file import record_update, refresh_ssh_configs, ssh_config
from tsh._openssh.config_record import (
    ConfigUpdate,
    has_block,
    parse_records,
    refresh_text,
    refresh_wanted,
    render_records,
    with_record,
)
from tsh._store.store import ProfileStore

PROFILE = Profile(
    web_proxy_addr="proxy.example.com:3080",
    ssh_proxy_addr="proxy.example.com:3023",
    user="joe",
    cluster="root",
    root_cluster="root",
    clusters=("root", "leaf1"),
    valid_before=2_000_000_000,
)
USER_TEXT = "# mine\r\nHost work\n    User me\n"


@pytest.mark.parametrize(
    ("flag", "env", "wanted"),
    [
        (None, None, True),
        (None, "", True),
        (None, "yes", True),
        (None, "no", False),
        (None, " FALSE ", False),
        (None, "0", False),
        (None, "off", False),
        (True, "no", True),
        (False, None, False),
        (False, "yes", False),
    ],
)
def test_refresh_wanted_flag_over_environment(flag: bool | None, env: str | None, wanted: bool) -> None:
    assert refresh_wanted(flag, env) is wanted


def test_records_round_trip_and_replace_by_path() -> None:
    a = ConfigUpdate("/home/joe/.ssh/config", None, None, "tsh", ("root",))
    b = ConfigUpdate("/tmp/other", 22, "root", "openssh", ("root", "leaf"))
    records = with_record([a], b)
    assert parse_records(render_records(records)) == [a, b]
    a2 = ConfigUpdate(a.path, 3022, None, "tsh", ("root", "leaf"))
    assert with_record(records, a2) == [b, a2]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"updates": 3}',
        '{"updates": [{"path": "relative", "port": null, "login": null, '
        '"proxy_command": "tsh", "clusters": []}]}',
        '{"updates": [{"path": "/x", "port": 0, "login": null, "proxy_command": "tsh", "clusters": []}]}',
        '{"updates": [{"path": "/x", "port": true, "login": null, "proxy_command": "tsh", "clusters": []}]}',
        '{"updates": [{"path": "/x", "port": null, "login": null, "proxy_command": "sh", "clusters": []}]}',
        '{"updates": [{"path": "/x", "port": null, "login": null, "proxy_command": "tsh", "clusters": [1]}]}',
    ],
)
def test_malformed_records_are_left_out(text: str) -> None:
    assert parse_records(text) == []


def _block(clusters: tuple[str, ...], tmp_path: Path) -> str:
    store = ProfileStore(tmp_path / "home")
    return ssh_config(PROFILE._replace(clusters=clusters), store, ssh_version=(9, 2))


def test_refresh_text_replaces_only_the_block(tmp_path: Path) -> None:
    old = _block(("root",), tmp_path)
    new = _block(("root", "leaf1"), tmp_path)
    existing = USER_TEXT + "\n" + old + "Host after\n    Port 1\n"
    out = refresh_text(existing, new, "proxy.example.com")
    assert out == USER_TEXT + "\n" + new + "Host after\n    Port 1\n"
    assert refresh_text(out, new, "proxy.example.com") is None  # already current


def test_refresh_text_never_adds_a_block_the_user_removed(tmp_path: Path) -> None:
    block = _block(("root",), tmp_path)
    assert refresh_text(USER_TEXT, block, "proxy.example.com") is None
    assert refresh_text(block, block.replace("root", "x"), "other.example.com") is None
    broken = block.replace("# End generated Teleport configuration\n", "")
    assert not has_block(broken, "proxy.example.com")
    assert refresh_text(broken, block, "proxy.example.com") is None


def _update(store: ProfileStore, profile: Profile, target: Path, **options: object) -> None:
    """What `tsh config --update` does: write the block, record it."""
    from tsh._openssh.config_file import update_ssh_config

    opts = {"port": None, "login": None, "proxy_command": "tsh", "cluster": None, **options}
    text = ssh_config(
        profile, store, port=opts["port"], login=opts["login"],  # type: ignore[arg-type]
        proxy_command=opts["proxy_command"], cluster=opts["cluster"],  # type: ignore[arg-type]
        ssh_version=(9, 2),
    )  # fmt: skip
    update_ssh_config(target, text, profile.proxy_host)
    record_update(store, profile, target, **opts)  # type: ignore[arg-type]


def test_a_new_leaf_refreshes_the_block_with_the_same_options(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "home")
    target = tmp_path / "ssh_config"
    target.write_text(USER_TEXT)
    target.chmod(0o640)
    before = PROFILE._replace(clusters=("root",))
    _update(store, before, target, port=22, login="root")
    written = target.read_bytes()
    assert refresh_ssh_configs(store, before) == ([], [])  # same clusters: nothing to do
    assert target.read_bytes() == written

    changed, problems = refresh_ssh_configs(store, PROFILE)
    assert (changed, problems) == ([target], [])
    text = target.read_bytes().decode()
    assert text.startswith(USER_TEXT)  # the user's bytes, CRLF included, are kept
    assert "Host *.leaf1 !proxy.example.com\n    Port 22\n" in text
    assert text.count('User "root"') == 4
    assert os.stat(target).st_mode & 0o777 == 0o640
    assert (tmp_path / "ssh_config.tsh-backup").read_bytes() == written
    # The record now says leaf1 is covered: the next login changes nothing.
    assert refresh_ssh_configs(store, PROFILE) == ([], [])

    # The leaf removed: it leaves the block.
    assert refresh_ssh_configs(store, before) == ([target], [])
    assert target.read_bytes() == written


def test_only_recorded_blocks_of_all_clusters_are_refreshed(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "home")
    target = tmp_path / "ssh_config"
    before = PROFILE._replace(clusters=("root",))
    _update(store, before, target)
    _update(store, before, target, cluster="root")  # a one-cluster block drops the record
    written = target.read_bytes()
    assert refresh_ssh_configs(store, PROFILE) == ([], [])
    assert target.read_bytes() == written


def test_a_removed_block_or_file_is_left_alone(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "home")
    target = tmp_path / "ssh_config"
    before = PROFILE._replace(clusters=("root",))
    _update(store, before, target)
    target.write_text(USER_TEXT)
    assert refresh_ssh_configs(store, PROFILE) == ([], [])
    assert target.read_bytes() == USER_TEXT.encode()
    record = store.paths_for(PROFILE).ssh_config_record
    assert parse_records(record.read_text()) == []  # the block is gone: so is its record
    target.write_text(ssh_config(before, store, ssh_version=(9, 2)))  # by hand, not --update
    assert refresh_ssh_configs(store, PROFILE) == ([], [])

    _update(store, before, target)
    target.unlink()
    assert refresh_ssh_configs(store, PROFILE) == ([], [])
    assert not target.exists()
    assert parse_records(record.read_text()) == []


def test_a_broken_file_is_a_problem_not_a_failure(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "home")
    target = tmp_path / "ssh_config"
    before = PROFILE._replace(clusters=("root",))
    _update(store, before, target)
    target.unlink()
    target.mkdir()
    changed, problems = refresh_ssh_configs(store, PROFILE)
    assert changed == []
    assert len(problems) == 1 and "is not a regular file" in problems[0]


def test_login_refreshes_unless_opted_out_or_the_list_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tsh._auth.login import LoginResult
    from tsh._exceptions import TshWarning
    from tsh.cli import login as cli_login

    home = tmp_path / "home"
    monkeypatch.setenv("TELEPORT_HOME", str(home))
    store = ProfileStore(home)
    target = tmp_path / "ssh_config"
    before = PROFILE._replace(clusters=("root",))
    _update(store, before, target)
    written = target.read_bytes()

    monkeypatch.setenv("TELEPORT_UPDATE_SSH_CONFIG", "no")
    cli_login.refresh_ssh_config(LoginResult(PROFILE))
    monkeypatch.delenv("TELEPORT_UPDATE_SSH_CONFIG")
    cli_login.refresh_ssh_config(LoginResult(PROFILE), False)
    # The list was not learnt from the auth API: it says nothing about leaves.
    cli_login.refresh_ssh_config(LoginResult(PROFILE._replace(key_storage="agent")))
    unknown = TshWarning("leaf-cas-unavailable", "the host CAs of leaf clusters were not fetched")
    cli_login.refresh_ssh_config(LoginResult(PROFILE, [unknown]))
    assert target.read_bytes() == written
    assert capsys.readouterr().err == ""

    cli_login.refresh_ssh_config(LoginResult(PROFILE))
    assert target.read_bytes() != written
    assert capsys.readouterr().err == (
        f"Updated the Teleport block in {target}: the clusters of proxy.example.com changed "
        "(now root, leaf1).\n"
    )


def test_login_help_names_the_opt_out() -> None:
    from tsh.cli._app import app

    out = CliRunner().invoke(app, ["login", "--help"], env={"COLUMNS": "200"}).output
    assert "--no-update-ssh-config" in out


def test_refreshed_block_resolves_with_ssh_G(tmp_path: Path) -> None:
    """The oracle: ssh -G reads the refreshed file and finds the leaf's ProxyCommand."""
    store = ProfileStore(tmp_path / "home")
    target = tmp_path / "ssh_config"
    _update(store, PROFILE._replace(clusters=("root",)), target)
    refresh_ssh_configs(store, PROFILE)
    out = subprocess.run(
        ["ssh", "-F", str(target), "-G", "node2.leaf1"], capture_output=True, text=True, check=True
    ).stdout
    command = next(ln for ln in out.splitlines() if ln.startswith("proxycommand "))
    assert "leaf1" in command
