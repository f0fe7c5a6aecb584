"""The scheduler's pure core: ``apply(state, event) -> (state, commands)``, a fold over its log.

Every input that changes the state is a SchedulerEvent (events.py) carrying the time it arrived;
``apply`` folds one into the state (mutated in place and returned: the caller owns it) and
returns the commands to send. No sockets, no clocks, no randomness: replaying the same events
into a fresh state gives the same state and the same commands. Read-only queries (Ping,
StatusQuery) go through ``query`` and are not logged.
"""

from __future__ import annotations

import msgspec

from c2cq.schemas import executor as ex_msgs
from c2cq.schemas.client import (
    ExecutorStatus,
    MetricsQuery,
    Ping,
    Pong,
    RequestAccepted,
    RequestFinished,
    RequestRejected,
    StatusQuery,
    StatusReply,
    Timings,
    TokensEmitted,
    Usage,
)
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.schemas.client import SLO
from c2cq.services.scheduler import controller, costmodel, metrics
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.placement import choose_executor, earliest_ttft, link_group
from c2cq.services.scheduler.state import (
    CLASSES,
    Batch,
    Command,
    Config,
    ExecutorView,
    LinkLoad,
    RequestView,
    State,
    ToClient,
    ToExecutor,
    exec_request_id,
)
from c2cq.services.scheduler.validate import check_submit

Out = list[Command]
_LIVE = ("ready", "draining", "unconfirmed")


# ---- placement indexes -------------------------------------------------------------------------
# Placement reads its candidates from st.idle and st.serving and a link's load from st.links;
# every step that changes an executor's state, batch, model or reservation calls _reindex, and
# every step that changes a member's link figures calls _relink. Both are pure functions of the
# state, so a replay (or a snapshot plus its tail) rebuilds the same indexes.


def _reindex(st: State, x: ExecutorView) -> None:
    """List x where placement should find it: idle, running its model, or nowhere."""
    listed = x.state == "ready" and x.executor_id not in st.reserved
    idle = listed and not x.active
    model = x.model if listed and x.active else None
    eid = x.executor_id
    if x.in_idle != idle:
        if idle:
            st.idle[eid] = None
        else:
            st.idle.pop(eid, None)
        x.in_idle = idle
    if x.serving_model != model:
        if x.serving_model is not None:
            members = st.serving.get(x.serving_model)
            if members is not None:
                members.pop(eid, None)
                if not members:
                    del st.serving[x.serving_model]
        if model is not None:
            st.serving.setdefault(model, {})[eid] = None
        x.serving_model = model


def _relink(st: State, group: str) -> None:
    """Recompute one link's capacity and load from its live members (sums, never differences)."""
    cap, used, n = 0.0, 0.0, 0
    for eid in st.groups.get(group, ()):
        y = st.executors.get(eid)
        if y is None or y.state == "lost":
            continue
        cap = max(cap, y.est.link_bps)
        used += y.est.link_used_bps
        n += 1
    if not n:
        st.links.pop(group, None)
        return
    link = st.links.get(group)
    if link is None:
        st.links[group] = LinkLoad(cap_bps=cap, used_bps=used)
    else:
        link.cap_bps, link.used_bps = cap, used


def check_indexes(st: State) -> State:
    """After loading a snapshot: rebuild the indexes if they do not match the executors (a snapshot
    written by a version without them); a consistent snapshot is left exactly as it was."""
    probe = State(cfg=st.cfg, executors={}, groups=st.groups, reserved=st.reserved)
    for eid, x in st.executors.items():
        y = msgspec.structs.replace(x, in_idle=False, serving_model=None)
        probe.executors[eid] = y
        _reindex(probe, y)
        if (y.in_idle, y.serving_model) != (x.in_idle, x.serving_model):
            return rebuild_indexes(st)
    for group in st.groups:
        _relink(probe, group)
    if set(probe.idle) != set(st.idle) or {m: set(v) for m, v in probe.serving.items()} != {
            m: set(v) for m, v in st.serving.items()} or probe.links.keys() != st.links.keys():
        return rebuild_indexes(st)
    return st


