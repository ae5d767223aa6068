"""``start``: run the web API and the SSH proxy until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

import asyncssh
from aiohttp import web

from . import _trust
from ._authgrpc import start_auth_server
from ._ca import Authority
from ._config import ServerConfig
from ._sshproxy import follow_rotation, start_ssh_proxy
from ._state import ClusterState, StateError
from ._web import WebAPI, make_app, server_ssl_context

__all__ = ["serve"]

log = logging.getLogger("tests.cluster")


async def serve(
    state: ClusterState, config: ServerConfig, web_port: int, ssh_port: int, tunnel_port: int = 0,
    auth_port: int = 0,
) -> None:
    """Serve until a stop signal; prints one JSON readiness line on stdout when listening."""
    authority = Authority.load(state)
    stop_idp = None
    if config.auth == "oidc" and not config.oidc_issuer:
        from ._idp import start_oidc_provider

        config.oidc_issuer, stop_idp = start_oidc_provider()
    web_ca = authority.tls_ca_path
    if config.tls_routing:
        # TLS routing: the web certificate comes from a "public" CA of its
        # own, the SSH route's from the cluster's TLS CA (tests/cluster/_alpn.py).
        from ._alpn import create_web_ca

        key, cert, web_ca = create_web_ca(state.proxy_dir, state.name)
        cert_path, key_path = authority.https_identity(state.proxy_dir, issuer=(key, cert))
    else:
        cert_path, key_path = authority.https_identity(state.proxy_dir)

    api = WebAPI(state, authority, config)
    # Upgraded connections (WebSocket tunnels of long-lived hop masters) are
    # handlers that never end by themselves: give them 1 s at a stop, not 60.
    runner = web.AppRunner(make_app(api), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    listener = None
    try:
        if config.tls_routing:
            listener, acceptor, web_bound = await _single_port(
                state, authority, config, api, runner, web_port, (cert_path, key_path)
            )
        else:
            site = web.TCPSite(
                runner, "127.0.0.1", web_port, ssl_context=server_ssl_context(cert_path, key_path)
            )
            await site.start()
            web_bound = runner.addresses[0][1]
            acceptor = await start_ssh_proxy(state, authority, config, ssh_port)
        auth_server, auth_bound = await start_auth_server(state, authority, config, auth_port)
        config.auth_addr = f"127.0.0.1:{auth_bound}"
        # Trusted clusters: every cluster can be a root (this listener) and a leaf
        # (the agents). The tunnel keeps its own port in multiplex mode too.
        proxy_key = asyncssh.read_private_key(state.proxy_dir / "ssh_host_key")
        tunnel = await _trust.start_tunnel_server(
            state, authority, proxy_key, tunnel_port, config.offline_threshold_s
        )
    except OSError as e:
        await runner.cleanup()
        if stop_idp is not None:
            stop_idp()
        raise StateError(f"cannot listen: {e.strerror or e}") from None
    config.web_addr = f"127.0.0.1:{web_bound}"
    # Multiplex: no SSH port; SSH is reached on the web address.
    config.ssh_proxy_addr = config.web_addr if config.tls_routing else f"127.0.0.1:{acceptor.get_port()}"
    config.tunnel_addr = f"127.0.0.1:{tunnel.get_port()}"
    agents = asyncio.ensure_future(_trust.run_tunnel_agents(state, authority, config, proxy_key))
    tunnel_rotation = asyncio.ensure_future(_trust.follow_host_ca(tunnel, state, authority,
                                                                  proxy_key))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    ready = {
        "cluster": state.name,
        "web_addr": config.web_addr,
        "ssh_proxy_addr": config.ssh_proxy_addr,
        "tunnel_addr": config.tunnel_addr,
        "auth_addr": config.auth_addr,
        "tls_ca": str(web_ca),  # what verifies the web API
        "host_tls_ca": str(authority.tls_ca_path),
        "listener_mode": config.listener_mode,
        "behind_l7_lb": config.behind_l7_lb,
        "data_dir": str(state.data_dir),
        "server_version": config.server_version,
        "second_factor": config.second_factor,
        "recording": config.recording,
        "auth": config.auth,
        "connector_name": config.connector_name or config.auth,
        "oidc_issuer": config.oidc_issuer,
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
        tunnel_rotation.cancel()
        tunnel.close()
        rotation.cancel()
        if listener is not None:
            listener.close()
        acceptor.close()
        await acceptor.wait_closed()
        await tunnel.wait_closed()
        auth_server.close()
        await auth_server.wait_closed()
        await runner.cleanup()
        if stop_idp is not None:
            stop_idp()


async def _single_port(
    state: ClusterState,
    authority: Authority,
    config: ServerConfig,
    api: WebAPI,
    runner: web.AppRunner,
    web_port: int,
    web_identity: tuple[Any, Any],
) -> tuple[Any, Any, int]:
    """Multiplex: the ALPN router on the web port (or, behind an L7 load balancer,
    plain HTTPS there and the router behind ``/webapi/connectionupgrade``)."""
    from ._alpn import CapturedSSHServer, Router, buffered, connection_upgrade, serve_router

    captured = CapturedSSHServer()
    acceptor = await start_ssh_proxy(state, authority, config, 0, tunnel=captured)
    # The SSH route's certificate is verified against cas/<cluster>.pem: the
    # host CA's current TLS key signs it (it follows a rotation at restart).
    host_identity = authority.https_identity(
        state.proxy_dir, name="proxy_host", issuer=(authority.tls_ca_key, authority.tls_ca_cert)
    )
    assert runner.server is not None
    router = Router(buffered(captured.protocol), runner.server, host_identity, web_identity)

    async def upgrade(request: web.Request) -> web.StreamResponse:
        return await connection_upgrade(
            request, router, config.upgrade_ping_interval, config.lb_upgrades
        )

    api.routes["/webapi/connectionupgrade"] = {"GET": upgrade}
    if config.behind_l7_lb:  # the load balancer: the web certificate, no ALPN, HTTP only
        site = web.TCPSite(
            runner, "127.0.0.1", web_port, ssl_context=server_ssl_context(*web_identity)
        )
        await site.start()
        return None, acceptor, runner.addresses[0][1]
    listener = await serve_router(router, web_port)
    return listener, acceptor, listener.get_port()
