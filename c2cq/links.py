"""The keys a service's tcp sockets take, from flags and the environment as the manifests mount them.

A bound tcp socket is a CURVE server with the role's keypair (``--key-role``, default ``control``)
from the keys folder (``$C2CQ_KEYS_DIR``, else ``HOME/keys``) and the allowed client keys from
``$C2CQ_ALLOWED_KEYS_DIR`` (else ``KEYS/allowed``). A connecting tcp socket is a CURVE client
with its role's keypair (default ``node``) and the server's public key (``--server-key``, default
``KEYS/control.key``). ipc endpoints take no keys: the run dir is private (0700). ``--insecure``
(explicit) drops CURVE on tcp.

A remote client of the scheduler (c2cq.Client, the CLI, loadgen) dialling a tcp client address
(``$C2CQ_CLIENT_ADDR``, ``c2cq --connect``) takes the keypair of role ``client`` (or
``$C2CQ_CLIENT_KEY_ROLE``) from the same keys folder and the same server key (``remote_client``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from c2cq import curve
from c2cq.rundir import RunDir

SERVER_ROLE = "control"
CLIENT_ROLE = "node"
REMOTE_CLIENT_ROLE = "client"


def add_args(p: argparse.ArgumentParser, default_role: str | None) -> None:
    """``default_role`` None: the caller picks it later (``c2cq up --role``: control or node)."""
    default = os.environ.get("C2CQ_KEY_ROLE") or default_role
    p.add_argument("--key-role", default=default,
                   help=f"whose CURVE keypair the tcp sockets use (default {default or 'control, or node'}; "
                        "files ROLE.key and ROLE.key_secret in $C2CQ_KEYS_DIR or HOME/keys)")
    p.add_argument("--server-key", default=os.environ.get("C2CQ_SERVER_KEY"),
                   help="the control plane's public key (z85 or a .key file; default KEYS/control.key)")
    p.add_argument("--insecure", action="store_true",
                   help="tcp without CURVE: anyone who can reach the port can speak to it, in clear")


def argv(args: argparse.Namespace) -> list[str]:
    """The same choices, as flags for a child process."""
    out = ["--key-role", args.key_role]
    if args.server_key:
        out += ["--server-key", args.server_key]
    return out + (["--insecure"] if args.insecure else [])


def is_tcp(endpoint: str | None) -> bool:
    return bool(endpoint) and endpoint.startswith("tcp://")


def server(rd: RunDir, args: argparse.Namespace, endpoint: str) -> curve.CurveServer | None:
    """The keys a socket bound at ``endpoint`` takes: None for ipc, or when insecure."""
    if not is_tcp(endpoint) or args.insecure:
        return None
    return curve.CurveServer(keys=curve.load_keypair(curve.keys_dir(rd.home), args.key_role),
                             allowed=curve.allowed_dir(rd.home))


def client(rd: RunDir, args: argparse.Namespace, endpoint: str) -> curve.CurveClient | None:
    """The keys a socket connecting to ``endpoint`` takes: None for ipc, or when insecure."""
    if not is_tcp(endpoint) or args.insecure:
        return None
    return _dial(curve.keys_dir(rd.home), args.key_role, args.server_key)


def remote_client(home: Path, endpoint: str, key_role: str | None = None,
                  server_key: str | None = None) -> curve.CurveClient | None:
    """The keys a client of the scheduler takes to dial ``endpoint``: None for ipc; for tcp the keypair
    of ``key_role`` (default ``$C2CQ_CLIENT_KEY_ROLE``, else ``client``) and the control plane's public
    key (default ``$C2CQ_SERVER_KEY``, else ``KEYS/control.key``)."""
    if not is_tcp(endpoint):
        return None
    role = key_role or os.environ.get("C2CQ_CLIENT_KEY_ROLE") or REMOTE_CLIENT_ROLE
    return _dial(curve.keys_dir(home), role, server_key or os.environ.get("C2CQ_SERVER_KEY"))


def _dial(folder: Path, role: str, server_key: str | None) -> curve.CurveClient:
    spec = server_key or str(Path(folder) / f"{SERVER_ROLE}.key")
    return curve.CurveClient(keys=curve.load_keypair(folder, role), server_key=curve.parse_public(spec))


def bind_also(ctx, sock, rd: RunDir, args: argparse.Namespace, endpoint: str) -> None:
    """Bind ``sock``, already bound at its ipc address without CURVE, at the tcp ``endpoint`` too, as a
    CURVE server (plain only with --insecure). libzmq takes a socket's security options as each
    endpoint is bound, so the ipc endpoint keeps its own (this host's processes: the private run dir)."""
    keys = server(rd, args, endpoint)
    if keys is not None:
        keys.apply(ctx, sock)
    sock.bind(endpoint)


def with_port(listen: str, port: int) -> str:
    """``tcp://HOST`` (or ``tcp://HOST:PORT``, whose port is replaced) at ``port``."""
    rest = listen[len("tcp://"):]
    if rest.startswith("["):
        host = rest[:rest.index("]") + 1]
    else:
        host = rest.split(":", 1)[0]
    return f"tcp://{host}:{port}"
