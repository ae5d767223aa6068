"""What every command prints the same way (a leaf: the command modules import it)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

__all__ = ["print_warnings"]


def print_warnings(warnings: Iterable[object]) -> None:
    """Each warning (a TshWarning, or the CLI's own str) as a ``WARNING:`` line on stderr.

    stdout carries only results.
    """
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
