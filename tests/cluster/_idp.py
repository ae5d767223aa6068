"""A real OpenID provider for the test cluster's OIDC connector: oidc-provider-mock.

oidc-provider-mock (Flask + Authlib's authorization server) implements
discovery, the authorization code flow, the token endpoint, RS256-signed
id_tokens and a JWKS; its login page asks for a subject (``sub``) and has a
Deny button. Claims per subject are set with ``PUT /users/<sub>`` (JSON), e.g.
``{"email": "alice", "groups": ["ssh-users"], "logins": ["root"]}``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

__all__ = ["start_oidc_provider"]


def start_oidc_provider(host: str = "127.0.0.1") -> tuple[str, Callable[[], None]]:
    """Serve the provider on ``host`` (a free port) in threads; returns (issuer URL, stop)."""
    # The provider speaks plain http on loopback, which Authlib refuses unless told.
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    import oidc_provider_mock
    import werkzeug.serving

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = oidc_provider_mock.app(require_nonce=True, issue_refresh_token=False)
    # The package turns on Flask's debug mode and Werkzeug's interactive debugger; a test
    # provider has no use for a debugger console.
    import werkzeug.debug

    if isinstance(app.wsgi_app, werkzeug.debug.DebuggedApplication):
        app.wsgi_app = app.wsgi_app.app  # type: ignore[method-assign]
    app.debug = False
    server = werkzeug.serving.make_server(host, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="oidc-provider", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return f"http://{host}:{server.server_port}", stop
