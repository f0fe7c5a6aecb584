"""What executors send: SliceReady (a new slice, or a new incarnation of one: what the old one held
is lost), the token stream and completions of their requests (stale or foreign attempts are
dropped, a gap in a stream fails the request loudly), ModelResident, Heartbeat and StepStats
(which teach the cost model). Any message of a known boot proves the executor is back.
"""

from __future__ import annotations

from c2cq.schemas import executor as ex_msgs
from c2cq.schemas.client import TokensEmitted
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.services.scheduler import costmodel, kvroom
from c2cq.services.scheduler.dispatch import dispatch
from c2cq.services.scheduler.endings import finish, lose
from c2cq.services.scheduler.indexes import reindex, relink
from c2cq.services.scheduler.placement import link_group
from c2cq.services.scheduler.state import Batch, Command, ExecutorView, RequestView, State, ToClient, ToExecutor

Out = list[Command]


def slice_ready(st: State, eid: str, m: ex_msgs.SliceReady, now: float) -> Out:
    old = st.executors.get(eid)
    if old is not None and old.boot_id == m.boot_id:
        return heard(st, old, now)
    out: Out = []
    if old is not None:  # a new incarnation: what the old one held is gone
        out += lose(st, old, now, "the executor restarted")
        st.groups[old.link_group].remove(eid)
        relink(st, old.link_group)
    group = m.link_group or link_group(m.device)
    if m.host:  # slices share a link only on one host: "host" (CPU slices) or a GPU's UUID, per host
        group = f"{m.host}:{group}"
    st.groups.setdefault(group, []).append(eid)
    est = costmodel.Estimates(link_bps=m.link_bandwidth_bps, hbm_bps=st.cfg.hbm_bps_prior, flops=st.cfg.flops_prior)
    x = st.executors[eid] = ExecutorView(
        executor_id=eid, boot_id=m.boot_id, backend=m.backend, device=m.device, max_batch=m.max_batch,
        memory_budget_bytes=m.memory_budget_bytes, link_bandwidth_bps=m.link_bandwidth_bps, last_seen=now,
        link_group=group, est=est, chunk_tokens=st.cfg.base_chunk_tokens, host=m.host or "")
    reindex(st, x)
    relink(st, group)
    return out + dispatch(st, now, (x,))


def request_of(st: State, eid: str, exec_rid: str) -> RequestView | None:
    rid = st.exec_ids.get(exec_rid)
    req = st.requests.get(rid) if rid is not None else None
    return req if req is not None and req.executor == eid else None  # else a stale or foreign attempt


def tokens_produced(st: State, eid: str, m: ex_msgs.TokensProduced, now: float) -> Out:
    req = request_of(st, eid, m.request_id)
    if req is None:
        return []
    if m.index != req.emitted:
        if m.index + len(m.token_ids) <= req.emitted:
            return []  # a duplicate
        # a gap means tokens were lost between executor and scheduler: fail loudly, never skip
        return [ToExecutor(eid, ex_msgs.AbortRequest(request_id=m.request_id))] + finish(
            st, req, FinishReason.ERROR, now, completion=req.emitted, code=ErrorCode.INTERNAL,
            message=f"token stream gap: expected index {req.emitted}, got {m.index}")
    if req.first_token_at is None:
        req.first_token_at = now
        x = st.executors.get(eid)
        if x is not None and req.assigned_at is not None:
            x.ttft_s = costmodel.ewma(x.ttft_s, now - req.assigned_at)
    batch = Batch(req.emitted, m.token_ids, m.text)
    req.batches.append(batch)
    req.emitted += len(m.token_ids)
    return [ToClient(req.client, TokensEmitted(request_id=req.request_id, seq=batch.seq, token_ids=batch.token_ids,
                                               text=batch.text))]


def request_completed(st: State, eid: str, m: ex_msgs.RequestCompleted, now: float) -> Out:
    req = request_of(st, eid, m.request_id)
    if req is None:
        return []
    x = st.executors.get(eid)
    if x is not None:
        kvroom.completed(st, x, req)
    out = finish(st, req, m.finish_reason, now, prompt=m.prompt_tokens, completion=req.emitted,
                  code=m.error_code, message=m.message)
    return out + dispatch(st, now, () if x is None else (x,))


def model_resident(st: State, eid: str, m: ex_msgs.ModelResident, now: float) -> Out:
    """The executor switched to ``m.model``. While the scheduler has requests of another model in
    flight there (the request that switch was for moved or ended, and the slice was given another
    model since), the report is stale: x still holds the model of its batch as far as placement
    goes (its batch must not take the stale model's requests: two models on one slice)."""
    x = st.executors.get(eid)
    if x is not None:
        if m.switched_s is not None:
            x.est.switch_s = costmodel.ewma(x.est.switch_s, m.switched_s)
        if x.active and m.model != x.model:
            return []
        x.model, x.alpha = m.model, m.alpha
        reindex(st, x)
    return []


def heartbeat(st: State, eid: str, m: ex_msgs.Heartbeat, now: float) -> Out:
    x = st.executors.get(eid)
    if x is None or x.boot_id != m.boot_id:
        return []  # it will announce itself with SliceReady
    if m.draining:
        x.state = "draining"
        reindex(st, x)
        return []
    if m.active == 0 and m.waiting == 0 and x.est.link_used_bps:
        costmodel.idle(x.est)
        relink(st, x.link_group)
    return heard(st, x, now)


def step_stats(st: State, eid: str, m: ex_msgs.StepStats, now: float) -> Out:
    x = st.executors.get(eid)
    size = st.models.get(m.model) if m.model is not None else None
    if x is not None and size is not None:
        if m.model == x.model and m.bytes_hbm + m.bytes_host > 0:
            # the executor raises residency as it serves: what it read from HBM says how far it got
            x.alpha = m.bytes_hbm / (m.bytes_hbm + m.bytes_host)
        costmodel.observe(x.est, step_s=m.step_s, tokens=m.tokens, decode_tokens=m.decode_tokens,
                          bytes_hbm=m.bytes_hbm, bytes_host=m.bytes_host, model_bytes=size[0], params=size[1])
        relink(st, x.link_group)
    if x is not None and kvroom.observe(st, x, m) and x.serving_model is not None and st.by_model.get(x.model):
        return dispatch(st, now, (x,))  # room may have appeared for the waiting requests of its model
    return []


def heard(st: State, x: ExecutorView, now: float) -> Out:
    """An executor of a known boot spoke: a lost or unconfirmed one is back; stale attempts end."""
    x.last_seen = now
    if x.state not in ("lost", "unconfirmed"):
        return []
    out: Out = [ToExecutor(x.executor_id, ex_msgs.AbortRequest(request_id=xid)) for xid in x.to_abort]
    x.to_abort = []
    was_lost = x.state == "lost"
    x.state = "ready"
    reindex(st, x)
    if was_lost:
        relink(st, x.link_group)
    return out + dispatch(st, now, (x,))
