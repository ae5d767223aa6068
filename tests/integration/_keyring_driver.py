"""Run inside ``dbus-run-session``: a real Secret Service for the `-k only` test.

Usage: python _keyring_driver.py WEB_ADDR USER PROXY_HOST CLUSTER

Starts gnome-keyring-daemon (secrets component, unlocked) on the private
session bus, then drives `tsh login -k only`, `tsh status` after the agent
lost the key, and `tsh logout`, printing one JSON object of observations for
the test to assert on. SSH_AUTH_SOCK, SSL_CERT_FILE and TELEPORT_HOME come from
the environment. The daemon is stopped before exiting.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time


def tsh(*args: str, input: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tsh", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def agent() -> list[str]:
    r = subprocess.run(["ssh-add", "-L"], capture_output=True, text=True)
    return r.stdout.splitlines() if r.returncode == 0 else []  # 1: "no identities"


def main() -> None:
    web_addr, user, proxy_host, cluster = sys.argv[1:5]
    daemon = subprocess.Popen(
        ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert daemon.stdin is not None
    daemon.stdin.write(b"keyring-pw")
    daemon.stdin.close()
    out: dict[str, object] = {}
    try:
        import keyring

        deadline = time.monotonic() + 20
        while True:  # ready when the Secret Service answers on the bus
            try:
                keyring.get_password("tsh-py", "readiness-probe")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        out["backend"] = type(keyring.get_keyring()).__module__
        account = f"{proxy_host}/{user}/{cluster}"
        r = tsh("login", f"--proxy={web_addr}", f"--user={user}", "-k", "only", input="secret-pw\n")
        out["login"] = [r.returncode, r.stderr]
        out["in_keyring"] = keyring.get_password("tsh-py", account) is not None
        out["agent_after_login"] = agent()
        subprocess.run(["ssh-add", "-D"], capture_output=True, check=True)
        r = tsh("status")
        out["status"] = [r.returncode, r.stdout, r.stderr]
        out["agent_after_status"] = agent()
        r = tsh("logout")
        out["logout"] = [r.returncode, r.stdout, r.stderr]
        out["in_keyring_after_logout"] = keyring.get_password("tsh-py", account) is not None
        out["agent_after_logout"] = agent()
    finally:
        daemon.terminate()
        daemon.wait(10)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
