"""`c2cq models list | add | add-sim | rm`."""

from __future__ import annotations

import argparse
import json

from c2cq import catalog_client
from c2cq.errors import ModelError
from c2cq.rundir import RunDir
from c2cq.schemas.catalog import ListModels, RegisterModel, RemoveModel
from c2cq.supervisor.manager import read_pid


def register(sub) -> None:
    models = sub.add_parser("models", help="the model catalog")
    msub = models.add_subparsers(dest="models_cmd", required=True)
    ls = msub.add_parser("list", help="list registered models")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    sim = msub.add_parser("add-sim", help="register simulated model descriptions (for the sim backend)")
    sim.add_argument("--count", type=int, default=8)
    sim.add_argument("--prefix", default="sim")
    sim.set_defaults(func=cmd_add_sim)
    rm = msub.add_parser("rm", help="remove a model (refused while a request uses it)")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_rm)
    from c2cq.services.catalog import cli_add

    cli_add.register(msub)


def _usage(rd: RunDir) -> tuple[dict[str, list[tuple[str, int]]], dict[str, int]]:
    """(model → [(slice, requests on it)] of the running instance's slices, model → requests waiting
    for a slice); both empty when no instance runs."""
    if read_pid(rd) is None:
        return {}, {}
    from c2cq.blocking import Client

    with Client(home=str(rd.home), timeout=10) as c:
        reply = c.status()
    held: dict[str, list[tuple[str, int]]] = {}
    for e in reply.executors:
        if e.model and e.state != "lost":
            held.setdefault(e.model, []).append((e.executor_id, e.active_requests + e.queued_requests))
    return held, dict(reply.waiting)



def cmd_list(args: argparse.Namespace) -> int:
    rd = RunDir.from_env(args.home)
    reply = catalog_client.call(rd, ListModels())
    held, _ = _usage(rd)
    rows = [{f: getattr(m, f) for f in m.__struct_fields__ if f != "shm"}
            | {"shm": m.shm.path if m.shm else None, "slices": [x for x, _ in held.get(m.name, [])]}
            for m in reply.models]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{'name':<24} {'kind':<5} {'architecture':<22} {'params':>10} {'bytes':>12} {'dtype':<5} slices")
    for r in rows:
        print(f"{r['name']:<24} {r['kind']:<5} {r['architecture']:<22} {r['parameters'] / 1e6:>9.1f}M "
              f"{r['bytes']:>12} {r['dtype']:<5} {','.join(r['slices']) or '-'}")
    return 0


def cmd_add_sim(args: argparse.Namespace) -> int:
    from c2cq.services.catalog.sim_models import generate

    rd = RunDir.from_env(args.home)
    for info in generate(args.count, args.prefix):
        catalog_client.call(rd, RegisterModel(info=info))
        print(f"registered {info.name} ({info.architecture}, {info.parameters / 1e6:.0f}M parameters, simulated)")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    rd = RunDir.from_env(args.home)
    held, waiting = _usage(rd)
    busy = [(x, n) for x, n in held.get(args.name, []) if n > 0]
    if busy or waiting.get(args.name):
        where = [f"{x} ({n})" for x, n in busy]
        if waiting.get(args.name):
            where.append(f"the scheduler's queue ({waiting[args.name]})")
        raise ModelError(f"model_in_use: {args.name!r} has requests on {', '.join(where)}; retry when they finish")
    catalog_client.call(rd, RemoveModel(name=args.name))
    print(f"removed {args.name}")
    return 0
