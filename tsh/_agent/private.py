"""The agent `tsh proxy ssh` forwards to the proxy, set up only if the proxy uses it.

A proxy in recording mode (``session_recording: proxy``) logs in to the node
with the agent the client forwarded to it. Real tsh forwards its in-process
keyring, so that works even with ``--add-keys-to-agent=no``. `tsh proxy ssh`
does the equivalent with OpenSSH's own tools: it forwards a private socket
(:class:`LazyAgent`), and only when the proxy first uses it decides what is
behind it: the user's agent at ``SSH_AUTH_SOCK`` if that holds the profile's
certificate, else a private ``ssh-agent`` started then, its socket beside the
lazy ones in their 0700 temporary directory, with the key and certificate
loaded by ``ssh-add`` (lifetime: the certificate's). Only a recording proxy
ever asks, so a connection through a proxy that does not record runs no agent
process and no ``ssh-add``. Everything is stopped when the connection ends.
(:class:`AgentGate` is the socket a new master connection forwards while
its own agent is being loaded: tsh._proxy.mux.)

Even if `tsh proxy ssh` is killed outright (SIGKILL runs no ``finally``), a
:class:`_Reaper` started with the sockets kills the private agent and removes
the directory: a ``/bin/sh`` in its own session that waits for EOF on a pipe
only we hold, which the kernel closes when we die, however we die. (A
separate process because nothing else outlives us; not PR_SET_PDEATHSIG,
which is Linux-only and fires when the *thread* that started the agent ends;
not an abstract socket, as OpenSSH takes only paths for its agent.)
"""

from __future__ import annotations

import _socket  # socket.py, subprocess and threading only once needed: start-up time
import os
import time

from .._core.names import validate_path
from .._exceptions import InvalidNameError
from .procs import stop_process

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    import socket
    import subprocess
    import threading
    from collections.abc import Callable

__all__ = ["AgentGate", "LazyAgent", "PrivateAgent"]

#: Seconds to wait for the private agent to accept connections.
START_TIMEOUT = 5.0


class _Reaper:
    """Kills the private agent and removes ``directory`` once we are gone, even by SIGKILL.

    A ``/bin/sh`` reading a pipe whose only write end is ours (close-on-exec,
    so no other child holds it): when we die the kernel closes it, the shell
    reads EOF, kills the pid we last reported and removes the directory. It
    runs in its own session, so signals to our process group or terminal do
    not take it with us. :meth:`release` (after our own clean-up) lets it exit
    doing nothing.
    """

    _SCRIPT = (
        'pid=""\n'
        "while read -r line; do\n"
        '  case "$line" in done) exit 0;; *[!0-9]*) ;; *) pid="$line";; esac\n'
        "done\n"
        '[ -n "$pid" ] && [ "$pid" != 0 ] && kill -KILL "$pid" 2>/dev/null\n'
        'rm -rf -- "$1"\n'
    )

    def __init__(self, directory: str) -> None:
        read_end, self._write_end = os.pipe()  # both close-on-exec (PEP 446)
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            try:
                self.pid = os.posix_spawn(
                    "/bin/sh", ["sh", "-c", self._SCRIPT, "tsh-agent-reaper", directory],
                    {"PATH": os.defpath},
                    file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0),
                                  (os.POSIX_SPAWN_DUP2, devnull, 1),
                                  (os.POSIX_SPAWN_DUP2, devnull, 2)],
                    setsid=True,
                )  # fmt: skip
            finally:
                os.close(devnull)
        except NotImplementedError as e:  # a system without POSIX_SPAWN_SETSID
            os.close(self._write_end)
            raise OSError(f"cannot start the agent's reaper: {e}") from None
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)

    def guard(self, pid: int) -> None:
        """Kill ``pid`` if we die (0: nothing to kill any more).

        Raises:
            OSError: the reaper is gone (someone killed it).
        """
        os.write(self._write_end, b"%d\n" % pid)

    def release(self) -> None:
        """We cleaned up ourselves: let the reaper exit without doing anything."""
        try:
            os.write(self._write_end, b"done\n")
        except OSError:
            pass
        os.close(self._write_end)
        try:
            os.waitpid(self.pid, os.WNOHANG)  # reaps it if it already exited
        except ChildProcessError:
            pass


