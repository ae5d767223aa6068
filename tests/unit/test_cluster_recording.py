"""Asciicast writing, reading and the `recordings ls` listing (no sockets)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.cluster._asciicast import (
    CastWriter,
    RecordingError,
    RecordingInfo,
    format_listing,
    iso_utc,
    list_recordings,
    new_recording_id,
    read_recording,
)

START = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _info(**kw: object) -> RecordingInfo:
    base: dict[str, object] = {
        "id": new_recording_id(), "user": "alice", "login": "root", "node": "node1",
        "cluster": "example.test", "kind": "shell",
    }  # fmt: skip
    base.update(kw)
    return RecordingInfo(**base)  # type: ignore[arg-type]


def test_asciicast_v2_file(tmp_path: Path) -> None:
    clock = Clock()
    w = CastWriter(tmp_path, _info(), 100, 30, {"TERM": "xterm"}, clock=clock)
    assert w.path.name.endswith(".cast") and not w.path.exists()  # still running
    clock.now += 0.5
    w.output(b"$ echo hi\r\nhi\r\n")
    clock.now += 1.25
    w.resize(120, 40)
    w.output("caf\u00e9".encode()[:-1])  # a UTF-8 character split across two reads
    w.output("caf\u00e9".encode()[-1:])
    clock.now += 1
    path = w.close(exit=0)

    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert (header["version"], header["width"], header["height"]) == (2, 100, 30)
    assert header["timestamp"] == int(START) and header["duration"] == 2.75
    assert header["env"] == {"TERM": "xterm"}
    meta = header["teleport"]
    assert (meta["user"], meta["login"], meta["node"], meta["kind"]) == (
        "alice",
        "root",
        "node1",
        "shell",
    )
    assert meta["start"] == "2023-11-14T22:13:20Z" and meta["end"] == "2023-11-14T22:13:22Z"
    assert meta["exit"] == 0
    events = [json.loads(line) for line in lines[1:]]
    assert events == [
        [0.5, "o", "$ echo hi\r\nhi\r\n"],
        [1.75, "r", "120x40"],
        [1.75, "o", "caf"],
        [1.75, "o", "\u00e9"],  # whole, not two replacement characters
    ]
    assert not list(tmp_path.glob("*.part"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_invalid_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    w = CastWriter(tmp_path, _info(kind="exec", command="cat /bin/true"), 80, 24)
    w.output(b"ok\xff\xfe")
    rec = read_recording(tmp_path, w.info.id)  # readable while running (.part)
    assert rec.info.end is None
    w.close(exit="signal TERM")
    rec = read_recording(tmp_path, w.info.id)
    assert rec.output() == "ok\ufffd\ufffd"
    assert rec.header["command"] == "cat /bin/true" and rec.info.exit == "signal TERM"


def test_listing_sorted_with_running_sessions(tmp_path: Path) -> None:
    clock = Clock()
    first = CastWriter(tmp_path, _info(user="bob"), 80, 24, clock=clock)
    clock.now += 60
    second = CastWriter(tmp_path, _info(login="ubuntu", node="db1"), 80, 24, clock=clock)
    clock.now += 5
    first.close(0)
    (tmp_path / "notes.txt").write_text("not a recording")
    (tmp_path / f"{new_recording_id()}.cast").write_text("{broken")  # skipped

    infos = list_recordings(tmp_path)
    assert [i.id for i in infos] == [first.info.id, second.info.id]
    assert format_listing(infos) == (
        f"{first.info.id} bob root node1 {iso_utc(START)} {iso_utc(START + 65)}\n"
        f"{second.info.id} alice ubuntu db1 {iso_utc(START + 60)} -\n"
    )
    assert list_recordings(tmp_path / "none") == [] and format_listing([]) == ""
    second.close(0)


@pytest.mark.parametrize(
    ("rec_id", "message"),
    [
        ("../../etc/passwd", "invalid recording id"),
        ("00000000-0000-4000-8000-00000000000", "invalid recording id"),
        ("00000000-0000-4000-8000-000000000000", "no recording"),
    ],
)
def test_read_recording_errors(tmp_path: Path, rec_id: str, message: str) -> None:
    with pytest.raises(RecordingError, match=message):
        read_recording(tmp_path, rec_id)


def test_read_recording_rejects_other_formats(tmp_path: Path) -> None:
    rec_id = new_recording_id()
    (tmp_path / f"{rec_id}.cast").write_text(json.dumps({"version": 1}) + "\n")
    with pytest.raises(RecordingError, match="not a valid recording"):
        read_recording(tmp_path, rec_id)
