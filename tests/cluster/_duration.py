"""Go ``time.Duration`` text: the form Teleport uses on the wire and in flags.

Pure functions, so the web API and the admin CLI agree on one spelling.
"""

from __future__ import annotations

import re

__all__ = ["NS_PER_S", "format_go_duration", "parse_duration"]

NS_PER_S = 1_000_000_000

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": NS_PER_S,
    "m": 60 * NS_PER_S,
    "h": 3600 * NS_PER_S,
}
_PART = re.compile(r"(\d+)(ns|us|µs|ms|s|m|h)")


def format_go_duration(ns: int) -> str:
    """Render nanoseconds as Go's ``time.Duration.String()`` does for whole seconds.

    12 hours gives ``"12h0m0s"``, 90 seconds ``"1m30s"``, zero ``"0s"``.
    Sub-second precision is not needed by the cluster and is dropped.
    """
    if ns < 0:
        return "-" + format_go_duration(-ns)
    secs = ns // NS_PER_S
    if secs == 0:
        return "0s"
    h, rest = divmod(secs, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def parse_duration(text: str) -> int:
    """Parse ``"30h"``, ``"1h30m"``, ``"90s"`` (Go syntax) or bare seconds into nanoseconds.

    Raises ValueError for anything else, including zero and negative values.
    """
    text = text.strip()
    if text.isdigit():
        ns = int(text) * NS_PER_S
    else:
        pos, ns = 0, 0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            ns += int(match.group(1)) * _UNITS_NS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(f"invalid duration {text!r}: use e.g. 30h, 1h30m or 90s")
    if ns <= 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return ns
