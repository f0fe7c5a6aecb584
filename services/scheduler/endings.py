"""Where a request leaves its executor: it finishes (the client hears how), is detached for a
re-dispatch, or migrates token-only when its executor is lost (bounded by ``max_migrations``);
and the scheduler's own endings: a restart (Recovered: re-dispatch everything, resend to every
client) and a clean stop.
"""

from __future__ import annotations

from c2cq.schemas import executor as ex_msgs
from c2cq.schemas.client import RequestAccepted, RequestFinished, Timings, TokensEmitted, Usage
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.services.scheduler import costmodel
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.admission import enqueue
from c2cq.services.scheduler.dispatch import dispatch
from c2cq.services.scheduler.indexes import reindex, relink
from c2cq.services.scheduler.state import (
    Command,
    ExecutorView,
    RequestView,
    State,
    ToClient,
    ToExecutor,
    exec_request_id,
)

Out = list[Command]


def detach(st: State, req: RequestView) -> str:
    """Take a request off its executor for a re-dispatch; returns the stale attempt's executor-side id."""
    xid = exec_request_id(req)
    st.exec_ids.pop(xid, None)
    x = st.executors.get(req.executor) if req.executor is not None else None
    if x is not None:
        x.active.pop(req.request_id, None)
        reindex(st, x)
    req.executor = None
    req.attempt += 1
    return xid


def finish(st: State, req: RequestView, reason: FinishReason, now: float, *, prompt: int = 0, completion: int = 0,
            code: ErrorCode | None = None, message: str | None = None) -> Out:
    rid = req.request_id
    st.requests.pop(rid, None)
    st.exec_ids.pop(exec_request_id(req), None)
    x = st.executors.get(req.executor) if req.executor is not None else None
    if x is not None:
        x.active.pop(rid, None)
        x.used_at = now
        reindex(st, x)
    t0, first = req.accepted_at, req.first_token_at
    done = RequestFinished(
        request_id=rid, finish_reason=reason, usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
        timings=Timings(queued_ms=((req.assigned_at or now) - t0) * 1e3,
                        ttft_ms=None if first is None else (first - t0) * 1e3, e2e_ms=(now - t0) * 1e3),
        executor=req.executor, switched=req.switched, error_code=code, message=message)
    req.finished, req.finished_at = done, now
    st.recent[rid] = req
    if len(st.recent) > st.cfg.recent_max:
        del st.recent[next(iter(st.recent))]
    return [ToClient(req.client, done)]


def resend(req: RequestView) -> Out:
    """Everything the client was sent about a request; it drops what it already has (by seq)."""
    s = req.submit
    out: Out = [ToClient(req.client, RequestAccepted(request_id=s.request_id, model=s.model,
                                                     client_request_id=s.client_request_id))]
    out += [ToClient(req.client, TokensEmitted(request_id=s.request_id, seq=b.seq, token_ids=b.token_ids, text=b.text))
            for b in req.batches]
    if req.finished is not None:
        out.append(ToClient(req.client, req.finished))
    return out


def lose(st: State, x: ExecutorView, now: float, why: str) -> Out:
    """An executor is gone: its requests migrate token-only (bounded), or fail with executor_lost."""
    x.state = "lost"
    out: Out = []
    moved: list[str] = []
    for rid in list(x.active):
        req = st.requests.get(rid)
        if req is None:
            continue
        if req.migrations < st.cfg.max_migrations:
            detach(st, req)
            req.migrations += 1
            moved.append(rid)
        else:
            out += finish(st, req, FinishReason.ERROR, now, completion=req.emitted, code=ErrorCode.EXECUTOR_LOST,
                           message=f"executor {x.executor_id} was lost ({why}) after {req.migrations} migrations")
    x.active.clear()
    x.to_abort = []
    x.model = None
    costmodel.idle(x.est)
    st.reserved.pop(x.executor_id, None)
    reindex(st, x)
    relink(st, x.link_group)
    enqueue(st, moved, front=True)  # ahead of newer work: they were accepted first
    return out


def unreachable(st: State, e: ev.ExecutorUnreachable) -> Out:
    x = st.executors.get(e.executor_id)
    if x is None or x.state == "lost":
        return []
    return lose(st, x, e.at, "unreachable") + dispatch(st, e.at)


def recovered(st: State, e: ev.Recovered) -> Out:
    """A restarted scheduler: every executor must speak again before it gets work; every request in
    flight is re-dispatched token-only (its stale attempt aborted once its executor is heard);
    every client is re-sent what it was sent, and drops what it already has."""
    for x in st.executors.values():
        if x.state != "lost":
            x.state, x.last_seen = "unconfirmed", e.at
        reindex(st, x)
    moved: list[str] = []
    for req in st.requests.values():
        if req.executor is None:
            continue
        x = st.executors.get(req.executor)
        stale = detach(st, req)
        if x is not None and x.state == "unconfirmed":
            x.to_abort.append(stale)
        moved.append(req.request_id)
    enqueue(st, moved, front=True)
    out: Out = []
    for req in list(st.requests.values()) + list(st.recent.values()):
        out += resend(req)
    return out + dispatch(st, e.at)


def stopped(st: State, e: ev.Stopped) -> Out:
    out: Out = []
    for req in list(st.requests.values()):
        if req.executor is not None:
            out.append(ToExecutor(req.executor, ex_msgs.AbortRequest(request_id=exec_request_id(req))))
        out += finish(st, req, FinishReason.ERROR, e.at, completion=req.emitted, code=ErrorCode.SHUTTING_DOWN,
                       message="the scheduler stopped")
    st.queues.clear()
    st.by_model.clear()
    st.queued.clear()
    st.exec_ids.clear()
    st.executors.clear()
    st.groups.clear()
    st.idle.clear()
    st.serving.clear()
    st.links.clear()
    st.reserved.clear()
    return out
