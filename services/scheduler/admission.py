"""Admission and the waiting queues: a request's SLO class, whether it is accepted (its class's
queue has room, and some executor can meet its TTFT target), and its place in the queues — by
class (dispatch order) and by model (a running batch's free slots).
"""

from __future__ import annotations

from c2cq.schemas.client import SLO, RequestRejected
from c2cq.schemas.enums import ErrorCode
from c2cq.services.scheduler.placement import choose_executor, earliest_ttft
from c2cq.services.scheduler.state import Config, ExecutorView, RequestView, State


def slo_class(cfg: Config, slo: SLO) -> str:
    if slo.ttft_ms is None and slo.tpot_ms is None:
        return "batch"
    if slo.ttft_ms is not None and slo.ttft_ms <= cfg.interactive_ttft_ms:
        return "interactive"
    return "standard"


Choice = tuple[ExecutorView | None, float]  # choose_executor's answer: where a request would start now


def admit(st: State, req: RequestView) -> tuple[RequestRejected | None, Choice | None]:
    """(None, …) to accept; else why not: its class's queue is full, or no executor can meet its
    TTFT. With it, the placement admission worked out (None if it needed none): nothing changes
    between admission and placement that it depends on, so placement takes it as it is."""
    rid, k = req.request_id, req.klass
    queued = st.queued.get(k, 0)
    limit = st.cfg.queue_limits.get(k, st.cfg.limits.max_waiting)
    if queued >= limit or st.waiting() >= st.cfg.limits.max_waiting:
        return RequestRejected(request_id=rid, code=ErrorCode.QUEUE_FULL,
                               message=f"the {k} queue is full ({queued} requests wait for an executor)"), None
    target = req.submit.slo.ttft_ms
    if target is None:
        return None, None
    choice = x, t = choose_executor(st, req)
    if x is None:
        t = earliest_ttft(st, req, ahead=queued)
    if t == float("inf"):
        return RequestRejected(request_id=rid, code=ErrorCode.NO_EXECUTOR,
                               message=f"cannot meet slo.ttft_ms={target:g}: no executor is up"), choice
    if t * 1e3 > target * st.cfg.admit_margin:
        best = f"the best estimate is {t * 1e3:.0f} ms"
        return RequestRejected(request_id=rid, code=ErrorCode.SLO_UNATTAINABLE,
                               message=f"cannot meet slo.ttft_ms={target:g}: {best}"), choice
    return None, choice


def enqueue(st: State, rids: list[str], front: bool = False) -> None:
    for rid in (reversed(rids) if front else rids):
        req = st.requests[rid]
        for q in (st.queues.setdefault(req.klass, []), st.by_model.setdefault(req.submit.model, [])):
            if front:
                q.insert(0, rid)
            else:
                q.append(rid)
        st.queued[req.klass] = st.queued.get(req.klass, 0) + 1


def unqueue(st: State, req: RequestView) -> None:
    """The request leaves the waiting set (its ids in the lists go stale)."""
    st.queued[req.klass] -= 1


def first_waiting(st: State, q: list[str]) -> RequestView | None:
    """The first live waiting request of a list, dropping the stale ids before it."""
    while q:
        req = st.requests.get(q[0])
        if req is not None and req.executor is None:
            return req
        q.pop(0)
    return None
