"""Hand over to OpenSSH: a usable profile, the binary, and exec.

`tsh ssh` and `tsh scp` end here. Before exec, the profile must be usable:
logged in, the certificate still valid (or renewed through a caller-supplied
relogin, which needs a terminal), and for `-k only` profiles the key back in
the agent. Then the process is replaced by OpenSSH: no Python in the data path.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence

from ._exceptions import NotLoggedInError, UsageError
from ._profile import Profile
from ._store import ProfileStore

__all__ = ["usable_profile", "find_binary", "exec_argv"]


def usable_profile(
    store: ProfileStore,
    proxy: str | None,
    relogin: Callable[[Profile], Profile] | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[Profile, list[str]]:
    """The profile for ``proxy`` (or the current one), ready for OpenSSH.

    Returns the profile and warnings to show. An expired certificate is renewed
    with ``relogin`` when given.

    Raises:
        NotLoggedInError: no profile, or an expired one and no ``relogin``.
    """
    profile = store.select(proxy)
    if profile.valid_before <= clock():
        if relogin is None:
            raise NotLoggedInError(
                f"the certificate for {profile.name} has expired; "
                f"run: tsh login --proxy={profile.web_proxy_addr}"
            )
        profile = relogin(profile)
    warnings = []
    if profile.key_storage == "agent":
        from ._agent import ensure_agent_key

        warning = ensure_agent_key(profile, store)
        if warning:
            warnings.append(warning)
    return profile, warnings


def find_binary(name: str) -> str:
    """Absolute path of the OpenSSH program ``name``.

    Raises:
        UsageError: it is not on PATH.
    """
    path = shutil.which(name)
    if path is None:
        raise UsageError(f"cannot find OpenSSH's `{name}` on PATH; install the OpenSSH client")
    return path


def exec_argv(argv: Sequence[str]) -> None:
    """Replace this process with ``argv`` (argv[0] is an absolute path). Never returns."""
    os.execv(argv[0], list(argv))
