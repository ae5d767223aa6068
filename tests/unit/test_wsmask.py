"""tsh._proxy.wsmask: wsproto's frames masked by websockets' C extension, byte for byte."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, XorMaskerSimple

from tsh._proxy.wsmask import CMasker, c_apply_mask

apply_mask = c_apply_mask()


def test_the_c_extension_is_found_without_importing_its_package() -> None:
    # websockets is a dependency: a missing extension would silently cost a third of the
    # tunnel's CPU; its package's import would cost start-up (importlib.metadata).
    code = (
        "import sys; from tsh._proxy.wsmask import use_c_masker; assert use_c_masker();"
        "assert 'websockets' not in sys.modules and 'importlib.metadata' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@given(key=st.binary(min_size=4, max_size=4), chunks=st.lists(st.binary(max_size=40), max_size=6))
def test_same_output_as_wsprotos_masker(key: bytes, chunks: list[bytes]) -> None:
    assert apply_mask is not None
    CMasker.apply_mask = staticmethod(apply_mask)  # type: ignore[assignment]
    ours, theirs = CMasker(key), XorMaskerSimple(bytearray(key))
    for chunk in chunks:  # several calls: the key turns between them
        assert ours.process(chunk) == theirs.process(bytearray(chunk))


def test_a_frame_masked_in_c_reads_back_on_a_wsproto_server() -> None:
    code = (
        "from tsh._proxy.wsmask import use_c_masker; import wsproto.frame_protocol as fp, sys;"
        "assert use_c_masker(); assert fp.XorMaskerSimple.__name__ == 'CMasker';"
        "client = fp.FrameProtocol(client=True, extensions=[]);"
        "sys.stdout.buffer.write(client.send_data(bytes(range(256)) * 257, fin=True))"
    )
    frame = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    assert frame[1] & 0x80  # masked
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(frame)
    (got,) = list(server.received_frames())
    assert got.payload == bytes(range(256)) * 257
    assert XorMaskerSimple.__name__ == "XorMaskerSimple"  # this process's wsproto untouched
