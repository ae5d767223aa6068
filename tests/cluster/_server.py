"""``start``: run the web API and the SSH proxy until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys

import asyncssh
from aiohttp import web

from . import _trust
from ._ca import Authority
from ._config import ServerConfig
from ._sshproxy import follow_rotation, start_ssh_proxy
from ._state import ClusterState, StateError
from ._web import WebAPI, make_app, server_ssl_context

__all__ = ["serve"]

log = logging.getLogger("tests.cluster")


async def serve(
    state: ClusterState, config: ServerConfig, web_port: int, ssh_port: int, tunnel_port: int = 0
) -> None:
    """Serve until a stop signal; prints one JSON readiness line on stdout when listening."""
    authority = Authority.load(state)
    cert_path, key_path = authority.https_identity(state.proxy_dir)

    runner = web.AppRunner(make_app(WebAPI(state, authority, config)), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, "127.0.0.1", web_port, ssl_context=server_ssl_context(cert_path, key_path)
        )
        await site.start()
        web_bound = runner.addresses[0][1]
        acceptor = await start_ssh_proxy(state, authority, config, ssh_port)
        # Trusted clusters: every cluster can be a root (this listener) and a leaf (the agents).
        proxy_key = asyncssh.read_private_key(state.proxy_dir / "ssh_host_key")
        tunnel = await _trust.start_tunnel_server(
            state, authority, proxy_key, tunnel_port, config.offline_threshold_s
        )
    except OSError as e:
        await runner.cleanup()
        raise StateError(f"cannot listen: {e.strerror or e}") from None
    config.web_addr = f"127.0.0.1:{web_bound}"
    config.ssh_proxy_addr = f"127.0.0.1:{acceptor.get_port()}"
    config.tunnel_addr = f"127.0.0.1:{tunnel.get_port()}"
    agents = asyncio.ensure_future(_trust.run_tunnel_agents(state, authority, config, proxy_key))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    ready = {
        "cluster": state.name,
        "web_addr": config.web_addr,
        "ssh_proxy_addr": config.ssh_proxy_addr,
        "tunnel_addr": config.tunnel_addr,
        "tls_ca": str(authority.tls_ca_path),
        "data_dir": str(state.data_dir),
        "server_version": config.server_version,
        "second_factor": config.second_factor,
        "recording": config.recording,
        "pid": os.getpid(),
    }
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    log.info("cluster %s ready: web %s, ssh %s", state.name, config.web_addr,
             config.ssh_proxy_addr)
    rotation = asyncio.ensure_future(follow_rotation(acceptor, state, authority))
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        agents.cancel()
        tunnel.close()
        rotation.cancel()
        acceptor.close()
        await acceptor.wait_closed()
        await tunnel.wait_closed()
        await runner.cleanup()