class PrivateAgent:
    """A private ``ssh-agent -D`` holding one key and certificate; :meth:`close` stops it."""

    def __init__(
        self, proc: subprocess.Popen[bytes], directory: str, reaper: _Reaper, owns_dir: bool
    ):
        self.proc = proc
        self.directory = directory
        self.sock = os.path.join(directory, "agent.sock")
        self._reaper = reaper
        self._owns_dir = owns_dir  # then the directory and the reaper are ours to remove

    @classmethod
    def start(
        cls,
        key_path: str,
        cert_path: str,
        lifetime: int,
        within: tuple[str, _Reaper] | None = None,
    ) -> PrivateAgent:
        """Start ssh-agent and add the key at ``key_path`` with the certificate at ``cert_path``.

        ``within``: a private directory for the socket and the reaper that guards
        it (LazyAgent's); by default the agent gets its own of both, and
        :meth:`close` removes the directory.

        Raises:
            OSError: no ssh-agent/ssh-add, the agent did not start, or it refused the key.
        """
        import shutil
        import subprocess

        ssh_agent, ssh_add = shutil.which("ssh-agent"), shutil.which("ssh-add")
        if ssh_agent is None or ssh_add is None:
            raise OSError("cannot find OpenSSH's `ssh-agent` and `ssh-add` on PATH")
        if within is None:
            directory = _private_dir("tsh-agent-")  # 0700: only we reach the socket
            try:
                reaper = _Reaper(directory)
            except OSError:
                os.rmdir(directory)
                raise
        else:
            directory, reaper = within
        try:
            proc = subprocess.Popen(
                [ssh_agent, "-D", "-a", os.path.join(directory, "agent.sock")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except BaseException:
            if within is None:
                os.rmdir(directory)
                reaper.release()
            raise
        agent = cls(proc, directory, reaper, owns_dir=within is None)
        try:
            reaper.guard(proc.pid)  # before the agent holds anything
            # ssh-add takes the certificate from "<key>-cert.pub" beside the key:
            # name both through links in the private directory, copying nothing.
            key = os.path.join(directory, "id")
            os.symlink(key_path, key)
            os.symlink(cert_path, key + "-cert.pub")
            agent._wait_ready()
            added = subprocess.run(
                [ssh_add, "-q", "-t", str(max(1, lifetime)), key],
                env={**os.environ, "SSH_AUTH_SOCK": agent.sock},
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_TIMEOUT,
            )  # fmt: skip
            if added.returncode != 0:
                raise OSError(f"ssh-add refused the key: {added.stderr.strip()}")
        except subprocess.TimeoutExpired:
            agent.close()
            raise OSError("ssh-add did not answer") from None
        except BaseException:
            agent.close()
            raise
        return agent

    def _wait_ready(self) -> None:
        import socket

        deadline = time.monotonic() + START_TIMEOUT
        while True:  # readiness: the agent accepts a connection
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(self.sock)
                    return
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise OSError("ssh-agent did not start") from None
            time.sleep(0.005)

    def close(self) -> None:
        """Stop the agent and remove its files (and its directory, if its own)."""
        stop_process(self.proc, 5)
        for name in ("agent.sock", "id", "id-cert.pub"):
            try:
                os.unlink(os.path.join(self.directory, name))
            except OSError:
                pass
        if self._owns_dir:
            try:
                os.rmdir(self.directory)
            except OSError:
                pass
            self._reaper.release()
        else:
            try:
                self._reaper.guard(0)  # its pid is free for reuse now: nothing to kill
            except OSError:
                pass


class LazyAgent:
    """Sockets for the hop to the proxy; what is behind them is decided on first use.

    :attr:`sock` is the agent to forward (``ForwardAgent <sock>``): on first
    use it leads to ``user_sock`` (the user's agent) if that holds the
    certificate at ``cert_path``, else to a :class:`PrivateAgent` started then
    with ``key_path``. With a proxy that does not record, nobody connects and
    nothing of this runs. Connections are relayed byte for byte by daemon threads.

    :attr:`presence_sock` is for the hop's ``SSH_AUTH_SOCK``: OpenSSH forwards
    an agent only if ``SSH_AUTH_SOCK`` accepts a connection, and it asks that
    agent for keys while logging in. This socket accepts and hangs up, which
    satisfies the first and makes the login use the key files, without
    starting anything.

    Both sockets listen once this is made; :meth:`serve` starts answering.
    In between, a connection waits in the listen queue. That lets `tsh proxy
    ssh` start the hop first and import threading and socket.py while the
    hop connects, instead of before. :meth:`serve` also starts the
    :class:`_Reaper` of the directory, so a SIGKILL before it leaves only an
    empty-handed directory behind: no agent exists yet.
    """

    def __init__(
        self, key_path: str, cert_path: str, lifetime: int, user_sock: str | None = None
    ) -> None:
        self._args = (key_path, cert_path, lifetime)
        self._user_sock = user_sock
        self._directory = _private_dir("tsh-agent-")
        self.sock = os.path.join(self._directory, "forward.sock")
        self.presence_sock = os.path.join(self._directory, "presence.sock")
        self._agent: PrivateAgent | None = None
        self._reaper: _Reaper | None = None
        self._upstream: str | None = None
        self._closed = False
        self._starting: threading.Lock | None = None  # guards _upstream, _agent and _closed
        self._listeners: list[_socket.socket] = []
        try:
            for path in (self.sock, self.presence_sock):
                listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                self._listeners.append(listener)
                listener.bind(path)
                listener.listen(8)
        except OSError:
            self.close()
            raise

    def serve(self) -> None:
        """Answer connections from now on, in daemon threads."""
        import socket
        import threading

        try:
            self._reaper = _Reaper(self._directory)
        except OSError:
            pass  # then a private agent gets a directory and a reaper of its own
        self._starting = threading.Lock()
        self._listeners = [socket.socket(fileno=listener.detach()) for listener in self._listeners]
        handlers = (self._relay_in_thread, socket.socket.close)
        for listener, handle in zip(self._listeners, handlers, strict=True):
            threading.Thread(target=_accept, args=(listener, handle), daemon=True).start()

    def _relay_in_thread(self, conn: socket.socket) -> None:
        import threading

        threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        assert self._starting is not None
        try:
            with self._starting:
                if self._closed:  # a connection accepted just before close()
                    raise OSError("closed")
                if self._upstream is None:
                    self._upstream = self._choose_upstream()
        except OSError:
            conn.close()  # the proxy sees a failed agent request
            return
        _relay_to(conn, self._upstream)

    def _choose_upstream(self) -> str:
        from .probe import agent_holds_certificate

        cert_path = self._args[1]
        if self._user_sock and agent_holds_certificate(cert_path, self._user_sock):
            return self._user_sock
        within = None if self._reaper is None else (self._directory, self._reaper)
        self._agent = PrivateAgent.start(*self._args, within=within)
        return self._agent.sock

    def close(self) -> None:
        """Stop listening, stop the private agent if it ran, remove the directory."""
        for listener in self._listeners:
            try:
                listener.shutdown(_socket.SHUT_RDWR)  # wakes the accepting thread
            except OSError:
                pass
            listener.close()
        if self._starting is None:  # never served: no thread can be starting an agent
            self._closed = True
        else:
            with self._starting:
                self._closed = True
                if self._agent is not None:
                    self._agent.close()
        for remove, path in (
            (os.unlink, self.sock),
            (os.unlink, self.presence_sock),
            (os.rmdir, self._directory),
        ):
            try:
                remove(path)
            except OSError:
                pass
        if self._reaper is not None:
            self._reaper.release()
            self._reaper = None


class AgentGate:
    """The socket a new master forwards while its agent is still being loaded.

    Bound at ``path`` before the hop starts, so that the proxy's first agent
    request (a recording proxy's, as soon as the first session opens) finds
    a socket. The master's guard (tsh._proxy.mux) renames the loaded
    agent's socket over ``path``: rename(2) is atomic, so from then on every
    connection reaches the agent itself. The ones that came here before are
    held in the listen queue, then relayed to the agent once it is in its
    place (:meth:`serve`). This keeps ``ssh-agent`` and ``ssh-add`` out of
    the connection's set-up: they run when the proxy first asks, or after
    the first session.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            self._listener.bind(path)
            self._listener.listen(8)
            self._inode = os.lstat(path).st_ino
        except OSError:
            self._listener.close()
            raise

    def replaced(self) -> bool | None:
        """True: the agent's socket is at :attr:`path` now; False: still this
        gate; None: nothing is (the guard gave up and removed the name)."""
        try:
            return os.lstat(self.path).st_ino != self._inode
        except OSError:
            return None

    def wait_replaced(self, timeout: float, going: Callable[[], bool] = lambda: True) -> bool:
        """Wait up to ``timeout`` seconds, while ``going()``, for the agent to take the
        gate's place; False if it did not (or nothing is at :attr:`path` any more)."""
        deadline = time.monotonic() + timeout
        while (in_place := self.replaced()) is False:
            if not going() or time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return bool(in_place)

    def serve(self, timeout: float, wanted: Callable[[], None]) -> None:
        """Answer connections from now on (daemon threads): each calls ``wanted``
        (the agent is needed), waits up to ``timeout`` seconds for the agent to
        take this gate's place, then is relayed to it (or, if it never does,
        hung up on)."""
        import socket
        import threading

        listener = socket.socket(fileno=self._listener.detach())
        self._listener = listener

        def relay(conn: socket.socket) -> None:
            wanted()
            if self.wait_replaced(timeout):
                _relay_to(conn, self.path)
            else:
                conn.close()  # the proxy sees a failed agent request

        def handle(conn: socket.socket) -> None:
            threading.Thread(target=relay, args=(conn,), daemon=True).start()

        threading.Thread(target=_accept, args=(listener, handle), daemon=True).start()

    def close(self) -> None:
        """Stop listening (the path is the guard's to remove: it may be the agent's by now)."""
        try:
            self._listener.shutdown(_socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self._listener.close()


def _relay_to(conn: socket.socket, upstream_path: str) -> None:
    """Copy ``conn`` to and from a new connection to ``upstream_path`` until both end."""
    import socket
    import threading

    upstream = socket.socket(socket.AF_UNIX)
    try:
        upstream.connect(upstream_path)
    except OSError:
        conn.close()  # the proxy sees a failed agent request
        upstream.close()
        return
    with conn, upstream:
        back = threading.Thread(target=_copy, args=(upstream, conn), daemon=True)
        back.start()
        _copy(conn, upstream)
        back.join()


def _accept(listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Hand each connection to ``handle``, until ``listener`` closes."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # closed
        handle(conn)


def _private_dir(prefix: str) -> str:
    """A new 0700 directory for agent sockets (tempfile.mkdtemp's job, by hand).

    By hand because this runs for every connection through `tsh proxy ssh`,
    and importing tempfile (with shutil and random) is most of its cost.
    ``$TMPDIR`` is used if it is an absolute path that OpenSSH takes literally
    in ``ForwardAgent`` (no ``%``, ``$``, quotes...), short enough for socket
    paths, and writable; otherwise /tmp.
    """
    tmpdir = os.environ.get("TMPDIR", "")
    try:
        if len(tmpdir) <= 64:  # sun_path holds 108 bytes
            return _new_dir(validate_path(tmpdir), prefix)
    except (InvalidNameError, OSError):
        pass
    return _new_dir("/tmp", prefix)


def _new_dir(base: str, prefix: str) -> str:
    while True:
        path = os.path.join(base, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(_socket.SHUT_WR)
        except OSError:
            pass
