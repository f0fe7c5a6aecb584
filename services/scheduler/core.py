"""The scheduler's pure core: ``handle(state, input, now) -> outputs``; no sockets, no clocks.

Inputs are client messages (with the sender's identity and the resolved ModelInfo), executor
events, send failures and timer ticks. Outputs are ToClient / ToExecutor commands that the
shell (main.py) sends. The state is mutated in place and owned by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from c2cq.schemas import executor as ex_msgs
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.client import (
    CancelRequest,
    ExecutorStatus,
    Ping,
    Pong,
    RequestAccepted,
    RequestFinished,
    RequestRejected,
    StatusQuery,
    StatusReply,
    SubmitRequest,
    Timings,
    TokensEmitted,
    Usage,
)
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.services.scheduler.placement import choose_executor
from c2cq.services.scheduler.state import ExecutorView, RequestView, State, ToClient, ToExecutor
from c2cq.services.scheduler.validate import check_submit

Out = list[ToClient | ToExecutor]


@dataclass(frozen=True, slots=True)
class FromClient:
    client: bytes
    msg: object
    info: ModelInfo | None = None  # the shell resolves the model of a SubmitRequest


@dataclass(frozen=True, slots=True)
class FromExecutor:
    executor_id: str
    msg: object


@dataclass(frozen=True, slots=True)
class SendFailed:
    executor_id: str


@dataclass(frozen=True, slots=True)
class Tick:
    pass


# ---- client inputs ---------------------------------------------------------------------------


def _submit(st: State, client: bytes, msg: SubmitRequest, info: ModelInfo | None, now: float) -> Out:
    bad = check_submit(msg, info, st.limits)
    if bad is not None:
        return [ToClient(client, bad)]
    if msg.request_id in st.requests:
        return [ToClient(client, RequestRejected(request_id=msg.request_id, code=ErrorCode.DUPLICATE_REQUEST,
                                                 message="a request with this id is in flight"))]
    if len(st.waiting) >= st.limits.max_waiting:
        return [ToClient(client, RequestRejected(request_id=msg.request_id, code=ErrorCode.QUEUE_FULL,
                                                 message=f"{len(st.waiting)} requests already wait for an executor"))]
    st.requests[msg.request_id] = RequestView(submit=msg, client=client, info=info, accepted_at=now)
    st.total += 1
    out: Out = [ToClient(client, RequestAccepted(request_id=msg.request_id, model=msg.model,
                                                 client_request_id=msg.client_request_id))]
    st.waiting.append(msg.request_id)
    return out + _dispatch(st, now)


def _cancel(st: State, client: bytes, msg: CancelRequest, now: float) -> Out:
    req = st.requests.get(msg.request_id)
    if req is None or req.client != client:
        return [ToClient(client, RequestRejected(request_id=msg.request_id, code=ErrorCode.UNKNOWN_REQUEST,
                                                 message="no such request in flight"))]
    out: Out = []
    if req.executor is not None:
        out.append(ToExecutor(req.executor, ex_msgs.AbortRequest(request_id=msg.request_id)))
    return out + _finish(st, req, FinishReason.CANCELLED, now, completion=req.emitted)


def _status(st: State, client: bytes, msg: StatusQuery) -> Out:
    rows = tuple(
        ExecutorStatus(executor_id=e.executor_id, state=e.state, backend=e.backend, device=e.device, model=e.model,
                       alpha=e.alpha, active_requests=len(e.active), queued_requests=0)
        for e in sorted(st.executors.values(), key=lambda e: e.executor_id)
    )
    return [ToClient(client, StatusReply(nonce=msg.nonce, executors=rows, requests_in_flight=len(st.requests),
                                         requests_total=st.total))]


# ---- executor inputs -------------------------------------------------------------------------


def _slice_ready(st: State, eid: str, ev: ex_msgs.SliceReady, now: float) -> Out:
    out: Out = []
    old = st.executors.get(eid)
    if old is not None and old.boot_id == ev.boot_id:
        old.last_seen = now
        if old.state == "lost":
            old.state = "ready"
        return _dispatch(st, now)
    if old is not None:  # a new incarnation: what the old one held is gone
        out += _lose(st, old, now, "the executor restarted")
    st.executors[eid] = ExecutorView(executor_id=eid, boot_id=ev.boot_id, backend=ev.backend, device=ev.device,
                                     max_batch=ev.max_batch, memory_budget_bytes=ev.memory_budget_bytes,
                                     link_bandwidth_bps=ev.link_bandwidth_bps, last_seen=now)
    return out + _dispatch(st, now)


def _tokens(st: State, eid: str, ev: ex_msgs.TokensProduced, now: float) -> Out:
    req = st.requests.get(ev.request_id)
    if req is None or req.executor != eid:
        return []  # late tokens of a cancelled or migrated request
    if ev.index != req.emitted:
        if ev.index + len(ev.token_ids) <= req.emitted:
            return []  # a duplicate
        # a gap means tokens were lost between executor and scheduler: fail loudly, never skip
        return [ToExecutor(eid, ex_msgs.AbortRequest(request_id=req.submit.request_id))] + _finish(
            st, req, FinishReason.ERROR, now, completion=req.emitted, code=ErrorCode.INTERNAL,
            message=f"token stream gap: expected index {req.emitted}, got {ev.index}")
    if req.first_token_at is None:
        req.first_token_at = now
    req.emitted += len(ev.token_ids)
    return [ToClient(req.client, TokensEmitted(request_id=ev.request_id, seq=ev.index, token_ids=ev.token_ids,
                                               text=ev.text))]


def _completed(st: State, eid: str, ev: ex_msgs.RequestCompleted, now: float) -> Out:
    req = st.requests.get(ev.request_id)
    if req is None or req.executor != eid:
        return []
    out = _finish(st, req, ev.finish_reason, now, prompt=ev.prompt_tokens, completion=req.emitted,
                  code=ev.error_code, message=ev.message)
    return out + _dispatch(st, now)


def _resident(st: State, eid: str, ev: ex_msgs.ModelResident) -> Out:
    ex = st.executors.get(eid)
    if ex is not None:
        ex.model, ex.alpha = ev.model, ev.alpha
    return []


def _heartbeat(st: State, eid: str, ev: ex_msgs.Heartbeat, now: float) -> Out:
    ex = st.executors.get(eid)
    if ex is None or ex.boot_id != ev.boot_id:
        return []  # it will announce itself with SliceReady
    ex.last_seen = now
    if ev.draining:
        ex.state = "draining"
    elif ex.state == "lost":
        ex.state = "ready"
        return _dispatch(st, now)
    return []


# ---- shared steps ----------------------------------------------------------------------------


def _dispatch(st: State, now: float) -> Out:
    out: Out = []
    keep = []
    while st.waiting:
        rid = st.waiting.popleft()
        req = st.requests.get(rid)
        if req is None:
            continue
        ex = choose_executor(st.executors, req.submit.model)
        if ex is None:
            keep.append(rid)
            keep.extend(st.waiting)
            st.waiting.clear()
            break
        out += _assign(st, req, ex, now)
    st.waiting.extend(keep)
    return out


def _assign(st: State, req: RequestView, ex: ExecutorView, now: float) -> Out:
    s = req.submit
    req.switched = ex.model != s.model
    req.executor, req.assigned_at = ex.executor_id, now
    ex.active.add(s.request_id)
    if ex.model != s.model and not (ex.active - {s.request_id}):
        ex.model, ex.alpha = s.model, 0.0
    msg = ex_msgs.AssignRequest(request_id=s.request_id, model=s.model, prompt=s.prompt,
                                prompt_token_ids=s.prompt_token_ids, max_tokens=s.max_tokens, sampling=s.sampling)
    return [ToExecutor(ex.executor_id, msg)]


def _finish(st: State, req: RequestView, reason: FinishReason, now: float, *, prompt: int = 0, completion: int = 0,
            code: ErrorCode | None = None, message: str | None = None) -> Out:
    rid = req.submit.request_id
    st.requests.pop(rid, None)
    if req.executor is not None and req.executor in st.executors:
        st.executors[req.executor].active.discard(rid)
    ms = lambda t: None if t is None else (t - req.accepted_at) * 1e3  # noqa: E731
    done = RequestFinished(
        request_id=rid, finish_reason=reason, usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
        timings=Timings(queued_ms=ms(req.assigned_at or now), ttft_ms=ms(req.first_token_at), e2e_ms=ms(now)),
        executor=req.executor, switched=req.switched, error_code=code, message=message)
    return [ToClient(req.client, done)]


def _lose(st: State, ex: ExecutorView, now: float, why: str) -> Out:
    ex.state = "lost"
    out: Out = []
    for rid in sorted(ex.active):
        req = st.requests.get(rid)
        if req is not None:
            out += _finish(st, req, FinishReason.ERROR, now, completion=req.emitted, code=ErrorCode.EXECUTOR_LOST,
                           message=f"executor {ex.executor_id} was lost: {why}")
    ex.active.clear()
    ex.model = None
    return out


def _tick(st: State, now: float) -> Out:
    out: Out = []
    for ex in list(st.executors.values()):
        if ex.state != "lost" and now - ex.last_seen > st.heartbeat_timeout_s:
            out += _lose(st, ex, now, f"no heartbeat for {now - ex.last_seen:.1f} s")
    while st.waiting:
        req = st.requests.get(st.waiting[0])
        if req is not None and now - req.accepted_at <= st.max_wait_s:
            break
        st.waiting.popleft()
        if req is not None:
            out += _finish(st, req, FinishReason.ERROR, now, code=ErrorCode.NO_EXECUTOR,
                           message=f"no executor became available within {st.max_wait_s:.0f} s")
    return out + _dispatch(st, now)


_CLIENT = {
    SubmitRequest: lambda st, i, now: _submit(st, i.client, i.msg, i.info, now),
    CancelRequest: lambda st, i, now: _cancel(st, i.client, i.msg, now),
    Ping: lambda st, i, now: [ToClient(i.client, Pong(nonce=i.msg.nonce))],
    StatusQuery: lambda st, i, now: _status(st, i.client, i.msg),
}
_EXECUTOR = {
    ex_msgs.SliceReady: lambda st, i, now: _slice_ready(st, i.executor_id, i.msg, now),
    ex_msgs.TokensProduced: lambda st, i, now: _tokens(st, i.executor_id, i.msg, now),
    ex_msgs.RequestCompleted: lambda st, i, now: _completed(st, i.executor_id, i.msg, now),
    ex_msgs.ModelResident: lambda st, i, now: _resident(st, i.executor_id, i.msg),
    ex_msgs.Heartbeat: lambda st, i, now: _heartbeat(st, i.executor_id, i.msg, now),
    ex_msgs.StepStats: lambda st, i, now: [],  # recorded by the feedback scheduler (issue 5)
}
HANDLERS = {"client": _CLIENT, "executor": _EXECUTOR}


def handle(st: State, inp: FromClient | FromExecutor | SendFailed | Tick, now: float) -> Out:
    if isinstance(inp, FromClient):
        return _CLIENT[type(inp.msg)](st, inp, now)
    if isinstance(inp, FromExecutor):
        ex = st.executors.get(inp.executor_id)
        if ex is not None and ex.state != "lost":
            ex.last_seen = now
        return _EXECUTOR[type(inp.msg)](st, inp, now)
    if isinstance(inp, SendFailed):
        ex = st.executors.get(inp.executor_id)
        return [] if ex is None or ex.state == "lost" else _lose(st, ex, now, "unreachable") + _dispatch(st, now)
    return _tick(st, now)
