"""Commands OpenSSH runs for every connection, started without typer.

``tsh config`` writes ``"<tsh>" proxy ssh --cluster=C --proxy=P %r@%h:%p`` as
the ProxyCommand, so the time to start ``tsh proxy ssh`` adds to the set-up of
every ``ssh`` through the generated configuration. Importing typer (and click)
costs more than the rest of tsh's start-up, so the words of that command line
are recognised here by hand. The recogniser accepts only unambiguous
spellings and otherwise returns None, so that typer (`tsh.cli.proxy`) stays
the one definition of the command: its help, its usage errors, its options.
A property test checks that both read alike the command lines it generates
from the words that matter (options, values, targets, help, ``--``).

``tsh version`` and ``tsh --version``, exactly so spelt, are answered here too:
their start-up budget is smaller than typer's import.
"""

from __future__ import annotations

__all__ = ["parse_proxy_ssh", "run_hot"]

_PROXY_SSH_OPTIONS = ("--cluster", "--proxy")


def parse_proxy_ssh(args: list[str]) -> dict[str, str | None] | None:
    """The arguments of ``proxy ssh [--cluster=C] [--proxy=P] [--no-reuse] TARGET``, or None.

    ``--no-reuse`` gives the key ``no_reuse``.

    None means "not this command, or not a plain spelling of it": help,
    ``--``, an unknown option, a missing value or target, an extra word.
    """
    if args[:2] != ["proxy", "ssh"]:
        return None
    found: dict[str, str | None] = {"target": None, "cluster": None, "proxy": None}
    words = iter(args[2:])
    for word in words:
        name, eq, value = word.partition("=")
        if word == "--no-reuse":
            found["no_reuse"] = "yes"
        elif name in _PROXY_SSH_OPTIONS:
            if not eq:
                value = next(words, "-")
                if value.startswith("-"):  # missing, or an option where click might differ
                    return None
            found[name[2:]] = value  # the last one wins, as in click
        elif word.startswith("-") or found["target"] is not None:
            return None
        else:
            found["target"] = word
    return found if found["target"] is not None else None


def run_hot(args: list[str]) -> int | None:
    """Run ``args`` if it is a hot-path command line; None to leave it to typer."""
    if args in (["version"], ["--version"]):
        from . import version

        version.version()
        return 0
    parsed = parse_proxy_ssh(args)
    if parsed is None:
        return None
    from .._proxy.command import proxy_ssh

    target = parsed["target"]
    assert target is not None
    return proxy_ssh(target, cluster=parsed.get("cluster"), proxy=parsed.get("proxy"),
                     reuse=not parsed.get("no_reuse"))
