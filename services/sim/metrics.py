"""What each policy did to each request, and the figures computed from it (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from c2cq.loadgen.workload import PlannedRequest
from c2cq.services.sim.engine import Link
from c2cq.services.sim.errors import SimError

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class Outcome:
    req: PlannedRequest
    status: str = ""  # finished | rejected | error ("" while in flight)
    code: str | None = None
    first_token_at: float | None = None
    end_at: float | None = None
    tokens: int = 0
    switched: bool = False
    switch_s: float | None = None  # the switch this request waited for: its start → this request's first token


class Recorder:
    """One per policy run: every request arrives once and ends exactly once."""

    def __init__(self, total: int, on_all_ended=None) -> None:
        self.total = total
        self.out: dict[int, Outcome] = {}
        self.ended = 0
        self.on_all_ended = on_all_ended

    def arrive(self, req: PlannedRequest) -> None:
        if req.index in self.out:
            raise SimError(f"request {req.index} arrived twice")
        self.out[req.index] = Outcome(req)

    def first_token(self, index: int, t: float) -> None:
        o = self.out[index]
        if o.first_token_at is None:
            o.first_token_at = t

    def switch(self, index: int, seconds: float) -> None:
        o = self.out[index]
        o.switched = True
        if o.switch_s is None:
            o.switch_s = seconds

    def end(self, index: int, t: float, status: str, *, tokens: int = 0, code: str | None = None,
            switched: bool | None = None) -> None:
        o = self.out[index]
        if o.status:
            raise SimError(f"request {index} ended twice ({o.status}, then {status})")
        o.status, o.end_at, o.tokens, o.code = status, t, tokens, code
        if switched:
            o.switched = True
        self.ended += 1
        if self.ended == self.total and self.on_all_ended is not None:
            self.on_all_ended()


def _pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in PERCENTILES} | {"count": 0}
    a = np.percentile(np.asarray(values, dtype=np.float64), PERCENTILES)
    return {f"p{p}": round(float(x), 6) for p, x in zip(PERCENTILES, a)} | {"count": len(values)}


def _tpot(o: Outcome) -> float | None:
    if o.tokens < 2 or o.first_token_at is None or o.end_at is None:
        return None
    return (o.end_at - o.first_token_at) / (o.tokens - 1)


def summarize(rec: Recorder, links: list[Link], duration_s: float, makespan_s: float) -> dict:
    """TTFT/TPOT attainment (over every request: a rejected or failed one misses both), latency
    percentiles, switch (cold-start) latency, goodput (requests meeting both targets per second
    of the workload's ``duration_s``) and the host links' utilisation over ``makespan_s``."""
    outs = [rec.out[i] for i in sorted(rec.out)]
    n = len(outs)
    done = [o for o in outs if o.status == "finished"]
    ttft_ok = tpot_ok = both = 0
    ttfts, tpots = [], []
    good_tokens = 0
    for o in done:
        ttft = o.first_token_at - o.req.offset_s if o.first_token_at is not None else None
        tpot = _tpot(o)
        a = ttft is not None and ttft <= o.req.ttft_ms / 1e3
        b = tpot is None or tpot <= o.req.tpot_ms / 1e3
        ttft_ok += a
        tpot_ok += b
        both += a and b
        good_tokens += o.tokens if a and b else 0
        if ttft is not None:
            ttfts.append(ttft)
        if tpot is not None:
            tpots.append(tpot)
    codes: dict[str, int] = {}
    for o in outs:
        if o.status != "finished":
            key = f"{o.status or 'unfinished'}:{o.code or '-'}"
            codes[key] = codes.get(key, 0) + 1
    switches = [o.switch_s for o in outs if o.switch_s is not None]
    cap = sum(lk.capacity_bps for lk in links) * makespan_s
    utils = [lk.bytes / (lk.capacity_bps * makespan_s) for lk in links] if makespan_s > 0 else []
    ratio = (lambda k: round(k / n, 6)) if n else (lambda k: None)  # noqa: E731
    return {
        "requests": n, "finished": len(done), "not_finished": codes,
        "ttft_attainment": ratio(ttft_ok), "tpot_attainment": ratio(tpot_ok), "slo_attainment": ratio(both),
        "goodput_rps": round(both / duration_s, 6) if duration_s > 0 else None,
        "goodput_tokens_per_s": round(good_tokens / duration_s, 3) if duration_s > 0 else None,
        "ttft_s": _pcts(ttfts), "tpot_s": _pcts(tpots),
        "switched_requests": sum(o.switched for o in outs), "switch_latency_s": _pcts(switches),
        "link_utilisation": {"mean": round(sum(lk.bytes for lk in links) / cap, 6) if cap > 0 else None,
                             "max": round(max(utils), 6) if utils else None},
        "duration_s": round(duration_s, 6), "makespan_s": round(makespan_s, 6),
    }
