"""Session recordings of the recording proxy: asciicast v2 files and their listing.

One file per session, ``DIR/recordings/<id>.cast`` (asciicast v2, as
asciinema plays it): a JSON header line, then one ``[t, code, data]`` event
per line, ``t`` in seconds since the start. Codes: ``"o"`` output (stdout and
stderr of the node, as a terminal shows them) and ``"r"`` a window change
(``"COLSxROWS"``). The header carries, besides ``version``/``width``/
``height``/``timestamp``, a ``"teleport"`` object: id, user (the Teleport
user, the certificate key id), login, node, cluster, kind (shell, exec or
subsystem), command, start, end (ISO 8601 UTC) and exit.

While a session runs its events stream to ``<id>.cast.part`` (so a crash
loses nothing); when it ends the final file is written atomically with the
end time in the header and the ``.part`` file is removed. Listing shows
running sessions with end ``-``.

No sockets here: the proxy feeds :class:`CastWriter`, the admin CLI reads.
"""

from __future__ import annotations

import codecs
import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.cluster._files import atomic_write, ensure_private_dir

__all__ = [
    "CastWriter",
    "Recording",
    "RecordingError",
    "RecordingInfo",
    "format_listing",
    "iso_utc",
    "list_recordings",
    "new_recording_id",
    "read_recording",
    "recordings_dir",
]

_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SUFFIX, _PART = ".cast", ".cast.part"


class RecordingError(Exception):
    """A recording that does not exist or cannot be read (one-line message)."""


def recordings_dir(data_dir: Path) -> Path:
    """Where a cluster keeps its recordings."""
    return data_dir / "recordings"


def new_recording_id() -> str:
    """A fresh session id (a UUID, as Teleport's session ids)."""
    return str(uuid.uuid4())


def iso_utc(ts: float) -> str:
    """``2024-05-01T12:00:00Z`` for a Unix time (whole seconds)."""
    stamp = dt.datetime.fromtimestamp(int(ts), dt.timezone.utc)
    return stamp.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class RecordingInfo:
    """Who did what where: the ``"teleport"`` object of a recording's header."""

    id: str
    user: str
    login: str
    node: str
    cluster: str
    kind: str  # "shell", "exec" or "subsystem"
    command: str | None = None
    start: float = 0.0
    end: float | None = None
    exit: int | str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "login": self.login,
            "node": self.node,
            "cluster": self.cluster,
            "kind": self.kind,
            "command": self.command,
            "start": iso_utc(self.start),
            "end": iso_utc(self.end) if self.end is not None else None,
            "exit": self.exit,
        }

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> RecordingInfo:
        meta = header["teleport"]

        def stamp(text: str | None) -> float | None:
            if text is None:
                return None
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

        return cls(
            id=meta["id"], user=meta["user"], login=meta["login"], node=meta["node"],
            cluster=meta["cluster"], kind=meta["kind"], command=meta.get("command"),
            start=stamp(meta["start"]) or 0.0, end=stamp(meta.get("end")), exit=meta.get("exit"),
        )  # fmt: skip


@dataclass
class Recording:
    """A parsed recording: header, info and events."""

    header: dict[str, Any]
    info: RecordingInfo
    events: list[list[Any]] = field(default_factory=list)

    def output(self) -> str:
        """Everything the session printed, in order (the ``"o"`` events)."""
        return "".join(e[2] for e in self.events if e[1] == "o")


