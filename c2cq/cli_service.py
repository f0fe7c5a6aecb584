"""`c2cq run scheduler|gateway|catalog|executor …`: one service in the foreground, as a container runs it.

The arguments after the service's name are the service's own (`c2cq run executor --help`): the
same the supervisor passes it, plus where it joins or listens for other hosts. The run dir is made
private (0700) first, as `c2cq up` does (not by an executor, which binds nothing); SIGTERM stops
the service as it stops under `c2cq up`.
"""

from __future__ import annotations

import argparse
import importlib

from c2cq.rundir import RunDir

SERVICES = {
    "scheduler": "c2cq.services.scheduler.main",
    "gateway": "c2cq.services.gateway.main",
    "catalog": "c2cq.services.catalog.main",
    "executor": "c2cq.services.executor.main",
}


def register(sub) -> None:
    run = sub.add_parser("run", help="run one service in the foreground (a container's entry point)",
                         description=__doc__.split("\n\n")[1], add_help=False)
    run.add_argument("service", choices=sorted(SERVICES))
    run.add_argument("args", nargs=argparse.REMAINDER, help="the service's own flags (see c2cq run SERVICE --help)")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    argv = list(args.args)
    if args.home and "--home" not in argv:
        argv = ["--home", args.home, *argv]
    if args.service != "executor" and "--help" not in argv and "-h" not in argv:
        RunDir.from_env(args.home).ensure()  # the executor binds nothing: it uses its catalog's run dir
    importlib.import_module(SERVICES[args.service]).main(argv)
    return 0
