"""Placements per second of the scheduler's pure core at cluster scale (no sockets, no log).

64 slices (8 GPUs × 8 slices sharing each GPU's link) and 1,000 models with Zipf(1.0)
popularity. Each placement is one Submitted event folded by ``core.apply`` (validation,
admission, TTFT placement over the candidates); a completion of the oldest request keeps the
slices at a steady load, and is timed too (the figure is submissions placed per second of the
whole loop). Target ≥ 20,000/s on the 2-core build machine.

    .venv/bin/python bench/scheduler_placement.py [--slices 64] [--models 1000] [--n 50000] [--repeat 5]

The machine may be shared: --repeat reports the median, and the rate per CPU second next to the
wall-clock one (less sensitive to other processes).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections import deque

import numpy as np

from c2cq.schemas import executor as m
from c2cq.schemas.client import SLO, RequestRejected, SubmitRequest
from c2cq.services.catalog.sim_models import generate
from c2cq.services.scheduler import core
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.state import State, ToExecutor


def run_once(args, infos, picks) -> dict:
    st = State()
    seq = 0

    def said(eid, cls, at, **f):
        nonlocal seq
        seq += 1
        return ev.ExecutorSaid(at=at, executor_id=eid, msg=cls(source=eid, seq=seq, ts_ns=seq, **f))

    for i in range(args.slices):
        eid = f"e{i}"
        core.apply(st, said(eid, m.SliceReady, 0.0, executor_id=eid, boot_id="b", backend="sim",
                            device=f"gpu{i // 8}/mig{i % 8}", memory_budget_bytes=12 * 2**30,
                            link_bandwidth_bps=400e9, max_batch=64, link_group=f"gpu{i // 8}"))
    subs = [ev.Submitted(at=1.0 + k * 1e-4, client=b"c", info=infos[j], msg=SubmitRequest(
        request_id=f"r{k}", model=infos[j].name, prompt="x " * 200, max_tokens=64, slo=SLO(tpot_ms=100.0)))
        for k, j in enumerate(picks)]
    inflight: deque[tuple[str, str]] = deque()
    placed = rejected = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for k, e in enumerate(subs):
        _, cmds = core.apply(st, e)
        for c in cmds:
            if isinstance(c, ToExecutor) and isinstance(c.msg, m.AssignRequest):
                placed += 1
                inflight.append((c.executor_id, c.msg.request_id))
            elif isinstance(c.msg, RequestRejected):
                rejected += 1
        # an executor finishes its oldest request whenever work waits (or the slices hold `active` each):
        # the slices stay saturated and every submission is eventually placed, none rejected for a full queue
        while inflight and (st.waiting() > 0 or len(inflight) >= args.slices * args.active):
            eid, xid = inflight.popleft()
            for c in core.apply(st, said(eid, m.RequestCompleted, e.at, request_id=xid, finish_reason="length",
                                         prompt_tokens=200, completion_tokens=0))[1]:
                if isinstance(c, ToExecutor) and isinstance(c.msg, m.AssignRequest):
                    placed += 1
                    inflight.append((c.executor_id, c.msg.request_id))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"placed": placed, "rejected": rejected, "seconds": dt, "cpu_seconds": cpu, "waiting_at_end": st.waiting()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--active", type=int, default=8, help="requests in flight per slice")
    ap.add_argument("--repeat", type=int, default=1, help="runs (fresh state each); the median is reported")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    infos = generate(args.models)
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, args.models + 1)
    picks = rng.choice(args.models, size=args.n, p=p / p.sum())
    runs = []
    for _ in range(args.repeat):
        gc.collect()  # each run starts from a clean heap (untimed)
        runs.append(run_once(args, infos, picks))
    rates = sorted(r["placed"] / r["seconds"] for r in runs)
    cpu_rates = sorted(r["placed"] / r["cpu_seconds"] for r in runs)
    rate, cpu_rate = statistics.median(rates), statistics.median(cpu_rates)
    placed = runs[0]["placed"]
    doc = {"slices": args.slices, "models": args.models, "submissions": args.n, "placed": placed,
           "rejected": runs[0]["rejected"], "waiting_at_end": runs[0]["waiting_at_end"], "runs": args.repeat,
           "placements_per_s": round(rate), "placements_per_cpu_s": round(cpu_rate),
           "placements_per_s_all": [round(r) for r in rates], "target_per_s": 20_000}
    print(json.dumps(doc) if args.json else
          f"{placed} placements of {args.n} submissions ({runs[0]['rejected']} rejected, "
          f"{runs[0]['waiting_at_end']} waiting at the end): median {rate:,.0f}/s wall, {cpu_rate:,.0f}/s CPU "
          f"over {args.repeat} run(s) (all: {', '.join(f'{r:,.0f}' for r in rates)}) at {args.slices} slices × "
          f"{args.models} models (target ≥ 20,000/s)")


if __name__ == "__main__":
    main()
