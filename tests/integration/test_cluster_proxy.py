"""The SSH proxy's byte pipe: half-close, routing errors, certificate checks (asyncssh client)."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import asyncssh
import pytest

from tests.integration._profiles import request_cert

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def user_identity(cluster) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
    cluster.add_user("pipe-user", ["root", "pipe"])
    key = asyncssh.generate_private_key("ssh-ed25519")
    cert = request_cert(cluster, "pipe-user", key)["cert"]
    return key, asyncssh.import_certificate(base64.b64decode(cert))


@pytest.fixture(scope="module")
def known_hosts(cluster) -> asyncssh.SSHKnownHosts:
    """The cluster's host CA, trusted for the proxy dialled as 127.0.0.1 too."""
    return asyncssh.import_known_hosts(
        cluster.admin("auth", "export", "--type=host").replace(
            f"*.{cluster.name} ", f"*.{cluster.name},127.0.0.1 ", 1)
    )


class _Collect(asyncssh.SSHClientSession):
    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr += data
        else:
            self.stdout += data


async def _proxy_session(cluster, identity, known_hosts, login: str, subsystem: str,
                         payload: bytes):
    async with asyncssh.connect(
        "127.0.0.1", cluster.ssh_proxy_port, username=login, client_keys=[identity],
        known_hosts=known_hosts, agent_path=None, config=None,
    ) as conn:
        chan, session = await conn.create_session(_Collect, subsystem=subsystem, encoding=None)
        if payload:
            chan.write(payload)
        chan.write_eof()  # half-close: the node must still be able to answer
        await asyncio.wait_for(chan.wait_closed(), 20)
        return chan.get_exit_status(), session


async def _count_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read()  # until the client's EOF arrives through the proxy
    writer.write(f"got {len(data)} bytes, sha256={hashlib.sha256(data).hexdigest()}".encode())
    await writer.drain()
    writer.close()


def test_pipe_carries_bytes_and_half_close(cluster, user_identity, known_hosts) -> None:
    payload = bytes(range(256)) * 2048  # 512 KiB: more than one window and buffer

    async def main():
        server = await asyncio.start_server(_count_until_eof, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cluster.admin("nodes", "add", "counter", f"127.0.0.1:{port}")
        async with server:
            return await _proxy_session(cluster, user_identity, known_hosts, "pipe",
                                        f"proxy:counter:{port}", payload)

    status, session = asyncio.run(main())
    digest = hashlib.sha256(payload).hexdigest()
    assert session.stdout == f"got {len(payload)} bytes, sha256={digest}".encode()
    assert status == 0


def test_unknown_node_gives_stderr_and_exit_1(cluster, user_identity, known_hosts) -> None:
    status, session = asyncio.run(
        _proxy_session(cluster, user_identity, known_hosts, "root", "proxy:nowhere:3022", b"")
    )
    assert status == 1
    assert b'no node named "nowhere"' in session.stderr


def test_unknown_cluster_is_refused(cluster, user_identity, known_hosts) -> None:
    status, session = asyncio.run(
        _proxy_session(cluster, user_identity, known_hosts, "root", "proxy:node1:3022@leaf.test",
                       b"")
    )
    assert status == 1
    assert b'unknown cluster "leaf.test"' in session.stderr


def test_node_down_is_a_clear_error(cluster, user_identity, known_hosts) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster.admin("nodes", "add", "down", f"127.0.0.1:{port}")
    status, session = asyncio.run(
        _proxy_session(cluster, user_identity, known_hosts, "root", f"proxy:down:{port}", b"")
    )
    assert status == 1
    assert b"failed connecting to node down" in session.stderr


@pytest.mark.parametrize("kind", ["plain key", "foreign CA", "wrong principal"])
def test_proxy_accepts_only_user_ca_certs_for_the_login(cluster, user_identity, kind) -> None:
    key, cert = user_identity
    login = "root"
    if kind == "plain key":
        client_keys = [key]
    elif kind == "foreign CA":
        rogue = asyncssh.generate_private_key("ssh-ed25519")
        client_keys = [(key, rogue.generate_user_certificate(key, "pipe-user",
                                                             principals=["root"]))]
    else:
        client_keys, login = [(key, cert)], "admin"

    async def main():
        await asyncssh.connect("127.0.0.1", cluster.ssh_proxy_port, username=login,
                               client_keys=client_keys, known_hosts=None, agent_path=None,
                               config=None)

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(main())
