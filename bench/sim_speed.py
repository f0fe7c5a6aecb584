"""Simulator speed: simulated seconds per wall second on a one-hour trace at 64 slices × 1,000
models, per policy (target ≥ 100x real time for the c2cq policy, which runs the real core).

    .venv/bin/python bench/sim_speed.py [--trace PATH] [--speed X] [--slices 64] [--models 1000] [--repeat 3]

With --repeat N each policy runs N times and the median wall time is reported (the host may be
shared: a single run is noise).

The Azure LLM 2023 code trace (../shared/traces) by default; a Poisson schedule of its mean rate
when the file is absent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from c2cq.loadgen import arrivals, traces, workload
from c2cq.loadgen.workload import Workload, WorkloadConfig
from c2cq.services.catalog.sim_models import generate
from c2cq.services.sim.profiles import build_cluster, load_profile, parse_layout
from c2cq.services.sim.run import POLICIES, Scenario, run_policy

TRACE = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces" / "azure_llm_2023_code.csv"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sim_speed")
    p.add_argument("--trace", type=Path, default=TRACE)
    p.add_argument("--speed", type=float, default=1.0, help="replay the trace this many times faster")
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--repeat", type=int, default=1, help="runs per policy; the median wall time is reported")
    a = p.parse_args(argv)
    if a.trace.exists():
        reqs = list(traces.window(traces.READERS["azure"](a.trace), speed=a.speed))
        source = f"{a.trace.name} x{a.speed:g}"
    else:
        reqs = workload.from_schedule(arrivals.schedule(2.57 * a.speed, duration_s=3600 / a.speed, seed=0))
        source = "poisson (trace absent)"
    prof = load_profile()
    specs = build_cluster(prof, "gh200-96", parse_layout("3g,2g,2g", prof), a.slices)
    models = {m.name: m for m in generate(a.models)}
    pool = workload.length_pool(reqs) or [(512, 128)]
    plan = Workload(reqs, WorkloadConfig(catalog=tuple(models), models="zipf", lengths=pool, seed=0)).plan()
    sc = Scenario(plan=plan, specs=specs, models=models, profile=prof)
    print(f"{source}: {len(plan)} requests over {plan[-1].offset_s:.0f} s; {a.slices} slices x {a.models} models")
    print(f"{'policy':16} {'virtual s':>10} {'wall s':>8} {'x real time':>12} {'events':>9} {'events/s':>9}  "
          "runs (wall s)")
    for name in a.policies.split(","):
        walls = []
        for _ in range(max(1, a.repeat)):
            out, _, wall = run_policy(name, sc)
            walls.append(wall)
        wall = statistics.median(walls)
        v = out["sim"]["virtual_s"]
        print(f"{name:16} {v:10.0f} {wall:8.1f} {v / wall:12.0f} {out['sim']['events']:9d} "
              f"{out['sim']['events'] / wall:9.0f}  {' '.join(f'{w:.1f}' for w in walls)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
