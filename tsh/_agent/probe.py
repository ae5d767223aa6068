"""Does an ssh-agent hold a given certificate? Asked of OpenSSH's ``ssh-add -L``.

Kept apart from tsh._agent.agent (asyncssh) so that `tsh ssh` and
`tsh proxy ssh` can ask without importing an SSH library.
"""

from __future__ import annotations

import os
import subprocess

__all__ = ["agent_holds_certificate"]


def agent_holds_certificate(cert_path: os.PathLike[str] | str, sock: str | None) -> bool:
    """Does the agent at ``sock`` hold the certificate stored at ``cert_path``?

    Asks OpenSSH's ``ssh-add -L`` and compares key blobs as text: cheaper than
    importing an SSH library on every `tsh ssh`.
    """
    if not sock:
        return False
    try:
        with open(cert_path, encoding="ascii") as f:
            blob = f.read().split()[1]
        listed = subprocess.run(
            ["ssh-add", "-L"], capture_output=True, text=True, timeout=10,
            env={**os.environ, "SSH_AUTH_SOCK": sock},
        ).stdout  # fmt: skip
    except (OSError, IndexError, UnicodeDecodeError, subprocess.SubprocessError):
        return False
    return any(line.split()[1:2] == [blob] for line in listed.splitlines())
