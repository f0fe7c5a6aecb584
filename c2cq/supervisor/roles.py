"""The services `c2cq up --role control|node` supervises: the same services as on one host, wired
with other addresses.

- control: the catalog as the cluster's registry (it publishes nothing: no slice runs here), the
  scheduler — executors dial ``--listen`` at EXEC_PORT, the nodes' catalogs at CATALOG_PORT, remote
  clients (c2cq --connect, c2cq.Client) at CLIENT_PORT, over CURVE — and the HTTP gateway (a client
  over this host's ipc socket).
- node: this host's catalog (it publishes the registry's models from the model store into this
  host's shared memory, reporting to the scheduler at the join port + 1) and one executor per
  slice, dialling the scheduler at ``--join``. Executor ids are prefixed with the host's name,
  unique across hosts.
"""

from __future__ import annotations

import argparse
import os
import socket

from c2cq import links
from c2cq.errors import ConfigError
from c2cq.rundir import RunDir
from c2cq.services.executor.kv_flags import kv_argv
from c2cq.supervisor.discover import discover
from c2cq.supervisor.manager import ChildSpec, service_argv

EXEC_PORT = 7101
CATALOG_PORT = 7102  # the nodes' catalogs; a node finds it at its --join port + 1
CLIENT_PORT = 7100  # remote clients: the executors' port - 1


def key_args(args: argparse.Namespace) -> list[str]:
    role = args.key_role or (links.SERVER_ROLE if args.role == "control" else links.CLIENT_ROLE)
    return links.argv(argparse.Namespace(key_role=role, server_key=args.server_key, insecure=args.insecure))


def control_specs(args: argparse.Namespace, rd: RunDir, gateway) -> list[ChildSpec]:
    listen = args.listen or "tcp://0.0.0.0"
    if not listen.startswith("tcp://"):
        raise ConfigError(f"--listen {listen!r}: expected tcp://HOST (the ports are {EXEC_PORT} and {CATALOG_PORT})")
    home = ["--home", str(rd.home)]
    specs = [
        ChildSpec("catalog", service_argv("c2cq.services.catalog.main", *home, "--no-publish")),
        ChildSpec("scheduler", service_argv(
            "c2cq.services.scheduler.main", *home, "--max-tokens-limit", str(args.max_tokens_limit),
            "--executors", links.with_port(listen, args.exec_port),
            "--catalogs", links.with_port(listen, args.exec_port + 1),
            "--clients", links.with_port(listen, args.exec_port - 1), *key_args(args))),
    ]
    if not args.no_http:
        specs.append(gateway(args, home))
    return specs


def catalog_join(join: str) -> str:
    """The scheduler's catalogs socket beside its executors socket ``join`` (tcp://HOST:PORT): PORT + 1."""
    host, sep, port = join[len("tcp://"):].rpartition(":")
    if not join.startswith("tcp://") or not sep or not port.isdigit():
        raise ConfigError(f"--join {join!r}: expected tcp://HOST:PORT (the control plane's executors port, "
                          f"{EXEC_PORT} by default)")
    return f"tcp://{host}:{int(port) + 1}"


def node_specs(args: argparse.Namespace, rd: RunDir) -> tuple[list[ChildSpec], list]:
    if not args.join:
        raise ConfigError("--role node needs --join tcp://CONTROL:PORT (the control plane's executors port)")
    host = args.node_name or os.environ.get("C2CQ_NODE_NAME") or socket.gethostname()
    slices = discover(args.backend, args.slices, args.per_gpu)
    if not slices:
        raise ConfigError(f"no slices found for backend {args.backend!r} (no GPU visible to NVML?)")
    home, keys = ["--home", str(rd.home)], key_args(args)
    specs = [ChildSpec("catalog", service_argv("c2cq.services.catalog.main", *home, "--join", catalog_join(args.join),
                                               "--host", host, *keys))]
    for s in slices:
        specs.append(ChildSpec(s.executor_id, service_argv(
            "c2cq.services.executor.main", *home, "--id", f"{host}-{s.executor_id}", "--backend", s.backend,
            "--device", s.device, "--threads", str(args.threads), "--sim-time-scale", str(args.sim_time_scale),
            "--join", args.join, "--host", host, *keys, *kv_argv(args)), env=s.child_env()))
    return specs, slices


def add_args(up: argparse.ArgumentParser) -> None:
    up.add_argument("--role", choices=("control", "node"), default=None,
                    help="many hosts: control (scheduler, registry, HTTP gateway; binds tcp) or node (this "
                         "host's catalog and one executor per slice, dialling --join); default: all on one host")
    up.add_argument("--listen", default=None, metavar="tcp://HOST",
                    help=f"control: where the nodes connect (default tcp://0.0.0.0; ports {EXEC_PORT} and "
                         f"{CATALOG_PORT})")
    up.add_argument("--exec-port", type=int, default=EXEC_PORT,
                    help=f"control: the executors' port; the nodes' catalogs use the next one (default {EXEC_PORT})")
    up.add_argument("--join", default=None, metavar="tcp://HOST:PORT",
                    help="node: the control plane's executors port (its catalogs port is the next one)")
    up.add_argument("--node-name", default=None, help="node: this host's name (default the hostname)")
    links.add_args(up, None)
