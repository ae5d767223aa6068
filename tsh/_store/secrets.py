"""The OS keyring, for `--add-keys-to-agent=only`: the private key that never touches disk.

Entries live under the service ``tsh-py`` with one account per proxy, user and
cluster (``<proxy>/<user>/<cluster>``), so that the key survives an ssh-agent
restart and `tsh status` can put it back into a fresh agent while the
certificate is valid. Backends that are not real keyrings (the fail backend,
``keyrings.alt``'s plaintext files) count as "no keyring": the key then lives
in the agent only, and the caller warns.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SERVICE", "account", "store_key", "load_key", "delete_key"]

SERVICE = "tsh-py"


def account(proxy_host: str, user: str, cluster: str) -> str:
    """The keyring account name of one profile's private key."""
    return f"{proxy_host}/{user}/{cluster}"


def _backend() -> Any:  # a keyring backend, or None
    """The keyring backend when it is a real one, else None."""
    import keyring
    from keyring.backends import fail

    try:
        backend = keyring.get_keyring()
    except Exception:  # a broken keyring configuration must not break tsh
        return None
    if isinstance(backend, fail.Keyring) or type(backend).__module__.startswith("keyrings.alt"):
        return None
    chained = getattr(backend, "backends", None)
    if chained is not None and not [
        b for b in chained if not type(b).__module__.startswith("keyrings.alt")
    ]:
        return None
    return backend


def store_key(proxy_host: str, user: str, cluster: str, private_key_pem: str) -> str | None:
    """Store the key; return None on success, else a one-line reason it was not stored."""
    backend = _backend()
    if backend is None:
        return "no usable OS keyring (Secret Service, Keychain or Credential Locker) was found"
    try:
        backend.set_password(SERVICE, account(proxy_host, user, cluster), private_key_pem)
    except Exception as e:  # keyring backends raise many types (dbus, locked, denied)
        return f"the OS keyring refused the key: {type(e).__name__}"
    return None


def load_key(proxy_host: str, user: str, cluster: str) -> str | None:
    """The stored private key, or None when there is none or no keyring."""
    backend = _backend()
    if backend is None:
        return None
    try:
        value = backend.get_password(SERVICE, account(proxy_host, user, cluster))
    except Exception:
        return None
    return value if isinstance(value, str) else None


def delete_key(proxy_host: str, user: str, cluster: str) -> bool:
    """Remove the stored key; True if one was removed."""
    backend = _backend()
    if backend is None:
        return False
    try:
        backend.delete_password(SERVICE, account(proxy_host, user, cluster))
    except Exception:  # keyring.errors.PasswordDeleteError when there is none, or a backend failure
        return False
    return True
