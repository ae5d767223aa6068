"""Rendering of `tsh status` (pure: profiles and a clock in, text out).

The text layout is real tsh's (docs/protocol.md §10): the current
profile first, prefixed ``> ``, labels padded to column 22, ``Valid until`` in
Go's default time format with ``[valid for 11h59m0s]`` or ``[EXPIRED]``. The
JSON and YAML forms carry the same facts under the keys real tsh uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timezone, tzinfo
from typing import Any

from .profile import Profile

__all__ = [
    "format_go_duration",
    "format_valid_until",
    "profile_data",
    "status_data",
    "render_status",
    "render_json",
    "render_yaml",
]


def format_go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` of ``seconds`` rounded to the minute: ``11h59m0s``."""
    minutes = int((seconds + 30) // 60) if seconds > 0 else 0
    if minutes == 0:
        return "0s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m0s" if hours else f"{minutes}m0s"


def format_valid_until(valid_before: int, now: float, tz: tzinfo | None = None) -> str:
    """``2023-02-27 16:58:37 -0800 PST [valid for 11h59m0s]`` (or ``[EXPIRED]``)."""
    when = datetime.fromtimestamp(valid_before, tz or timezone.utc)
    if tz is None:
        when = when.astimezone()  # the local zone, as Go prints it
    text = when.strftime("%Y-%m-%d %H:%M:%S %z %Z")
    if valid_before <= now:
        return f"{text} [EXPIRED]"
    return f"{text} [valid for {format_go_duration(valid_before - now)}]"


def profile_data(profile: Profile, now: float) -> dict[str, Any]:
    """One profile as a JSON-ready dict."""
    return {
        "profile_url": f"https://{profile.web_proxy_addr}",
        "username": profile.user,
        "cluster": profile.cluster,
        "roles": list(profile.roles),
        "logins": list(profile.logins),
        "valid_until": datetime.fromtimestamp(profile.valid_before, timezone.utc)
        .isoformat()
        .replace("+00:00", "Z"),
        "expired": profile.valid_before <= now,
        "extensions": list(profile.extensions),
        "ssh_proxy_addr": profile.ssh_proxy_addr,
        "key_storage": profile.key_storage,
    }


def status_data(profiles: Sequence[Profile], current: str | None, now: float) -> dict[str, Any]:
    """``{"active": <profile or null>, "profiles": [<the others>]}``."""
    active = next((p for p in profiles if p.name == current), None)
    return {
        "active": profile_data(active, now) if active else None,
        "profiles": [profile_data(p, now) for p in profiles if p is not active],
    }


def _block(profile: Profile, active: bool, now: float, tz: tzinfo | None) -> list[str]:
    rows = [
        ("Profile URL", f"https://{profile.web_proxy_addr}"),
        ("Logged in as", profile.user),
    ]
    if profile.cluster:
        rows.append(("Cluster", profile.cluster))
    rows += [
        ("Roles", ", ".join(profile.roles)),
        ("Logins", ", ".join(profile.logins)),
        ("Valid until", format_valid_until(profile.valid_before, now, tz)),
        ("Extensions", ", ".join(profile.extensions)),
    ]
    prefix = "> " if active else "  "
    lines = []
    for i, (label, value) in enumerate(rows):
        lead = prefix if i == 0 else "  "
        lines.append(f"{lead}{label + ':':<20}{value}".rstrip())
    return lines


def render_status(
    profiles: Sequence[Profile], current: str | None, now: float, tz: tzinfo | None = None
) -> str:
    """The text of `tsh status`; ``Not logged in.`` when there are no profiles."""
    if not profiles:
        return "Not logged in.\n"
    ordered = sorted(profiles, key=lambda p: p.name != current)
    out: list[str] = []
    for p in ordered:
        out += _block(p, p.name == current, now, tz)
        out.append("")
    return "\n".join(out) + "\n"


def render_json(data: Any) -> str:
    """Indented JSON with a final newline."""
    return json.dumps(data, indent=2) + "\n"


#: Strings YAML reads back as the same string without quotes (no numbers, dates, URLs).
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./@+-]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return [pad + "{}"]
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{_yaml_scalar(k)}:")
                lines += _yaml_lines(v, indent + 2)
            else:
                lines.append(f"{pad}{_yaml_scalar(k)}: {_yaml_lines(v, 0)[0]}")
        return lines
    if isinstance(value, list):
        if not value:
            return [pad + "[]"]
        lines = []
        for item in value:
            sub = _yaml_lines(item, indent + 2)
            lines.append(f"{pad}- {sub[0].lstrip()}")
            lines += sub[1:]
        return lines
    return [pad + _yaml_scalar(value)]


def render_yaml(data: Any) -> str:
    """A small block-style YAML emitter for status data (no YAML library at start-up)."""
    return "\n".join(_yaml_lines(data, 0)) + "\n"
