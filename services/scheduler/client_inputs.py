"""What clients send: a submission (validated, admitted, queued and placed at once if an executor
can take it; a resubmission of the same id by the same client is answered again, idempotently),
a cancel, and the read-only queries (Ping, StatusQuery) that are answered from the state and
never logged.
"""

from __future__ import annotations

from c2cq.schemas import executor as ex_msgs
from c2cq.schemas.client import (
    MetricsQuery,
    ExecutorStatus,
    Ping,
    Pong,
    RequestAccepted,
    RequestRejected,
    StatusQuery,
    StatusReply,
)
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler import metrics
from c2cq.services.scheduler.admission import admit, enqueue, slo_class, unqueue
from c2cq.services.scheduler.dispatch import place_new
from c2cq.services.scheduler.placement import demand
from c2cq.services.scheduler.endings import finish, resend
from c2cq.services.scheduler.state import Command, RequestView, State, ToClient, ToExecutor, exec_request_id
from c2cq.services.scheduler.validate import check_submit

Out = list[Command]


def submitted(st: State, e: ev.Submitted) -> Out:
    msg, client, now = e.msg, e.client, e.at
    known = st.requests.get(msg.request_id) or st.recent.get(msg.request_id)
    if known is not None and known.client == client:
        return resend(known)  # a client retrying a submit it heard no answer to: idempotent
    bad = check_submit(msg, e.info, st.cfg.limits)
    if bad is not None:
        return [ToClient(client, bad)]
    if known is not None:
        return [ToClient(client, RequestRejected(request_id=msg.request_id, code=ErrorCode.DUPLICATE_REQUEST,
                                                 message="a request with this id is in flight"))]
    st.models[msg.model] = (e.info.bytes, e.info.parameters)
    st.demand[msg.model] = (demand(st, msg.model, now) + 1.0, now)
    req = RequestView(submit=msg, klass=slo_class(st.cfg, msg.slo), client=client, info=e.info, accepted_at=now)
    no, choice = admit(st, req)
    if no is not None:
        return [ToClient(client, no)]
    st.requests[msg.request_id] = req
    st.total += 1
    enqueue(st, [msg.request_id])
    out: Out = [ToClient(client, RequestAccepted(request_id=msg.request_id, model=msg.model,
                                                 client_request_id=msg.client_request_id))]
    return out + place_new(st, req, now, choice)


def cancel(st: State, e: ev.CancelAsked) -> Out:
    req = st.requests.get(e.request_id)
    if req is None or req.client != e.client:
        return [ToClient(e.client, RequestRejected(request_id=e.request_id, code=ErrorCode.UNKNOWN_REQUEST,
                                                   message="no such request in flight"))]
    out: Out = []
    if req.executor is not None:
        out.append(ToExecutor(req.executor, ex_msgs.AbortRequest(request_id=exec_request_id(req))))
    else:
        unqueue(st, req)
    return out + finish(st, req, FinishReason.CANCELLED, e.at, completion=req.emitted)


def query(st: State, client: bytes, msg: Ping | StatusQuery | MetricsQuery) -> Out:
    """Read-only client messages: answered from the state, never logged."""
    if isinstance(msg, Ping):
        return [ToClient(client, Pong(nonce=msg.nonce))]
    if isinstance(msg, MetricsQuery):
        return [ToClient(client, metrics.reply(st, msg.nonce))]
    rows = tuple(
        ExecutorStatus(executor_id=x.executor_id, state=x.state, backend=x.backend, device=x.device, model=x.model,
                       alpha=x.alpha, active_requests=len(x.active), queued_requests=0)
        for x in sorted(st.executors.values(), key=lambda x: x.executor_id)
    )
    waiting: dict[str, int] = {}
    for req in st.requests.values():
        if req.executor is None:
            waiting[req.submit.model] = waiting.get(req.submit.model, 0) + 1
    return [ToClient(client, StatusReply(nonce=msg.nonce, executors=rows, requests_in_flight=len(st.requests),
                                         requests_total=st.total, waiting=waiting))]
