"""What the metrics fold (services/scheduler/metrics.py) costs the scheduler's core, per request.

The same events — slices announcing themselves, then per request a submission (with an SLO),
``--batches`` token batches and a completion — are folded by ``core.apply`` with the fold and
with it switched off (``metrics.observe`` replaced by a no-op), alternately, ``--repeat`` times;
the figure is CPU µs per request (min over the repeats: the machine may be shared).

    .venv/bin/python bench/scheduler_metrics.py [--requests 20000] [--batches 4] [--repeat 4]
"""

from __future__ import annotations

import argparse
import time

from c2cq.schemas import executor as m
from c2cq.schemas.client import SLO, SubmitRequest
from c2cq.services.catalog.sim_models import sim_model
from c2cq.services.scheduler import core, metrics
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.state import State

SLICES = 8


def events(n: int, batches: int) -> list:
    """The run's events, recorded once from a live fold (each request's tokens come from the slice it
    was assigned to, as a real one's would); both arms then fold this same list."""
    info = sim_model("m", 576, 30, 1536, 49152)
    seq = 0

    def said(eid: str, cls, at: float, **f):
        nonlocal seq
        seq += 1
        return ev.ExecutorSaid(at=at, executor_id=eid, msg=cls(source=eid, seq=seq, ts_ns=seq, **f))

    st, out = State(), []

    def fold(e) -> list:
        out.append(e)
        return core.apply(st, e)[1]

    for i in range(SLICES):
        fold(said(f"e{i}", m.SliceReady, 0.0, executor_id=f"e{i}", boot_id="b", backend="sim", device=f"sim:{i}",
                  memory_budget_bytes=10 * 2**30, link_bandwidth_bps=55e9, max_batch=64))
    for k in range(n):
        t, rid = 1.0 + k * 1e-3, f"r{k}"
        cmds = fold(ev.Submitted(at=t, client=b"c", info=info, msg=SubmitRequest(
            request_id=rid, model="m", prompt="a b c", max_tokens=2 * batches, slo=SLO(ttft_ms=500.0, tpot_ms=50.0))))
        (eid,) = [c.executor_id for c in cmds if isinstance(getattr(c, "msg", None), m.AssignRequest)]
        for b in range(batches):
            fold(said(eid, m.TokensProduced, t + 1e-4 * (b + 1), request_id=rid, index=2 * b, token_ids=(1, 2),
                      text=" a b"))
        fold(said(eid, m.RequestCompleted, t + 1e-4 * (batches + 1), request_id=rid, finish_reason="length",
                  prompt_tokens=3, completion_tokens=2 * batches))
    assert not st.requests and len(st.recent) and st.total == n, "every request ran and finished"
    return out


def fold_us(evs: list, n: int) -> float:
    st = State()
    c0 = time.process_time()
    for e in evs:
        core.apply(st, e)
    return (time.process_time() - c0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--batches", type=int, default=4, help="token batches (of two tokens) per request")
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()
    evs = events(args.requests, args.batches)
    on, off, observe = [], [], metrics.observe
    try:
        for _ in range(args.repeat):
            core.metrics.observe = observe
            on.append(fold_us(evs, args.requests))
            core.metrics.observe = lambda st, e, out: None
            off.append(fold_us(evs, args.requests))
    finally:
        core.metrics.observe = observe
    print(f"{args.requests} requests of {args.batches} token batches: core.apply {min(off):.1f} µs per request "
          f"without the metrics fold, {min(on):.1f} µs with it (+{min(on) - min(off):.1f} µs, "
          f"+{100 * (min(on) / min(off) - 1):.0f}%), CPU time, min of {args.repeat}")


if __name__ == "__main__":
    main()
