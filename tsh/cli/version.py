"""`tsh version`."""

from __future__ import annotations

from .._version import __version__


def version() -> None:
    """Print the client version."""
    print(f"tsh-py v{__version__}")
