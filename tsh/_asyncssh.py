"""asyncssh, imported without its post-quantum library probe.

At import, asyncssh looks for liboqs with ``ctypes.util.find_library``, which
runs ``ldconfig -p`` and ``gcc`` in subprocesses: 40-80 ms on every `tsh proxy
ssh`, i.e. on every OpenSSH connection through the generated config. The
ML-KEM key exchange tsh would use comes from ``cryptography`` anyway; only
sntrup761 needs liboqs, and the other key exchanges are negotiated instead.
Import asyncssh from here (``from ._asyncssh import asyncssh``) everywhere.
"""

from __future__ import annotations

import ctypes.util

__all__ = ["asyncssh"]

_find_library = ctypes.util.find_library


def _find_library_except_oqs(name: str) -> str | None:
    return None if name in ("oqs", "liboqs") else _find_library(name)


ctypes.util.find_library = _find_library_except_oqs
try:
    import asyncssh
finally:
    ctypes.util.find_library = _find_library
