"""`tsh proxy ssh`, the hot path: OpenSSH starts it for every connection through `tsh config`.

Modules: ``command`` (the command: profile, agent, hop, supervisor), ``target``
(``%r@%h:%p``), ``dial`` (how the hop reaches the proxy), ``retry`` (what is
retried: pure), ``child`` (the hop process), ``supervisor`` (attempts and
replay), ``relay`` (copying bytes). Start-up time is part of every
connection's set-up, so this package imports only the stdlib it needs, and
tsh._store, tsh._core and tsh._openssh.hop; tests/unit/test_cli_hotpath.py
pins its import set. This file stays empty of imports.
"""
