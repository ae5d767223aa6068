"""tsh._openssh.reuse.stop_master: the one control command tsh sends a master.

A stand-in ``ssh`` on PATH records what it was given or never answers, as a
frozen (SIGSTOPped) master's control socket does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tsh._openssh.reuse import stop_master


def _ssh_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_it_stops_the_master_without_reading_the_users_config(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "args"
    _ssh_on_path(tmp_path, monkeypatch, f'echo "$*" > "{log}"')
    assert stop_master("/home/alice/.tsh/mux/0123456789abcdef-alice") is True
    assert log.read_text() == "-F /dev/null -S /home/alice/.tsh/mux/0123456789abcdef-alice -O stop _\n"


def test_a_master_that_never_answers_holds_it_only_for_its_timeout(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pid_file = tmp_path / "pid"
    _ssh_on_path(tmp_path, monkeypatch, f'echo $$ > "{pid_file}"; exec sleep 60')
    started = time.monotonic()
    assert stop_master("/m/sock", timeout=1.0) is True
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
        os.kill(int(pid_file.read_text()), 0)


def test_no_ssh_on_path_is_no_error(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", str(tmp_path))
    assert stop_master("/m/sock") is False
