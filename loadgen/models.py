"""The models a load run can name, and their vocabulary sizes (prompt token ids stay below them)."""

from __future__ import annotations

import argparse
import os

from c2cq.errors import ConfigError
from c2cq.rundir import RunDir


def listed_models(args: argparse.Namespace, rd: RunDir) -> tuple[list[str], dict[str, int]]:
    """From ``--target``'s /v1/models (no vocabulary sizes over HTTP); for a dry run on this host, from
    the catalog (it reads the registry when no instance runs); else from the scheduler, which may be on
    another host (``c2cq --connect``) — a missing instance is a ConfigError naming `c2cq up`."""
    if args.target is not None:
        from c2cq.loadgen.openai_target import check_base, list_models

        args.api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
        return list_models(check_base(args.target), api_key=args.api_key), {}
    if args.dry_run and not os.environ.get("C2CQ_CLIENT_ADDR"):
        from c2cq import catalog_client
        from c2cq.schemas.catalog import ListModels

        infos = catalog_client.call(rd, ListModels()).models
        return [m.name for m in infos], {m.name: m.vocab_size for m in infos}
    from c2cq.blocking import Client
    from c2cq.cli_run import require_instance

    require_instance(rd)
    with Client(home=str(rd.home), timeout=args.timeout) as c:
        reply = c.models()
    if reply.error and not reply.models:
        raise ConfigError(f"no model list from the scheduler: {reply.error}")
    return [m.name for m in reply.models], {m.name: m.vocab_size for m in reply.models}
