"""Command line of the test cluster: ``python -m tests.cluster <command> ...``.

    start --data-dir DIR [--name C] [--web-port N] [--ssh-port N] [--server-version V]
          [--second-factor off|otp] [--recording node|proxy|off]
          [--proxy-checks-host-keys yes|no] [--tunnel-port N] [--offline-threshold D]
          [--auth local|oidc|saml|github] [--connector-name NAME] [--oidc-issuer URL]
          [--auth-port N] [--auth-unimplemented M,...]
          [--listener-mode separate|multiplex] [--behind-l7-lb [--lb-upgrades all|websocket|none]]
    users add NAME --logins=a,b [--ttl=MAX] [--otp]   (password: first line of stdin)
    recordings ls
    recordings show ID
    auth export --type=user|host|tls
    auth sign --host=a,b,c --format=openssh --out=PATH
    auth rotate --type=user|host|all [--grace-period=D] [--manual] [--phase=P]
    status                                    (each CA's rotation, as tctl status)
    nodes add NAME HOST:PORT [--labels k=v,...]
    tokens add --type=trusted_cluster [--labels k=v,...]      (root; prints the token)
    trusted-clusters add --root-proxy=HOST:PORT --root-ca=PEM --token=T --role-map=R:L[,...]
                         [--tunnel-addr HOST:PORT]            (leaf)
    trusted-clusters rm NAME                                  (leaf)
    roles add NAME --logins=a,b                               (leaf roles for mapped users)
    auth principals LOGIN CERT_BASE64                         (sshd AuthorizedPrincipalsCommand)
    nodes ls
    demo [--recording proxy|node] [--sso] [--wait]

Admin commands take ``--data-dir DIR`` and work on a running cluster (it
re-reads its files) or on a stopped data dir.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from ._config import (
    AUTH_TYPES,
    LB_UPGRADES,
    LISTENER_MODES,
    RECORDING_MODES,
    SECOND_FACTORS,
    ServerConfig,
    parse_version,
)
from ._duration import NS_PER_S, parse_duration
from ._rotation import PHASES
from ._state import ClusterState, StateError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    dd = argparse.ArgumentParser(add_help=False)
    dd.add_argument("--data-dir", type=Path, required=True, help="the cluster's state directory")

    s = sub.add_parser("start", parents=[dd], help="run the cluster in the foreground")
    s.add_argument("--name", default=None, help="cluster name (default example.test)")
    s.add_argument("--web-port", type=int, default=0, help="HTTPS port (0 = free port)")
    s.add_argument("--ssh-port", type=int, default=0, help="SSH proxy port (0 = free port)")
    s.add_argument("--auth-port", type=int, default=0, help="auth gRPC port (0 = free port)")
    s.add_argument(
        "--auth-unimplemented", default="", metavar="METHOD,...",
        help="auth gRPC methods to answer UNIMPLEMENTED, as an older Teleport (e.g. ListRemoteClusters)",
    )
    s.add_argument("--server-version", default="17.0.0")
    s.add_argument("--second-factor", choices=SECOND_FACTORS, default="off")
    s.add_argument("--recording", choices=RECORDING_MODES, default="node")
    s.add_argument("--public-addr", default="", help="proxy public_addr advertised in ping, verbatim")
    s.add_argument(
        "--ssh-public-addr", default="",
        help="proxy ssh_public_addr advertised in ping, verbatim (default: the SSH port)",
    )
    s.add_argument(
        "--proxy-checks-host-keys", choices=("yes", "no"), default="yes",
        help="recording proxy: require node host certificates from the host CA (default yes)",
    )
    s.add_argument("--tunnel-port", type=int, default=0, help="reverse tunnel port (0 = free)")
    s.add_argument(
        "--offline-threshold", default="10s", help="a leaf without heartbeat for this is offline"
    )
    s.add_argument(
        "--auth", choices=AUTH_TYPES, default="local",
        help="auth connector: local passwords, or SSO (see tests/cluster/_sso.py)",
    )
    s.add_argument("--connector-name", default="", help="the SSO connector's name (default: its type)")
    s.add_argument(
        "--oidc-issuer", default="",
        help="--auth=oidc: the OpenID provider (default: oidc-provider-mock in this process)",
    )

    s.add_argument(
        "--listener-mode", choices=LISTENER_MODES, default="separate",
        help="multiplex: TLS routing, the web port serves SSH too (no SSH port)",
    )
    s.add_argument(
        "--behind-l7-lb", action="store_true",
        help="multiplex behind a TLS-terminating load balancer: no ALPN on the web port, "
        "SSH only through /webapi/connectionupgrade",
    )
    s.add_argument("--lb-upgrades", choices=LB_UPGRADES, default="all",
                   help="connection upgrades the load balancer lets through (default all)")
    s.add_argument("--upgrade-ping-interval", type=float, default=30.0,
                   help="seconds between alpn-ping pings (default 30)")

    users = sub.add_parser("users", help="manage users")
    users = users.add_subparsers(dest="action", required=True)
    ua = users.add_parser("add", parents=[dd], help="add a user; password = first stdin line")
    ua.add_argument("user")
    ua.add_argument("--logins", required=True, help="comma-separated OS logins")
    ua.add_argument("--ttl", default=None, help="maximum certificate TTL, e.g. 30h")
    ua.add_argument("--otp", action="store_true", help="enrol TOTP; prints the base32 secret")
    ua.add_argument("--roles", default="access", help=argparse.SUPPRESS)

    auth = sub.add_parser("auth", help="CA operations").add_subparsers(dest="action", required=True)
    ae = auth.add_parser("export", parents=[dd], help="print a CA public key")
    ae.add_argument("--type", choices=("user", "host", "tls"), required=True)
    asg = auth.add_parser("sign", parents=[dd], help="make a host key + host certificate")
    asg.add_argument("--host", required=True, help="comma-separated principals")
    asg.add_argument("--format", choices=("openssh",), required=True)
    asg.add_argument("--out", type=Path, required=True)
    asg.add_argument("--ttl", default="8760h", help="validity (default one year)")
    apr = auth.add_parser(
        "principals", parents=[dd], help="sshd AuthorizedPrincipalsCommand: %%u %%k"
    )
    apr.add_argument("login")
    apr.add_argument("cert", help="the user certificate, base64 (sshd's %%k)")

    ar = auth.add_parser("rotate", parents=[dd], help="rotate a CA (tctl auth rotate)")
    ar.add_argument("--type", choices=("user", "host", "all"), required=True)
    ar.add_argument(
        "--grace-period", default="30h",
        help="Grace period keeps previous certificate authorities signatures valid, if set to 0 "
        "will force users to re-login and nodes to re-register.",
    )
    ar.add_argument("--manual", action="store_true",
                    help="Activate manual rotation, set rotation phases manually")
    ar.add_argument("--phase", choices=PHASES, default=None,
                    help="Target rotation phase to set, used in manual rotation")
    sub.add_parser("status", parents=[dd], help="each CA's rotation state (tctl status)")

    nodes = sub.add_parser("nodes", help="manage nodes")
    nodes = nodes.add_subparsers(dest="action", required=True)
    na = nodes.add_parser("add", parents=[dd], help="register a node")
    na.add_argument("name")
    na.add_argument("addr", metavar="HOST:PORT")
    na.add_argument("--labels", default="", help="static labels, k=v,... (tsh ls shows them)")
    nodes.add_parser("ls", parents=[dd], help="list registered nodes")

    tokens = sub.add_parser("tokens", help="join tokens").add_subparsers(dest="action", required=True)
    ta = tokens.add_parser("add", parents=[dd], help="make a join token (printed on stdout)")
    ta.add_argument("--type", required=True, help="trusted_cluster")
    ta.add_argument("--labels", default="", help="k=v,... copied to the remote cluster")

    tc = sub.add_parser("trusted-clusters", help="join (leave) a root cluster from this leaf")
    tc = tc.add_subparsers(dest="action", required=True)
    tca = tc.add_parser("add", parents=[dd], help="join a root cluster")
    tca.add_argument("--root-proxy", required=True, metavar="HOST:PORT", help="root web proxy")
    tca.add_argument("--root-ca", required=True, type=Path, help="root web TLS CA (PEM)")
    tca.add_argument("--token", required=True)
    tca.add_argument("--role-map", required=True, metavar="REMOTE:LOCAL[,...]")
    tca.add_argument("--tunnel-addr", default=None, help="default: from the root's ping")
    tcr = tc.add_parser("rm", parents=[dd], help="leave a root cluster")
    tcr.add_argument("name")

    rcs = sub.add_parser("remote-clusters", help="on a root: its leaves (tctl rm rc/NAME)")
    rcs = rcs.add_subparsers(dest="action", required=True)
    rcr = rcs.add_parser("rm", parents=[dd], help="forget a leaf and its host CA")
    rcr.add_argument("name")

    roles = sub.add_parser("roles", help="roles").add_subparsers(dest="action", required=True)
    ra = roles.add_parser("add", parents=[dd], help="create or replace a role")
    ra.add_argument("name")
    ra.add_argument("--logins", required=True, help="comma-separated; {{internal.logins}} too")

    rec = sub.add_parser("recordings", help="session recordings (recording proxy mode)")
    rec_sub = rec.add_subparsers(dest="action", required=True)
    rec_sub.add_parser("ls", parents=[dd], help="one line per recording")
    rs = rec_sub.add_parser("show", parents=[dd], help="print a recording's output")
    rs.add_argument("id")

    demo = sub.add_parser("demo", help="cluster + real sshd + the OpenSSH flow, then stop")
    demo.add_argument("--wait", action="store_true", help="keep everything up until Ctrl-C")
    demo.add_argument(
        "--recording", choices=("proxy", "node"), default="proxy",
        help="session recording mode (default proxy: the seed page's scenario)",
    )
    demo.add_argument(
        "--sso", action="store_true",
        help="log in through the cluster's OIDC provider (tsh login --browser=none and a "
        "scripted browser) instead of a password",
    )
    return p


def _cmd_start(args: argparse.Namespace) -> int:
    try:
        parse_version(args.server_version)
    except ValueError as e:
        raise StateError(str(e)) from None
    try:
        offline_s = parse_duration(args.offline_threshold) / NS_PER_S
    except ValueError as e:
        raise StateError(str(e)) from None
    for port in (args.web_port, args.ssh_port, args.tunnel_port, args.auth_port):
        if not 0 <= port < 65536:
            raise StateError(f"invalid port {port}")
    state = ClusterState.init(args.data_dir, args.name)
    config = ServerConfig(
        cluster=state.name,
        server_version=args.server_version,
        second_factor=args.second_factor,
        recording=args.recording,
        proxy_checks_host_keys=args.proxy_checks_host_keys == "yes",
        public_addr=args.public_addr,
        ssh_public_addr=args.ssh_public_addr,
        offline_threshold_s=offline_s,
        auth=args.auth,
        connector_name=args.connector_name,
        oidc_issuer=args.oidc_issuer.rstrip("/"),
        auth_unimplemented=tuple(m.strip() for m in args.auth_unimplemented.split(",") if m.strip()),
        listener_mode="multiplex" if args.behind_l7_lb else args.listener_mode,
        behind_l7_lb=args.behind_l7_lb,
        lb_upgrades=args.lb_upgrades,
        upgrade_ping_interval=args.upgrade_ping_interval,
    )
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    from ._server import serve

    asyncio.run(serve(state, config, args.web_port, args.ssh_port, args.tunnel_port, args.auth_port))
    return 0


def _cmd_users_add(args: argparse.Namespace) -> int:
    state = ClusterState.open(args.data_dir)
    password = sys.stdin.readline().rstrip("\r\n")
    try:
        ttl = parse_duration(args.ttl) if args.ttl else None
    except ValueError as e:
        raise StateError(str(e)) from None
    logins = [x.strip() for x in args.logins.split(",") if x.strip()]
    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip()) or ("access",)
    user = state.add_user(args.user, password, logins, ttl, otp=args.otp, roles=roles)
    if user.otp_secret:
        print(user.otp_secret)
    else:
        print(f"user {user.name!r} added", file=sys.stderr)
    return 0


def _cmd_auth_export(args: argparse.Namespace) -> int:
    from ._ca import Authority

    authority = Authority.load(ClusterState.open(args.data_dir))
    exports = {"user": authority.export_user, "host": authority.export_host,
               "tls": authority.export_tls}
    sys.stdout.write(exports[args.type]())
    return 0


def _cmd_auth_rotate(args: argparse.Namespace) -> int:
    from ._ca import Authority
    from ._rotation import RotationError

    try:
        grace_s = 0 if args.grace_period.strip() in ("0", "0s") else (
            parse_duration(args.grace_period) // NS_PER_S
        )
    except ValueError as e:
        raise StateError(str(e)) from None
    authority = Authority.load(ClusterState.open(args.data_dir))
    try:
        authority.rotate(args.type, args.phase or "init", "manual" if args.manual else "auto",
                         grace_s)
    except RotationError as e:
        raise StateError(str(e)) from None
    if args.phase:
        print(f'Updated rotation phase to "{args.phase}". To check status use \'tctl status\'')
    else:
        print("Initiated certificate authority rotation. To check status use 'tctl status'")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ._ca import Authority, format_status

    state = ClusterState.open(args.data_dir)
    sys.stdout.write(format_status(Authority.load(state)))
    return 0


def _cmd_auth_sign(args: argparse.Namespace) -> int:
    from tests.cluster._files import atomic_write

    from ._ca import Authority

    principals = [h.strip() for h in args.host.split(",") if h.strip()]
    if not principals:
        raise StateError("--host needs at least one principal")
    try:
        ttl_s = parse_duration(args.ttl) // NS_PER_S
    except ValueError as e:
        raise StateError(str(e)) from None
    if not args.out.parent.is_dir():
        raise StateError(f"directory {args.out.parent} does not exist")
    authority = Authority.load(ClusterState.open(args.data_dir))
    key = authority.new_host_key()
    cert = authority.sign_host(key, principals, principals[0], ttl_s)
    atomic_write(args.out, key.export_private_key("openssh"), 0o600)
    atomic_write(Path(f"{args.out}-cert.pub"), cert.export_certificate("openssh"), 0o644)
    print(f"wrote {args.out} and {args.out}-cert.pub", file=sys.stderr)
    return 0


def parse_labels(text: str) -> dict[str, str]:
    """``"env=prod,team=a"`` -> ``{"env": "prod", "team": "a"}``; StateError on a bad pair."""
    labels = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise StateError(f"invalid label {pair!r}: expected key=value")
        labels[key.strip()] = value.strip()
    return labels


def _cmd_nodes_add(args: argparse.Namespace) -> int:
    labels = parse_labels(args.labels)
    node = ClusterState.open(args.data_dir).add_node(args.name, args.addr, labels)
    print(f"node {node.name} registered at {node.addr}", file=sys.stderr)
    return 0


def _cmd_nodes_ls(args: argparse.Namespace) -> int:
    for node in sorted(ClusterState.open(args.data_dir).nodes().values(), key=lambda n: n.name):
        print(f"{node.name} {node.addr}")
    return 0


def _cmd_tokens_add(args: argparse.Namespace) -> int:
    from . import _trust

    state = ClusterState.open(args.data_dir)
    token = _trust.add_token(state, args.type, _trust.parse_labels(args.labels))
    print(token)
    print(f"The cluster invite token: {token} (give it to the leaf's trusted-clusters add)",
          file=sys.stderr)
    return 0


def _cmd_trusted_clusters_add(args: argparse.Namespace) -> int:
    from . import _trust
    from ._ca import Authority

    state = ClusterState.open(args.data_dir)
    role_map = _trust.parse_role_map(args.role_map)
    root = _trust.join(state, Authority.load(state), args.root_proxy, args.root_ca, args.token,
                       role_map, args.tunnel_addr)
    print(f"trusted cluster {root!r} added", file=sys.stderr)
    return 0


def _cmd_trusted_clusters_rm(args: argparse.Namespace) -> int:
    from . import _trust

    _trust.remove_trusted_cluster(ClusterState.open(args.data_dir), args.name)
    print(f"trusted cluster {args.name!r} removed", file=sys.stderr)
    return 0


def _cmd_remote_clusters_rm(args: argparse.Namespace) -> int:
    from . import _trust

    _trust.remove_remote_cluster(ClusterState.open(args.data_dir), args.name)
    print(f"remote cluster {args.name!r} has been deleted", file=sys.stderr)
    return 0


def _cmd_roles_add(args: argparse.Namespace) -> int:
    from . import _trust

    logins = [x.strip() for x in args.logins.split(",") if x.strip()]
    _trust.add_role(ClusterState.open(args.data_dir), args.name, logins)
    print(f"role {args.name!r} saved", file=sys.stderr)
    return 0


def _cmd_auth_principals(args: argparse.Namespace) -> int:
    from . import _trust
    from ._ca import Authority

    state = ClusterState.open(args.data_dir)
    if _trust.allowed_login(state, Authority.load(state), args.login, args.cert):
        print(args.login)
    return 0


def _cmd_recordings_ls(args: argparse.Namespace) -> int:
    from ._asciicast import format_listing, list_recordings, recordings_dir

    state = ClusterState.open(args.data_dir)
    sys.stdout.write(format_listing(list_recordings(recordings_dir(state.data_dir))))
    return 0


def _cmd_recordings_show(args: argparse.Namespace) -> int:
    from ._asciicast import RecordingError, read_recording, recordings_dir

    state = ClusterState.open(args.data_dir)
    try:
        recording = read_recording(recordings_dir(state.data_dir), args.id)
    except RecordingError as e:
        raise StateError(str(e)) from None
    sys.stdout.write(recording.output())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(wait=args.wait, recording=args.recording, sso=args.sso)


_COMMANDS = {
    ("start", None): _cmd_start,
    ("users", "add"): _cmd_users_add,
    ("auth", "export"): _cmd_auth_export,
    ("auth", "sign"): _cmd_auth_sign,
    ("auth", "rotate"): _cmd_auth_rotate,
    ("status", None): _cmd_status,
    ("nodes", "add"): _cmd_nodes_add,
    ("nodes", "ls"): _cmd_nodes_ls,
    ("tokens", "add"): _cmd_tokens_add,
    ("trusted-clusters", "add"): _cmd_trusted_clusters_add,
    ("trusted-clusters", "rm"): _cmd_trusted_clusters_rm,
    ("remote-clusters", "rm"): _cmd_remote_clusters_rm,
    ("roles", "add"): _cmd_roles_add,
    ("auth", "principals"): _cmd_auth_principals,
    ("recordings", "ls"): _cmd_recordings_ls,
    ("recordings", "show"): _cmd_recordings_show,
    ("demo", None): _cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = _COMMANDS[(args.command, getattr(args, "action", None))]
    try:
        return handler(args)
    except (StateError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
