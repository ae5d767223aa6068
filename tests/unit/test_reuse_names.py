"""tsh._openssh.reuse: control socket names and the persist cap (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsh._openssh.reuse import (
    CONTROL_PATH_MAX,
    PERSIST_SECONDS,
    control_path,
    fresh_until,
    persist_seconds,
    read_tag,
    tag_text,
)

MUX = "/home/alice/.local/share/tsh-py/mux"
CERT = "ssh-ed25519-cert-v01@openssh.com AAAAcert1 bob"


def _prefix(text: str | None) -> str:
    assert text is not None
    return text.split()[1]


def test_tag_names_profile_user_and_certificate_apart() -> None:
    base = _prefix(tag_text(MUX, "proxy.example.com", "bob", CERT, 2000))
    others = {
        _prefix(tag_text(MUX, "other.example.com", "bob", CERT, 2000)),
        _prefix(tag_text(MUX, "proxy.example.com", "carol", CERT, 2000)),
        _prefix(tag_text(MUX, "proxy.example.com", "bob", CERT.replace("cert1", "cert2"), 2000)),
    }
    assert base not in others and len(others) == 3
    assert base.startswith(MUX + "/") and len(base) == len(MUX) + 17


def test_tag_text_holds_validity_then_prefix(tmp_path: Path) -> None:
    text = tag_text(MUX, "p", "bob", CERT, 1234)
    assert text is not None and text.startswith("1234 ")
    tag = tmp_path / "reuse"
    tag.write_text(text)
    assert read_tag(str(tag)) == (1234, _prefix(text))


@pytest.mark.parametrize("content", ["", "x /a", "12", "12 relative", "12 /a b"])
def test_odd_tag_files_mean_no_reuse(tmp_path: Path, content: str) -> None:
    tag = tmp_path / "reuse"
    tag.write_text(content)
    assert read_tag(str(tag)) is None
    assert read_tag(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    "mux_dir",
    ["/" + "d" * 80, "/home/al ice/mux", "/home/%h/mux", "/home/$X/mux", "/home/é/mux"],
)
def test_no_tag_where_a_socket_path_cannot_work(mux_dir: str) -> None:
    assert tag_text(mux_dir, "p", "bob", CERT, 2000) is None


def test_control_path_fits_a_unix_socket_with_opensshs_suffix() -> None:
    prefix = _prefix(tag_text(MUX, "p", "bob", CERT, 2000))
    path = control_path(prefix, "root")
    assert path == f"{prefix}-root"
    room = CONTROL_PATH_MAX - len(prefix) - 1
    assert control_path(prefix, "a" * room) is not None
    assert control_path(prefix, "a" * (room + 1)) is None
    # OpenSSH binds "<path>.<16 characters>" first: it must fit macOS's 104 bytes.
    assert CONTROL_PATH_MAX + 17 + 1 <= 104


def test_persist_is_capped_by_the_certificate() -> None:
    assert persist_seconds(1000 + 10 * PERSIST_SECONDS, 1000) == PERSIST_SECONDS
    assert persist_seconds(1042, 1000) == 42
    assert persist_seconds(900, 1000) == 0


def test_a_fresh_stamp_leaves_a_full_persist_and_the_clock_margin() -> None:
    stamp = fresh_until(100_000)
    assert persist_seconds(100_000, stamp) == PERSIST_SECONDS
    assert 100_000 - stamp >= PERSIST_SECONDS + 60  # a network file system's clock may lag
