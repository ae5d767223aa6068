"""`tsh doctor [HOST]`: check the OpenSSH path step by step, one line per check."""

from __future__ import annotations

import sys
from typing import Optional

import typer

_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def doctor(
    host: Optional[str] = typer.Argument(
        None, metavar="[[LOGIN@]HOST]", help="Also connect to this node through the proxy."
    ),
    port: Optional[int] = typer.Option(None, "-p", "--port", help="The node's SSH port."),
    proxy: Optional[str] = typer.Option(
        None, "--proxy", metavar="HOST[:PORT]", help="Profile to check (default: the current one)."
    ),
    format: str = typer.Option("text", "-f", "--format", metavar="text|json", help="Output format."),
) -> None:
    """Check OpenSSH, the agent, the certificate, known_hosts, ~/.ssh/config, the proxy (and HOST).

    Exits 1 when a check fails.
    """
    from .._doctor import Check, Doctor, run_checks
    from .._exceptions import UsageError

    fmt = format.lower()
    if fmt not in ("text", "json"):
        raise UsageError(f'invalid format "{format}", must be one of [text json]')
    if host is not None:
        from .._openssh.argv import parse_destination

        parse_destination(host)  # bad input fails before any check runs

    def show(check: Check) -> None:
        line = f"[{_MARK[check.status]}] {check.name}: {check.detail}"
        if check.fix and check.status in ("fail", "warn"):
            line += f" -> {check.fix}"
        print(line, flush=True)

    checks = run_checks(Doctor(proxy=proxy), host, port, show if fmt == "text" else None)
    failed = any(c.status == "fail" for c in checks)
    if fmt == "json":
        import json

        sys.stdout.write(json.dumps({"ok": not failed, "checks": [c.to_json() for c in checks]},
                                    indent=2) + "\n")
    if failed:
        raise typer.Exit(1)
