"""Level 1 (pure): each request goes to the executor with the lowest estimated time to first token.

Candidates are the executors that can start it now: one serving its model with a free batch
slot, or an idle one (which switches to it). The estimate counts the wait for the slot, the
measured switch time, and a chunked prefill at the share of the model that executor already
holds (α: affinity falls out of it) with the link bandwidth its host has left — several slices
share one link, so what the others draw now is taken off.
"""

from __future__ import annotations

from c2cq.services.scheduler import costmodel
from c2cq.services.scheduler.state import ExecutorView, RequestView, State

MIN_LINK_SHARE = 0.05  # a saturated link still gives a new stream this share in the estimate


def link_group(device: str) -> str:
    """Slices named ``GROUP/DEVICE`` share the link of GROUP; any other device has a link of its own."""
    return device.split("/", 1)[0] if "/" in device else device


def link_left(st: State, x: ExecutorView) -> float:
    members = st.groups.get(x.link_group, ())
    cap = x.est.link_bps
    others = 0.0
    for eid in members:
        y = st.executors.get(eid)
        if y is None or y.state == "lost":
            continue
        cap = max(cap, y.est.link_bps)
        if eid != x.executor_id:
            others += y.est.link_used_bps
    return max(cap - others, cap * MIN_LINK_SHARE)


def can_take(x: ExecutorView, model: str) -> bool:
    if x.state != "ready":
        return False
    if not x.active:
        return True
    return x.model == model and len(x.active) < x.max_batch


def estimate(st: State, x: ExecutorView, req: RequestView) -> float:
    s, info = req.submit, req.info
    same = x.model == s.model
    return costmodel.ttft(
        x.est, alpha=x.alpha if same else 0.0, model_bytes=info.bytes, params=info.parameters,
        prompt_tokens=costmodel.prompt_tokens(s.prompt, s.prompt_token_ids, req.emitted),
        chunk_tokens=x.chunk_tokens, link_bps=link_left(st, x),
        wait_s=x.est.step_s if (same and x.active) else 0.0, switching=not same)


def choose_executor(st: State, req: RequestView) -> tuple[ExecutorView | None, float]:
    """The candidate with the lowest estimated TTFT (ties: the lower executor id), and that estimate."""
    best, best_t = None, float("inf")
    model = req.submit.model
    for x in st.executors.values():
        if not can_take(x, model):
            continue
        t = estimate(st, x, req)
        if t < best_t or (t == best_t and best is not None and x.executor_id < best.executor_id):
            best, best_t = x, t
    return best, best_t


def earliest_ttft(st: State, req: RequestView, ahead: int) -> float:
    """For admission when no executor can start it now: the soonest an executor frees up (its
    longest remaining decode) plus the TTFT there, stretched by the ``ahead`` requests of its
    class that will be placed first, spread over the live executors."""
    live = [x for x in st.executors.values() if x.state == "ready"]
    if not live:
        return float("inf")
    best = float("inf")
    for x in live:
        left = max((r.submit.max_tokens - r.emitted for r in (st.requests.get(a) for a in x.active) if r), default=0)
        best = min(best, left * x.est.step_s + estimate(st, x, req))
    return best * (1.0 + ahead / len(live))
