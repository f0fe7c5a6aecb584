"""The fewest slices for a workload (`c2cq sim --find-min-slices`): per policy, the smallest slice
count whose simulated TTFT+TPOT attainment reaches a target, next to the "one model per slice"
baseline (a dedicated slice for every model that receives traffic).

The search assumes attainment does not fall as slices are added (more capacity, same workload),
so it doubles from a start until the target is met and then bisects; every probe is one whole
simulation. A policy that misses the target at the cap is reported as not reaching it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from c2cq.loadgen.workload import PlannedRequest


@dataclass(slots=True)
class Search:
    slices: int | None  # the fewest slices that reach the target; None: not within the cap
    probes: dict[int, float] = field(default_factory=dict)  # slice count → attainment


def dedicated_slices(plan: Sequence[PlannedRequest]) -> int:
    """One model per slice: a slice for every model the workload sends requests to."""
    return len({r.model for r in plan})


def find_min_slices(attainment: Callable[[int], float], target: float, start: int, cap: int,
                    on_probe: Callable[[int, float], None] | None = None) -> Search:
    """The smallest n in [1, cap] with ``attainment(n) >= target``: doubling from ``start`` (down
    to 1 when ``start`` already meets it), then bisection between the last miss and the first hit."""
    s = Search(slices=None)

    def ok(n: int) -> bool:
        if n not in s.probes:
            s.probes[n] = attainment(n)
            if on_probe is not None:
                on_probe(n, s.probes[n])
        return s.probes[n] >= target

    start = max(1, min(start, cap))
    lo, hi = 0, None  # lo misses (0 slices always does), hi meets
    n = start
    if ok(n):
        hi = n
    else:
        lo = n
        while hi is None and n < cap:
            n = min(cap, 2 * n)
            if ok(n):
                hi = n
            else:
                lo = n
        if hi is None:
            return s
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    s.slices = hi
    return s
