"""tsh.Client and tsh.AsyncClient against the test cluster and a real sshd node."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

import tsh
from tests.integration._tsh import PASSWORD

pytestmark = pytest.mark.integration


@pytest.fixture
def client_env(cluster, monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SSL_CERT_FILE", str(cluster.tls_ca))  # the cluster's HTTPS CA
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return tmp_path / "home"


def test_client_logs_in_renders_and_runs(openssh, cluster, node, login_name, client_env) -> None:
    cluster.add_user("cli-alice", [login_name])
    with tsh.Client(home=client_env) as client:
        result = client.login(cluster.web_addr, user="cli-alice", agent_mode="no",
                              authenticator=tsh.Password(PASSWORD))
        assert result.profile.user == "cli-alice" and client.status() == result.profile
        assert f"Host *.{cluster.name} " in client.ssh_config(port=node.port)
        done = client.run(node.name, "echo hi; echo oops >&2; exit 3", login=login_name)
        assert done == tsh.RunResult(3, "hi\n", "oops\n")
        argv = client.ssh_argv(f"{login_name}@{node.name}", ["echo", "via-openssh"], port=node.port)
        env = {**os.environ, "TELEPORT_HOME": str(client.store.home)}  # for its `tsh proxy ssh`
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                           stdin=subprocess.DEVNULL, env=env)
        assert (r.returncode, r.stdout) == (0, "via-openssh\n"), r.stderr
        assert client.logout(cluster.web_addr, "cli-alice").removed
        assert client.status() is None


def test_async_client_inside_a_running_loop(openssh, cluster, node, login_name, client_env) -> None:
    cluster.add_user("cli-bob", [login_name])

    async def main() -> list[str]:
        async with tsh.AsyncClient(home=client_env) as client:
            await client.login(cluster.web_addr, user="cli-bob", agent_mode="no",
                               authenticator=tsh.Password(lambda user: PASSWORD))
            async with client.connect(node.name, login=login_name) as conn:
                first = (await conn.run("echo one")).stdout
            rest = await asyncio.gather(*(client.run(node.name, f"echo {i}", login=login_name)
                                          for i in range(5)))
            return [str(first), *(r.stdout for r in rest)]

    assert asyncio.run(main()) == ["one\n", "0\n", "1\n", "2\n", "3\n", "4\n"]


def test_sync_client_works_inside_async_code(openssh, cluster, node, login_name, client_env) -> None:
    cluster.add_user("cli-carol", [login_name])

    async def main() -> str:  # a running loop in this thread: Client must not call asyncio.run here
        with tsh.Client(home=client_env) as client:
            client.login(cluster.web_addr, user="cli-carol", agent_mode="no",
                         authenticator=tsh.Password(PASSWORD))
            return client.run(node.name, "echo sync", login=login_name).stdout

    assert asyncio.run(main()) == "sync\n"


def test_errors_are_typed_and_name_no_flags(cluster, client_env) -> None:
    with tsh.Client(home=client_env) as client:
        with pytest.raises(tsh.NotLoggedInError) as e:
            client.run("node1", "true", login="root")
        assert "--" not in str(e.value)
        with pytest.raises(tsh.UsageError):
            client.login(authenticator=tsh.Password("x"))  # no proxy given
