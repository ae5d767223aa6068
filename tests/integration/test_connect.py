"""In-process SSH to nodes through the proxy (tsh._connect), against the test cluster.

Real sshd nodes behind the test cluster's SSH proxy; the profile comes from
_profiles.log_in (no `tsh login`). What `tsh ssh` checks through OpenSSH is
checked here too: the node's host certificate, the proxy's refusals, the
agent a recording proxy needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

import tsh
from tests.conftest import launch_node
from tests.integration._profiles import log_in
from tsh import InvalidNameError, NotLoggedInError, ProfileStore, SSHError, UsageError
from tsh._connect import ProxyConnection, RunResult
from tsh._core.profile import Profile

pytestmark = pytest.mark.integration


def _profile() -> tuple[Profile, ProfileStore]:
    store = ProfileStore()
    return store.select(None), store


@pytest.fixture(params=["plain", "other-ca"])
def untrusted(request, cluster, tmp_path_factory) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """A node with a plain host key, or a host certificate naming it from a CA the cluster does not know."""
    n = launch_node(cluster, "untrusted1", tmp_path_factory.mktemp("node-untrusted1"), request.param)
    yield n
    n.stop()


@asynccontextmanager
async def _counting_relay(target: str) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP relay in front of ``target``; yields its address and a one-item connection count."""
    host, port = target.rsplit(":", 1)
    count = [0]

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count[0] += 1
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", count
    finally:
        server.close()


def test_runs_a_command_on_a_node(cluster, node, login_name) -> None:  # type: ignore[no-untyped-def]
    log_in(cluster, [login_name])

    async def go():  # type: ignore[no-untyped-def]
        profile, store = _profile()
        async with await ProxyConnection.open(profile, store) as pc:
            async with pc.connect(f"{node.name}.{cluster.name}", login=login_name) as conn:
                done = await conn.run("echo hello; echo oops >&2; exit 3")
            by_port = await pc.run(node.name, "echo $USER", login=login_name, port=node.port)
            with pytest.raises(InvalidNameError):
                await pc.connect(node.name, login="")
            with pytest.raises(UsageError, match="^invalid node port 0$"):
                await pc.connect(node.name, login=login_name, port=0)
        return done, by_port

    done, by_port = asyncio.run(go())
    assert (done.exit_status, done.stdout, done.stderr) == (3, "hello\n", "oops\n")
    assert by_port == (0, f"{login_name}\n", "")


def test_twenty_concurrent_commands_share_one_proxy_login(cluster, node, login_name) -> None:  # type: ignore[no-untyped-def]
    log_in(cluster, [login_name])
    accepted_before = node.log().count("Accepted publickey")

    async def go():  # type: ignore[no-untyped-def]
        profile, store = _profile()
        async with _counting_relay(cluster.ssh_proxy_addr) as (addr, count):
            # The same profile, its SSH proxy reached through the counting relay.
            via_relay = profile._replace(ssh_proxy_addr=addr)
            async with await ProxyConnection.open(via_relay, store) as pc:
                results = await asyncio.gather(
                    *(pc.run(node.name, f"echo {i}", login=login_name) for i in range(20))
                )
            return results, count[0]

    results, proxy_connections = asyncio.run(go())
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]
    assert all(r.exit_status == 0 for r in results)
    assert proxy_connections == 1
    assert node.log().count("Accepted publickey") - accepted_before == 20


async def run(host: str, command: str, *, login: str, cluster: str | None = None) -> RunResult:
    """One command through a fresh tsh.AsyncClient on the current profile."""
    async with tsh.AsyncClient() as client:
        return await client.run(host, command, login=login, cluster=cluster)


def test_recording_proxy_with_key_on_disk_and_no_agent(start_cluster, start_node, login_name) -> None:  # type: ignore[no-untyped-def]
    rec = start_cluster(recording="proxy")
    rec_node = start_node(rec)
    log_in(rec, [login_name])  # key on disk; SSH_AUTH_SOCK is unset (conftest)

    result = asyncio.run(run(rec_node.name, "echo recorded", login=login_name))

    assert result == (0, "recorded\n", "")
    assert "Accepted publickey" in rec_node.log()  # the proxy logged in with our key


def test_key_only_in_agent(cluster, node, login_name, ssh_agent) -> None:  # type: ignore[no-untyped-def]
    log_in(cluster, [login_name], agent_only_sock=ssh_agent.sock)

    async def go():  # type: ignore[no-untyped-def]
        profile, store = _profile()
        assert profile.key_storage == "agent"
        async with await ProxyConnection.open(profile, store, agent_path=ssh_agent.sock) as pc:
            return await pc.run(node.name, "echo from-agent", login=login_name)

    assert asyncio.run(go()) == (0, "from-agent\n", "")


def test_node_without_a_host_certificate_of_the_cluster_is_refused(cluster, untrusted, login_name) -> None:  # type: ignore[no-untyped-def]
    log_in(cluster, [login_name])

    with pytest.raises(SSHError, match=rf"^untrusted1\.{cluster.name} is not trusted: .*CA"):
        asyncio.run(run("untrusted1", "true", login=login_name))
    assert "Accepted publickey" not in untrusted.log()  # refused before logging in


def test_unknown_node_gives_the_proxy_s_error(cluster, node, login_name) -> None:  # type: ignore[no-untyped-def]
    log_in(cluster, [login_name])

    with pytest.raises(SSHError) as err:
        asyncio.run(run("nosuchnode", "true", login=login_name))

    assert 'no node named "nosuchnode"' in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_cluster_gives_the_proxy_s_error(cluster, login_name) -> None:  # type: ignore[no-untyped-def]
    log_in(cluster, [login_name])

    with pytest.raises(SSHError, match='unknown cluster "other.test"'):
        asyncio.run(run("node1", "true", login=login_name, cluster="other.test"))


def test_untrusted_proxy_is_refused(cluster, login_name) -> None:  # type: ignore[no-untyped-def]
    me = log_in(cluster, [login_name])
    me.paths.known_hosts.write_text("")  # no CA: the proxy's host certificate proves nothing

    with pytest.raises(SSHError, match="is not trusted: its host certificate"):
        asyncio.run(run("node1", "true", login=login_name))


def test_missing_key_file_is_not_logged_in(cluster, login_name) -> None:  # type: ignore[no-untyped-def]
    me = log_in(cluster, [login_name])
    me.paths.private_key.unlink()

    with pytest.raises(NotLoggedInError, match="is missing; log in again"):
        asyncio.run(run("node1", "true", login=login_name))


def test_refused_subsystem_request_gives_the_proxy_s_error(cluster, login_name, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A request the proxy refuses outright (not after accepting it, as for an
    # unknown node), while the node handshake has already started on the channel.
    import tsh._connect

    monkeypatch.setattr(tsh._connect, "subsystem_name", lambda *_: "proxy:no-port@example.test")
    log_in(cluster, [login_name])

    # Its text on stderr comes with the refusal, which asyncssh does not pass on.
    with pytest.raises(SSHError, match="^the proxy refused proxy:no-port@example.test: "):
        asyncio.run(asyncio.wait_for(run("node1", "true", login=login_name), 30))