def rebuild_indexes(st: State) -> State:
    """Recompute every placement index from the executors (a snapshot written before they existed)."""
    st.idle, st.serving, st.links = {}, {}, {}
    for x in st.executors.values():
        x.in_idle, x.serving_model = False, None
        _reindex(st, x)
    for group in st.groups:
        _relink(st, group)
    return st


# ---- admission ---------------------------------------------------------------------------------


def slo_class(cfg: Config, slo: SLO) -> str:
    if slo.ttft_ms is None and slo.tpot_ms is None:
        return "batch"
    if slo.ttft_ms is not None and slo.ttft_ms <= cfg.interactive_ttft_ms:
        return "interactive"
    return "standard"


def _admit(st: State, req: RequestView) -> RequestRejected | None:
    """None to accept; else why not: its class's queue is full, or no executor can meet its TTFT."""
    rid, k = req.request_id, req.klass
    queued = st.queued.get(k, 0)
    limit = st.cfg.queue_limits.get(k, st.cfg.limits.max_waiting)
    if queued >= limit or st.waiting() >= st.cfg.limits.max_waiting:
        return RequestRejected(request_id=rid, code=ErrorCode.QUEUE_FULL,
                               message=f"the {k} queue is full ({queued} requests wait for an executor)")
    target = req.submit.slo.ttft_ms
    if target is None:
        return None
    x, t = choose_executor(st, req)
    if x is None:
        t = earliest_ttft(st, req, ahead=queued)
    if t == float("inf"):
        return RequestRejected(request_id=rid, code=ErrorCode.NO_EXECUTOR,
                               message=f"cannot meet slo.ttft_ms={target:g}: no executor is up")
    if t * 1e3 > target * st.cfg.admit_margin:
        return RequestRejected(request_id=rid, code=ErrorCode.SLO_UNATTAINABLE,
                               message=f"cannot meet slo.ttft_ms={target:g}: the best estimate is {t * 1e3:.0f} ms")
    return None


def _enqueue(st: State, rids: list[str], front: bool = False) -> None:
    for rid in (reversed(rids) if front else rids):
        req = st.requests[rid]
        for q in (st.queues.setdefault(req.klass, []), st.by_model.setdefault(req.submit.model, [])):
            if front:
                q.insert(0, rid)
            else:
                q.append(rid)
        st.queued[req.klass] = st.queued.get(req.klass, 0) + 1


def _unqueue(st: State, req: RequestView) -> None:
    """The request leaves the waiting set (its ids in the lists go stale)."""
    st.queued[req.klass] -= 1


# ---- client inputs ---------------------------------------------------------------------------


def _submitted(st: State, e: ev.Submitted) -> Out:
    msg, client, now = e.msg, e.client, e.at
    known = st.requests.get(msg.request_id) or st.recent.get(msg.request_id)
    if known is not None and known.client == client:
        return _resend(known)  # a client retrying a submit it heard no answer to: idempotent
    bad = check_submit(msg, e.info, st.cfg.limits)
    if bad is not None:
        return [ToClient(client, bad)]
    if known is not None:
        return [ToClient(client, RequestRejected(request_id=msg.request_id, code=ErrorCode.DUPLICATE_REQUEST,
                                                 message="a request with this id is in flight"))]
    st.models[msg.model] = (e.info.bytes, e.info.parameters)
    req = RequestView(submit=msg, klass=slo_class(st.cfg, msg.slo), client=client, info=e.info, accepted_at=now)
    no = _admit(st, req)
    if no is not None:
        return [ToClient(client, no)]
    st.requests[msg.request_id] = req
    st.total += 1
    _enqueue(st, [msg.request_id])
    out: Out = [ToClient(client, RequestAccepted(request_id=msg.request_id, model=msg.model,
                                                 client_request_id=msg.client_request_id))]
    return out + _place_new(st, req, now)


