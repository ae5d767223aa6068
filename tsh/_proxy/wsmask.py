"""WebSocket masking in C for the tunnel's frames (``websockets``' ``apply_mask``).

wsproto masks every client frame in Python (``XorMaskerSimple``: strided
slices and translate): measured here, a third of the L7 tunnel's CPU, and
that CPU is the tunnel's throughput. websockets ships the same operation as
a small C extension. Only that extension is loaded, from its file: importing
the ``websockets`` package runs importlib.metadata (about 45 ms of start-up
per connection). Where it is missing, wsproto's own masker stays.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["CMasker", "c_apply_mask", "use_c_masker"]


def c_apply_mask() -> Callable[[bytes, bytes], bytes] | None:
    """websockets' C ``apply_mask(data, mask)``, loaded without its package; None if absent."""
    import importlib.machinery
    import importlib.util
    import os

    try:
        spec = importlib.util.find_spec("websockets")  # finds, does not import
        if spec is None or not spec.submodule_search_locations:
            return None
        for where in spec.submodule_search_locations:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(where, "speedups" + suffix)
                if os.path.exists(path):
                    loader = importlib.machinery.ExtensionFileLoader("websockets.speedups", path)
                    module_spec = importlib.util.spec_from_loader(loader.name, loader)
                    assert module_spec is not None
                    module = importlib.util.module_from_spec(module_spec)
                    loader.exec_module(module)
                    apply_mask: Callable[[bytes, bytes], bytes] = module.apply_mask
                    return apply_mask
    except (ImportError, OSError, AttributeError, ValueError):
        return None
    return None


class CMasker:
    """wsproto's ``XorMaskerSimple`` (same interface and output) on a C ``apply_mask``."""

    apply_mask: Callable[[bytes, bytes], bytes]

    def __init__(self, masking_key: bytes | bytearray) -> None:
        self._key = bytes(masking_key)

    def process(self, data: bytes | bytearray) -> bytearray:
        out = bytearray(self.apply_mask(bytes(data), self._key))
        # Rotate the key, so that a next call goes on where this one stopped.
        turn = len(data) % 4
        self._key = self._key[turn:] + self._key[:turn]
        return out


def use_c_masker() -> bool:
    """Make wsproto mask with :class:`CMasker` in this process; False: left as it was.

    For the tunnel's own process (``python -m tsh._proxy.tunnel``) only: it
    replaces wsproto's module-level masker class, which wsproto looks up for
    each frame it masks; a library user's process is left alone.
    """
    apply_mask = c_apply_mask()
    if apply_mask is None:
        return False
    import wsproto.frame_protocol

    CMasker.apply_mask = staticmethod(apply_mask)
    wsproto.frame_protocol.XorMaskerSimple = CMasker  # type: ignore[misc,assignment]
    return True
