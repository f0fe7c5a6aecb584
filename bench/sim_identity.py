"""Does a simulator change move any outcome? Digests of the c2cq runs of bench/sim_speed.py's
workloads: the sha256 of every event the scheduler core was fed (msgpack, in order), of every
request's outcome, and of the JSON summary (the simulator's own event count left out: fewer engine
events is what a speed-up is allowed to change).

    .venv/bin/python bench/sim_identity.py [--workloads mooncake,...] [--gpus h100-sxm,gh200-96]
        [--out digests.json] [--against digests.json] [--no-runs] [--no-steady]

``--against`` compares with digests written before the change and exits 1 on any difference;
``--no-runs`` gives every step its own engine event (SimExecutor.runs = False), ``--no-steady``
computes every step with SimBackend.step (SimExecutor.steady = False): with both, the plain
step-by-step reference the shortcuts of services/sim/shortcuts.py must reproduce.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import msgspec

from c2cq import cli_sim
from c2cq.services.sim.executor import SimExecutor
from c2cq.services.sim.run import run_policy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim_speed import WORKLOADS, rows, sim_args  # noqa: E402


def digests(flags: list[str]) -> dict[str, str]:
    """The three digests of one c2cq run of ``c2cq sim`` ``flags``."""
    fed = hashlib.sha256()
    enc = msgspec.msgpack.Encoder()
    out, rec, _ = run_policy("c2cq", cli_sim.scenario(sim_args(flags)), observe=lambda e: fed.update(enc.encode(e)))
    outcomes = hashlib.sha256()
    for i in sorted(rec.out):
        o = rec.out[i]
        outcomes.update(repr((i, o.status, o.code, o.first_token_at, o.end_at, o.tokens, o.switched,
                              o.switch_s)).encode())
    events = out["sim"].pop("events")
    summary = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()
    return {"fed": fed.hexdigest(), "outcomes": outcomes.hexdigest(), "summary": summary,
            "engine_events": str(events)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sim_identity")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--gpus", default="h100-sxm,gh200-96")
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--out", type=Path)
    p.add_argument("--against", type=Path)
    p.add_argument("--no-runs", action="store_true", help="one engine event per step")
    p.add_argument("--no-steady", action="store_true", help="every step computed by SimBackend.step")
    a = p.parse_args(argv)
    if a.no_runs:
        SimExecutor.runs = False
    if a.no_steady:
        SimExecutor.steady = False
    before = json.loads(a.against.read_text()) if a.against else {}
    got, differ = {}, 0
    for w, flags, gpu in rows(a.workloads, a.gpus, a.slices, a.models):
        key = f"{w}/{gpu}"
        got[key] = d = digests([*flags, "--gpu", gpu])
        old = before.get(key)
        same = "" if old is None else " ".join(
            f"{k}:{'same' if old[k] == d[k] else 'DIFFERENT'}" for k in ("fed", "outcomes", "summary"))
        differ += "DIFFERENT" in same
        print(f"{key:28} fed {d['fed'][:12]} outcomes {d['outcomes'][:12]} summary {d['summary'][:12]} "
              f"engine events {d['engine_events']:>7}  {same}", flush=True)
    if a.out:
        a.out.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