class CastWriter:
    """Streams one session to ``<dir>/<id>.cast.part``; :meth:`close` finalizes it.

    ``output`` takes raw bytes: they are decoded as UTF-8 incrementally (a
    character split across two reads stays whole; invalid bytes become U+FFFD),
    because asciicast events are text.
    """

    def __init__(
        self,
        directory: Path,
        info: RecordingInfo,
        width: int,
        height: int,
        env: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        ensure_private_dir(directory)
        self._dir = directory
        self._clock = clock
        self._start = clock()
        self.info = RecordingInfo(**{**info.__dict__, "start": self._start})
        self._header: dict[str, Any] = {
            "version": 2,
            "width": width,
            "height": height,
            "timestamp": int(self._start),
            "title": f"{info.user} as {info.login} on {info.node}",
            "env": dict(env or {}),
        }
        if info.command is not None:
            self._header["command"] = info.command
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._part = directory / f"{info.id}{_PART}"
        self._file: IO[str] | None = open(self._part, "x", encoding="utf-8")  # noqa: SIM115
        self._part.chmod(0o600)
        self._write_line({**self._header, "teleport": self.info.to_json()})

    @property
    def path(self) -> Path:
        """The final file (exists once the session is closed)."""
        return self._dir / f"{self.info.id}{_SUFFIX}"

    def output(self, data: bytes) -> None:
        """Record ``data`` printed by the session."""
        text = self._decoder.decode(data)
        if text:
            self._event("o", text)

    def resize(self, width: int, height: int) -> None:
        """Record a window change."""
        self._event("r", f"{width}x{height}")

    def close(self, exit: int | str | None = None) -> Path:
        """Finish: write ``<id>.cast`` with the end time, remove the ``.part`` file."""
        if self._file is None:
            return self.path
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self._event("o", tail)
        self._file.close()
        self._file = None
        end = self._clock()
        self.info = RecordingInfo(**{**self.info.__dict__, "end": end, "exit": exit})
        header = {
            **self._header,
            "duration": round(end - self._start, 6),
            "teleport": self.info.to_json(),
        }
        events = self._part.read_text(encoding="utf-8").split("\n", 1)[1]
        text = json.dumps(header, separators=(",", ":")) + "\n" + events
        atomic_write(self.path, text.encode(), 0o600)
        self._part.unlink()
        return self.path

    def _event(self, code: str, data: str) -> None:
        self._write_line([round(self._clock() - self._start, 6), code, data])

    def _write_line(self, value: Any) -> None:
        assert self._file is not None, "recording already closed"
        self._file.write(json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n")
        self._file.flush()


def _parse(path: Path) -> Recording:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise RecordingError(f"cannot read {path.name}: {e.strerror or e}") from None
    try:
        header = json.loads(lines[0])
        if header.get("version") != 2:
            raise ValueError("not asciicast v2")
        info = RecordingInfo.from_header(header)
        events = [json.loads(line) for line in lines[1:] if line.strip()]
    except (IndexError, KeyError, TypeError, ValueError) as e:
        raise RecordingError(f"{path.name} is not a valid recording: {e}") from None
    return Recording(header=header, info=info, events=events)


def read_recording(directory: Path, rec_id: str) -> Recording:
    """The recording ``rec_id`` (finished, else still running).

    Raises:
        RecordingError: a malformed id, no such recording, or an unreadable file.
    """
    if not _ID_RE.match(rec_id):
        raise RecordingError(f"invalid recording id {rec_id!r}: expected a UUID")
    for suffix in (_SUFFIX, _PART):
        path = directory / f"{rec_id}{suffix}"
        if path.is_file():
            return _parse(path)
    raise RecordingError(f"no recording {rec_id} (see `recordings ls`)")


def list_recordings(directory: Path) -> list[RecordingInfo]:
    """All readable recordings, oldest first (unreadable files are skipped)."""
    if not directory.is_dir():
        return []
    found: dict[str, RecordingInfo] = {}
    for path in directory.iterdir():
        rec_id = path.name.split(".", 1)[0]
        if not _ID_RE.match(rec_id) or not path.name.endswith((_SUFFIX, _PART)):
            continue
        if path.name.endswith(_PART) and rec_id in found:
            continue  # finished while we were listing
        try:
            found[rec_id] = _parse(path).info
        except RecordingError:
            continue
    return sorted(found.values(), key=lambda i: (i.start, i.id))


def format_listing(infos: Iterable[RecordingInfo]) -> str:
    """``ID USER LOGIN NODE START END`` per line; END is ``-`` while running."""
    lines = [
        f"{i.id} {i.user} {i.login} {i.node} {iso_utc(i.start)} "
        f"{iso_utc(i.end) if i.end is not None else '-'}"
        for i in infos
    ]
    return "".join(line + "\n" for line in lines)
