"""tsh._core.status: the text, JSON and YAML of `tsh status`."""

from __future__ import annotations

import json
from datetime import timezone

import pytest
import yaml

from tsh._core.profile import Profile
from tsh._core.status import (
    format_go_duration,
    render_json,
    render_status,
    render_yaml,
    status_data,
)

NOW = 1_700_000_000


def _profile(host: str = "proxy.test", before: int = NOW + 43140) -> Profile:
    return Profile(
        web_proxy_addr=f"{host}:3080",
        ssh_proxy_addr=f"{host}:3023",
        user="alice",
        cluster="example.test",
        root_cluster="example.test",
        clusters=("example.test",),
        valid_after=NOW - 60,
        valid_before=before,
        principals=("root", "alice", "-teleport-internal-join", "-teleport-nologin-1234"),
        extensions=("permit-agent-forwarding", "permit-pty"),
        roles=("access", "editor"),
    )


def test_go_duration() -> None:
    assert format_go_duration(43140) == "11h59m0s"
    assert format_go_duration(43170) == "12h0m0s"
    assert format_go_duration(299) == "5m0s"
    assert format_go_duration(10) == "0s"


def test_text_layout() -> None:
    text = render_status([_profile("b.test"), _profile()], "proxy.test", NOW, tz=timezone.utc)
    assert text == (
        "> Profile URL:        https://proxy.test:3080\n"
        "  Logged in as:       alice\n"
        "  Cluster:            example.test\n"
        "  Roles:              access, editor\n"
        "  Logins:             root, alice\n"
        "  Valid until:        2023-11-15 10:12:20 +0000 UTC [valid for 11h59m0s]\n"
        "  Extensions:         permit-agent-forwarding, permit-pty\n"
        "\n"
        "  Profile URL:        https://b.test:3080\n"
        "  Logged in as:       alice\n"
        "  Cluster:            example.test\n"
        "  Roles:              access, editor\n"
        "  Logins:             root, alice\n"
        "  Valid until:        2023-11-15 10:12:20 +0000 UTC [valid for 11h59m0s]\n"
        "  Extensions:         permit-agent-forwarding, permit-pty\n"
        "\n"
    )


def test_expired_and_empty() -> None:
    assert "[EXPIRED]" in render_status([_profile(before=NOW)], "proxy.test", NOW, tz=timezone.utc)
    assert render_status([], None, NOW) == "Not logged in.\n"


def test_json_and_yaml_agree() -> None:
    data = status_data([_profile("b.test"), _profile()], "proxy.test", NOW)
    assert data["active"]["profile_url"] == "https://proxy.test:3080"
    assert data["active"]["logins"] == ["root", "alice"]
    assert [p["profile_url"] for p in data["profiles"]] == ["https://b.test:3080"]
    assert json.loads(render_json(data)) == data
    assert yaml.safe_load(render_yaml(data)) == data


def test_yaml_quotes_what_needs_it() -> None:
    data = {
        "a": "yes",
        "b": "1.5",
        "c": "x: y",
        "d": "-dash",
        "e": [],
        "f": None,
        "g": "#c",
        "h": "ok",
    }
    assert yaml.safe_load(render_yaml(data)) == data


def test_status_command_stays_light(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`tsh status` of an on-disk profile imports none of the heavy libraries (start-up budget)."""
    import os
    import subprocess
    import sys

    from tsh._store.store import ProfileStore

    store = ProfileStore(tmp_path / "tsh")
    store.home.mkdir()
    import time

    valid = _profile(before=int(time.time()) + 3600)  # an expired one exits 1
    (store.home / "proxy.test.yaml").write_text(valid.to_json())
    (store.home / "current-profile").write_text("proxy.test\n")
    code = (
        "import sys; from tsh.cli import main; rc = main(['status']); "
        "heavy = [m for m in ('asyncssh', 'httpx', 'keyring', 'cryptography') "
        "if m in sys.modules]; "
        "print(rc, heavy)"
    )
    env = dict(os.environ, TELEPORT_HOME=str(store.home))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.splitlines()[-1] == "0 []"
    assert "> Profile URL:        https://proxy.test:3080" in out.stdout


def _write_profiles(*profiles: Profile, current: str = "proxy.test") -> None:
    import os

    from tsh._store.store import ProfileStore

    store = ProfileStore()
    store.home.mkdir(exist_ok=True)
    for profile in profiles:
        (store.home / f"{profile.name}.yaml").write_text(profile.to_json())
    (store.home / "current-profile").write_text(current + "\n")
    assert str(store.home) == os.environ["TELEPORT_HOME"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_expired_active_profile_exits_1_after_showing_it(capsys, fmt) -> None:
    from tsh.cli import main

    _write_profiles(_profile(before=NOW))  # NOW is long gone
    assert main(["status", f"--format={fmt}"]) == 1
    out = capsys.readouterr()
    assert "EXPIRED" in out.out if fmt == "text" else json.loads(out.out)["active"]["expired"]
    assert out.err == (
        "error: the active profile proxy.test has expired; run: tsh login --proxy=proxy.test:3080\n"
    )


def test_only_the_active_profile_decides_the_exit_status(capsys) -> None:
    import time

    from tsh.cli import main

    _write_profiles(_profile(before=int(time.time()) + 3600), _profile("b.test", before=NOW))
    assert main(["status"]) == 0
    assert capsys.readouterr().err == ""


def test_config_warns_of_an_expired_certificate_with_the_one_prefix(capsys) -> None:
    from tsh.cli import main

    _write_profiles(_profile(before=NOW))
    assert main(["config"]) == 0
    assert capsys.readouterr().err == (
        "WARNING: the certificate has expired; run tsh login before using ssh\n"
    )