def _cancel(st: State, e: ev.CancelAsked) -> Out:
    req = st.requests.get(e.request_id)
    if req is None or req.client != e.client:
        return [ToClient(e.client, RequestRejected(request_id=e.request_id, code=ErrorCode.UNKNOWN_REQUEST,
                                                   message="no such request in flight"))]
    out: Out = []
    if req.executor is not None:
        out.append(ToExecutor(req.executor, ex_msgs.AbortRequest(request_id=exec_request_id(req))))
    else:
        _unqueue(st, req)
    return out + _finish(st, req, FinishReason.CANCELLED, e.at, completion=req.emitted)


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


# ---- executor inputs -------------------------------------------------------------------------


def _slice_ready(st: State, eid: str, m: ex_msgs.SliceReady, now: float) -> Out:
    old = st.executors.get(eid)
    if old is not None and old.boot_id == m.boot_id:
        return _heard(st, old, now)
    out: Out = []
    if old is not None:  # a new incarnation: what the old one held is gone
        out += _lose(st, old, now, "the executor restarted")
        st.groups[old.link_group].remove(eid)
        _relink(st, old.link_group)
    group = m.link_group or link_group(m.device)
    st.groups.setdefault(group, []).append(eid)
    est = costmodel.Estimates(link_bps=m.link_bandwidth_bps, hbm_bps=st.cfg.hbm_bps_prior, flops=st.cfg.flops_prior)
    x = st.executors[eid] = ExecutorView(
        executor_id=eid, boot_id=m.boot_id, backend=m.backend, device=m.device, max_batch=m.max_batch,
        memory_budget_bytes=m.memory_budget_bytes, link_bandwidth_bps=m.link_bandwidth_bps, last_seen=now,
        link_group=group, est=est, chunk_tokens=st.cfg.base_chunk_tokens)
    _reindex(st, x)
    _relink(st, group)
    return out + _dispatch(st, now, (x,))


def _request_of(st: State, eid: str, exec_rid: str) -> RequestView | None:
    rid = st.exec_ids.get(exec_rid)
    req = st.requests.get(rid) if rid is not None else None
    return req if req is not None and req.executor == eid else None  # else a stale or foreign attempt


