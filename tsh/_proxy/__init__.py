"""`tsh proxy ssh`, the hot path: OpenSSH starts it for every connection through `tsh config`.

Modules: ``command`` (the command: profile, agent, hop, supervisor), ``target``
(``%r@%h:%p``), ``dial`` (how the hop reaches the proxy: TCP, or TLS routing),
``tunnel`` (TLS routing in Python, and the L7 connection upgrade: the
hop's ProxyCommand where OpenSSL cannot do it), ``retry`` (what is
retried: pure), ``child`` (the hop process), ``supervisor`` (attempts and
replay), ``relay`` (copying bytes). Start-up time is part of every
connection's set-up, so this package imports only the stdlib it needs, and
tsh._store, tsh._core, tsh._openssh.hop and tsh._agent.private;
tests/unit/test_cli_hotpath.py pins the exact set of tsh modules it loads. This file stays empty of imports.
"""
