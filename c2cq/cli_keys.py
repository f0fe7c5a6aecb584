"""`c2cq keys init | allow | list | show`: CURVE keypairs and the client keys a server accepts."""

from __future__ import annotations

import argparse

from c2cq import curve
from c2cq.rundir import RunDir


def register(sub) -> None:
    keys = sub.add_parser("keys", help="CURVE keys for tcp sockets")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)
    init = ksub.add_parser("init", help="write a keypair for a role (the secret file is mode 0600)")
    init.add_argument("--role", required=True, help="e.g. control, node-a, client")
    init.add_argument("--force", action="store_true", help="replace an existing keypair")
    init.set_defaults(func=cmd_init)
    allow = ksub.add_parser("allow", help="accept a client's public key on this home's servers")
    allow.add_argument("key", help="the 40-character z85 public key, or its .key file (a key that starts "
                       "with '-' goes after --: `c2cq keys allow -- KEY`)")
    allow.add_argument("--name", default=None, help="file name in the allowed folder (default: the key's start)")
    allow.set_defaults(func=cmd_allow)
    ls = ksub.add_parser("list", help="the allowed client keys")
    ls.set_defaults(func=cmd_list)
    show = ksub.add_parser("show", help="print a role's public key")
    show.add_argument("--role", required=True)
    show.set_defaults(func=cmd_show)


def _home(args: argparse.Namespace):
    return RunDir.from_env(args.home).home


def cmd_init(args: argparse.Namespace) -> int:
    pub, sec = curve.init_keys(curve.keys_dir(_home(args)), args.role, force=args.force)
    print(f"public {pub}\nsecret {sec}\nkey    {curve.load_keypair(pub.parent, args.role).public.decode()}")
    return 0


def cmd_allow(args: argparse.Namespace) -> int:
    print(curve.allow(curve.allowed_dir(_home(args)), curve.parse_public(args.key), args.name))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for key in sorted(curve.allowed_keys(curve.allowed_dir(_home(args)))):
        print(key.decode())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(curve.load_keypair(curve.keys_dir(_home(args)), args.role).public.decode())
    return 0