def _tokens(st: State, eid: str, m: ex_msgs.TokensProduced, now: float) -> Out:
    req = _request_of(st, eid, m.request_id)
    if req is None:
        return []
    if m.index != req.emitted:
        if m.index + len(m.token_ids) <= req.emitted:
            return []  # a duplicate
        # a gap means tokens were lost between executor and scheduler: fail loudly, never skip
        return [ToExecutor(eid, ex_msgs.AbortRequest(request_id=m.request_id))] + _finish(
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


def _completed(st: State, eid: str, m: ex_msgs.RequestCompleted, now: float) -> Out:
    req = _request_of(st, eid, m.request_id)
    if req is None:
        return []
    out = _finish(st, req, m.finish_reason, now, prompt=m.prompt_tokens, completion=req.emitted,
                  code=m.error_code, message=m.message)
    x = st.executors.get(eid)
    return out + _dispatch(st, now, () if x is None else (x,))


def _resident(st: State, eid: str, m: ex_msgs.ModelResident, now: float) -> Out:
    x = st.executors.get(eid)
    if x is not None:
        x.model, x.alpha = m.model, m.alpha
        if m.switched_s is not None:
            x.est.switch_s = costmodel.ewma(x.est.switch_s, m.switched_s)
        _reindex(st, x)
    return []


def _heartbeat(st: State, eid: str, m: ex_msgs.Heartbeat, now: float) -> Out:
    x = st.executors.get(eid)
    if x is None or x.boot_id != m.boot_id:
        return []  # it will announce itself with SliceReady
    if m.draining:
        x.state = "draining"
        _reindex(st, x)
        return []
    if m.active == 0 and m.waiting == 0 and x.est.link_used_bps:
        costmodel.idle(x.est)
        _relink(st, x.link_group)
    return _heard(st, x, now)


def _stats(st: State, eid: str, m: ex_msgs.StepStats, now: float) -> Out:
    x = st.executors.get(eid)
    size = st.models.get(m.model) if m.model is not None else None
    if x is not None and size is not None:
        if m.model == x.model and m.bytes_hbm + m.bytes_host > 0:
            # the executor raises residency as it serves: what it read from HBM says how far it got
            x.alpha = m.bytes_hbm / (m.bytes_hbm + m.bytes_host)
        costmodel.observe(x.est, step_s=m.step_s, tokens=m.tokens, decode_tokens=m.decode_tokens,
                          bytes_hbm=m.bytes_hbm, bytes_host=m.bytes_host, model_bytes=size[0], params=size[1])
        _relink(st, x.link_group)
    return []


def _heard(st: State, x: ExecutorView, now: float) -> Out:
    """An executor of a known boot spoke: a lost or unconfirmed one is back; stale attempts end."""
    x.last_seen = now
    if x.state not in ("lost", "unconfirmed"):
        return []
    out: Out = [ToExecutor(x.executor_id, ex_msgs.AbortRequest(request_id=xid)) for xid in x.to_abort]
    x.to_abort = []
    relink = x.state == "lost"
    x.state = "ready"
    _reindex(st, x)
    if relink:
        _relink(st, x.link_group)
    return out + _dispatch(st, now, (x,))


# ---- shared steps ----------------------------------------------------------------------------


def _waiting(st: State, q: list[str]) -> RequestView | None:
    """The first live waiting request of a list, dropping the stale ids before it."""
    while q:
        req = st.requests.get(q[0])
        if req is not None and req.executor is None:
            return req
        q.pop(0)
    return None


def _place(st: State, req: RequestView, x: ExecutorView, now: float) -> Out:
    _unqueue(st, req)
    return _assign(st, req, x, now)


def _place_new(st: State, req: RequestView, now: float) -> Out:
    """A new request starts at once where its estimated TTFT is lowest, if an executor can take it
    (one idle, or one running its model with a free slot); else it waits its turn."""
    x, _ = choose_executor(st, req)
    return [] if x is None else _place(st, req, x, now)


def _dispatch(st: State, now: float, touched=None) -> Out:
    """Fill free capacity from the waiting requests (late binding). A batch with a free slot takes
    the oldest waiting requests of its model; idle executors take the waiting requests in class
    order, each placed where its estimated TTFT is lowest. ``touched``: the only executors whose
    capacity changed (None: any may have), so a completion looks at its own executor, not at all.
    Work is proportional to what is placed, not to how many wait or how many executors there are."""
    out: Out = []
    if st.reserved:
        touched = _serve_reserved(st, now, out, touched)
    for x in (st.executors.values() if touched is None else touched):
        _fill(st, x, now, out)
    started: list[ExecutorView] = []  # idle executors that took a request: their batches may take more
    for k in CLASSES:
        q = st.queues.get(k)
        while st.idle and q:
            req = _waiting(st, q)
            if req is None:
                break
            x, _ = choose_executor(st, req)
            if x is None:  # cannot happen while an executor is idle; guard the loop regardless
                break
            q.pop(0)
            if x.in_idle:
                started.append(x)
            out += _place(st, req, x, now)
    for x in started:
        _fill(st, x, now, out)
    return out


def _serve_reserved(st: State, now: float, out: Out, touched):
    """Executors held for starved requests. One that has drained serves the longest-starved
    request (its own, or an older one: a request displaced by a lost executor, say); a hold whose
    request was placed elsewhere or ended, or whose executor is no longer ready, is released (that
    executor may fill its batch again). Returns ``touched`` plus the released executors."""
    released: list[ExecutorView] = []
    for eid, rid in list(st.reserved.items()):
        x, req = st.executors.get(eid), st.requests.get(rid)
        waiting = req is not None and req.executor is None
        if x is not None and x.state == "ready" and waiting and x.active:
            continue  # still draining
        del st.reserved[eid]
        if x is None:
            continue
        if x.state == "ready" and not x.active:
            first = next(_starving(st, now), None) or (req if waiting else None)
            if first is not None:
                out += _place(st, first, x, now)
                released.append(x)
                continue
        _reindex(st, x)
        released.append(x)
    if touched is None or not released:
        return touched
    return tuple(touched) + tuple(released)


def _starving(st: State, now: float):
    """The waiting requests that starve, longest first (class order, then queue order): waited past
    their limit (``starve_after_s``, or ``starve_share`` of the TTFT target if sooner) for a model
    no executor runs — a request whose model runs somewhere gets that batch's next free slot."""
    cfg = st.cfg
    for k in CLASSES:
        for rid in st.queues.get(k, ()):
            req = st.requests.get(rid)
            if req is None or req.executor is not None:
                continue  # a stale id
            ttft = req.submit.slo.ttft_ms
            limit = cfg.starve_after_s if ttft is None else min(cfg.starve_after_s, cfg.starve_share * ttft / 1e3)
            if now - req.accepted_at <= limit:
                break  # the queue is in arrival order: the rest waited less
            if req.submit.model not in st.serving:
                yield req


def _guard_starved(st: State, now: float) -> None:
    """Bound how long a waiting request starves while busy executors keep taking work of the
    models they run: hold the executor expected to drain first for each starving request — it
    takes no new work and, once idle, serves the longest-starved request. At most
    ``starve_reserve_share`` of the ready executors are held at once, so the rest keep serving."""
    ready = sum(1 for x in st.executors.values() if x.state == "ready")
    room = max(1, int(ready * st.cfg.starve_reserve_share)) - len(st.reserved)
    if room <= 0 or not any(st.queued.values()):
        return
    held = set(st.reserved.values())
    starving: list[RequestView] = []
    for req in _starving(st, now):
        if req.request_id not in held:
            starving.append(req)
            if len(starving) >= room:
                break
    if not starving:
        return
    # drain time of each busy, unheld executor: its longest remaining decode at its step time
    drain: list[tuple[float, str]] = []
    for x in st.executors.values():
        if x.state != "ready" or not x.active or x.executor_id in st.reserved:
            continue
        left = 0
        for a in x.active:
            r = st.requests.get(a)
            if r is not None:
                left = max(left, r.submit.max_tokens - r.emitted)
        drain.append((left * (x.est.step_s or 1.0), x.executor_id))
    drain.sort()
    for req, (_, eid) in zip(starving, drain):
        st.reserved[eid] = req.request_id
        _reindex(st, st.executors[eid])


def _fill(st: State, x: ExecutorView, now: float, out: Out) -> None:
    """A running batch with free slots takes the oldest waiting requests of its model."""
    if x.serving_model is None:  # not ready, reserved, idle, or nothing to run
        return
    q = st.by_model.get(x.model)
    while q and len(x.active) < x.max_batch:
        req = _waiting(st, q)
        if req is None:
            break
        q.pop(0)
        out += _place(st, req, x, now)


def _assign(st: State, req: RequestView, x: ExecutorView, now: float) -> Out:
    s = req.submit
    req.switched = req.switched or x.model != s.model
    req.executor, req.assigned_at = x.executor_id, req.assigned_at or now
    xid = exec_request_id(req)
    st.exec_ids[xid] = s.request_id
    x.active[s.request_id] = None
    x.used_at = now
    fresh = len(x.active) == 1  # from idle: the batch is new, and so must its plan be
    switching = fresh and x.model != s.model
    if switching:
        x.model, x.alpha = s.model, 0.0
    _reindex(st, x)
    msg = ex_msgs.AssignRequest(request_id=xid, model=s.model, prompt=s.prompt, prompt_token_ids=s.prompt_token_ids,
                                max_tokens=s.max_tokens, sampling=s.sampling, resume_token_ids=req.token_ids())
    out: Out = [ToExecutor(x.executor_id, msg)]
    if fresh:
        out += controller.start(st, x, req, now, switching)
    return out


def _detach(st: State, req: RequestView) -> str:
    """Take a request off its executor for a re-dispatch; returns the stale attempt's executor-side id."""
    xid = exec_request_id(req)
    st.exec_ids.pop(xid, None)
    x = st.executors.get(req.executor) if req.executor is not None else None
    if x is not None:
        x.active.pop(req.request_id, None)
        _reindex(st, x)
    req.executor = None
    req.attempt += 1
    return xid


def _finish(st: State, req: RequestView, reason: FinishReason, now: float, *, prompt: int = 0, completion: int = 0,
            code: ErrorCode | None = None, message: str | None = None) -> Out:
    rid = req.request_id
    st.requests.pop(rid, None)
    st.exec_ids.pop(exec_request_id(req), None)
    x = st.executors.get(req.executor) if req.executor is not None else None
    if x is not None:
        x.active.pop(rid, None)
        x.used_at = now
        _reindex(st, x)
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


def _resend(req: RequestView) -> Out:
    """Everything the client was sent about a request; it drops what it already has (by seq)."""
    s = req.submit
    out: Out = [ToClient(req.client, RequestAccepted(request_id=s.request_id, model=s.model,
                                                     client_request_id=s.client_request_id))]
    out += [ToClient(req.client, TokensEmitted(request_id=s.request_id, seq=b.seq, token_ids=b.token_ids, text=b.text))
            for b in req.batches]
    if req.finished is not None:
        out.append(ToClient(req.client, req.finished))
    return out


def _lose(st: State, x: ExecutorView, now: float, why: str) -> Out:
    """An executor is gone: its requests migrate token-only (bounded), or fail with executor_lost."""
    x.state = "lost"
    out: Out = []
    moved: list[str] = []
    for rid in list(x.active):
        req = st.requests.get(rid)
        if req is None:
            continue
        if req.migrations < st.cfg.max_migrations:
            _detach(st, req)
            req.migrations += 1
            moved.append(rid)
        else:
            out += _finish(st, req, FinishReason.ERROR, now, completion=req.emitted, code=ErrorCode.EXECUTOR_LOST,
                           message=f"executor {x.executor_id} was lost ({why}) after {req.migrations} migrations")
    x.active.clear()
    x.to_abort = []
    x.model = None
    costmodel.idle(x.est)
    st.reserved.pop(x.executor_id, None)
    _reindex(st, x)
    _relink(st, x.link_group)
    _enqueue(st, moved, front=True)  # ahead of newer work: they were accepted first
    return out


def _unreachable(st: State, e: ev.ExecutorUnreachable) -> Out:
    x = st.executors.get(e.executor_id)
    if x is None or x.state == "lost":
        return []
    return _lose(st, x, e.at, "unreachable") + _dispatch(st, e.at)


def _tick(st: State, e: ev.Ticked) -> Out:
    now, cfg = e.at, st.cfg
    out: Out = []
    for x in list(st.executors.values()):
        if x.state in _LIVE and now - x.last_seen > cfg.heartbeat_timeout_s:
            out += _lose(st, x, now, f"no heartbeat for {now - x.last_seen:.1f} s")
    for queue in st.queues.values():
        while (req := _waiting(st, queue)) is not None and now - req.accepted_at > cfg.max_wait_s:
            queue.pop(0)
            _unqueue(st, req)
            out += _finish(st, req, FinishReason.ERROR, now, completion=req.emitted, code=ErrorCode.NO_EXECUTOR,
                           message=f"no executor became available within {cfg.max_wait_s:.0f} s")
    while st.recent:
        oldest = next(iter(st.recent.values()))
        if now - oldest.finished_at <= cfg.recent_s:
            break
        del st.recent[oldest.request_id]
    _guard_starved(st, now)
    out += _dispatch(st, now)
    return out + controller.plan(st, now)


def _recovered(st: State, e: ev.Recovered) -> Out:
    """A restarted scheduler: every executor must speak again before it gets work; every request in
    flight is re-dispatched token-only (its stale attempt aborted once its executor is heard);
    every client is re-sent what it was sent, and drops what it already has."""
    for x in st.executors.values():
        if x.state != "lost":
            x.state, x.last_seen = "unconfirmed", e.at
        _reindex(st, x)
    moved: list[str] = []
    for req in st.requests.values():
        if req.executor is None:
            continue
        x = st.executors.get(req.executor)
        stale = _detach(st, req)
        if x is not None and x.state == "unconfirmed":
            x.to_abort.append(stale)
        moved.append(req.request_id)
    _enqueue(st, moved, front=True)
    out: Out = []
    for req in list(st.requests.values()) + list(st.recent.values()):
        out += _resend(req)
    return out + _dispatch(st, e.at)


def _stopped(st: State, e: ev.Stopped) -> Out:
    out: Out = []
    for req in list(st.requests.values()):
        if req.executor is not None:
            out.append(ToExecutor(req.executor, ex_msgs.AbortRequest(request_id=exec_request_id(req))))
        out += _finish(st, req, FinishReason.ERROR, e.at, completion=req.emitted, code=ErrorCode.SHUTTING_DOWN,
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


def _executor_said(st: State, e: ev.ExecutorSaid) -> Out:
    x = st.executors.get(e.executor_id)
    if x is not None and x.state in ("ready", "draining"):
        x.last_seen = e.at
    return EXECUTOR_HANDLERS[type(e.msg)](st, e.executor_id, e.msg, e.at)


EXECUTOR_HANDLERS = {
    ex_msgs.SliceReady: _slice_ready,
    ex_msgs.TokensProduced: _tokens,
    ex_msgs.RequestCompleted: _completed,
    ex_msgs.ModelResident: _resident,
    ex_msgs.Heartbeat: _heartbeat,
    ex_msgs.StepStats: _stats,
}
EVENT_HANDLERS = {
    ev.Submitted: _submitted,
    ev.CancelAsked: _cancel,
    ev.ExecutorSaid: _executor_said,
    ev.ExecutorUnreachable: _unreachable,
    ev.Ticked: _tick,
    ev.Recovered: _recovered,
    ev.Stopped: _stopped,
    ev.PlanStepped: lambda st, e: [],  # derived: the tick that caused it computes it again
}
QUERIES = (Ping, StatusQuery, MetricsQuery)


def apply(st: State, e: ev.SchedEvent) -> tuple[State, Out]:
    """Fold one event into the state (in place) and return it with the commands to send."""
    st.applied += 1
    out = EVENT_HANDLERS[type(e)](st, e)
    metrics.observe(st, e, out)
    return st, out


def fold(st: State, events) -> State:
    """Replay: apply each event, discarding the commands (they were sent the first time)."""
    for e in events:
        apply(st, e)
    return st


def event_key(st: State, e: ev.SchedEvent) -> str | None:
    """The request an event concerns (the log's ``key`` column), or None."""
    if isinstance(e, ev.Submitted):
        return e.msg.request_id
    if isinstance(e, ev.CancelAsked):
        return e.request_id
    if isinstance(e, ev.ExecutorSaid):
        xid = getattr(e.msg, "request_id", None)
        return None if xid is None else st.exec_ids.get(xid, xid)
    return None

