"""The `c2cq` command: up, down, status, generate, models, loadgen, sim."""

from __future__ import annotations

import argparse
import os
import sys

from c2cq.errors import C2CQError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="c2cq", description="Serverless LLM serving without cold starts.")
    p.add_argument("--home", default=None, help="instance directory (default $C2CQ_HOME or ~/.c2cq)")
    p.add_argument("--connect", default=None, metavar="ADDR",
                   help="the scheduler's client address for status, generate, loadgen … (default $C2CQ_CLIENT_ADDR, "
                        "else this home's ipc socket); tcp://CONTROL:7100 dials with CURVE: the keypair "
                        "client.key/client.key_secret ($C2CQ_CLIENT_KEY_ROLE) in $C2CQ_KEYS_DIR or HOME/keys, the "
                        "server key $C2CQ_SERVER_KEY or KEYS/control.key")
    sub = p.add_subparsers(dest="cmd", required=True)
    from c2cq import cli_chat, cli_events, cli_keys, cli_models, cli_run, cli_service, cli_sim
    from c2cq.loadgen import cli as loadgen_cli

    for module in (cli_run, cli_service, cli_chat, cli_models, cli_events, loadgen_cli, cli_sim, cli_keys):
        module.register(sub)
    args = p.parse_args(argv)
    if args.connect:  # every client this command makes (c2cq.client) reads it
        os.environ["C2CQ_CLIENT_ADDR"] = args.connect
    try:
        return int(args.func(args) or 0)
    except C2CQError as e:
        print(f"c2cq: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
