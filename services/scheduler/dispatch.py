"""Dispatch (late binding): waiting requests take free capacity as it appears — a running batch's
free slot takes the oldest waiting request of its model, an idle executor the first waiting
request in class order, each placed where its estimated TTFT is lowest (placement.py) — and the
starvation guard, which holds an executor for a request that waited too long for a model no
executor runs. An assignment from idle starts the batch's plan (controller.start).
"""

from __future__ import annotations

from c2cq.schemas import executor as ex_msgs
from c2cq.services.scheduler import controller, kvroom
from c2cq.services.scheduler.admission import first_waiting, unqueue
from c2cq.services.scheduler.indexes import reindex
from c2cq.services.scheduler.placement import choose_executor
from c2cq.services.scheduler.state import (
    CLASSES,
    Command,
    ExecutorView,
    RequestView,
    State,
    ToExecutor,
    exec_request_id,
)

Out = list[Command]


def place(st: State, req: RequestView, x: ExecutorView, now: float) -> Out:
    unqueue(st, req)
    kvroom.placed(x, req)
    return assign(st, req, x, now)


def place_new(st: State, req: RequestView, now: float, choice: tuple | None = None) -> Out:
    """A new request starts at once where its estimated TTFT is lowest, if an executor can take it
    (one idle, or one running its model with a free slot); else it waits its turn. ``choice``:
    choose_executor's answer for it on this state, if admission worked it out already."""
    x, _ = choose_executor(st, req) if choice is None else choice
    return [] if x is None else place(st, req, x, now)


def dispatch(st: State, now: float, touched=None) -> Out:
    """Fill free capacity from the waiting requests (late binding). A batch with a free slot takes
    the oldest waiting requests of its model; idle executors take the waiting requests in class
    order, each placed where its estimated TTFT is lowest. ``touched``: the only executors whose
    capacity changed (None: any may have), so a completion looks at its own executor, not at all.
    Work is proportional to what is placed, not to how many wait or how many executors there are."""
    out: Out = []
    if st.reserved:
        touched = serve_reserved(st, now, out, touched)
    for x in (st.executors.values() if touched is None else touched):
        fill(st, x, now, out)
    started: list[ExecutorView] = []  # idle executors that took a request: their batches may take more
    for k in CLASSES:
        q = st.queues.get(k)
        passed: list[str] = []  # no idle executor's host has its model published: they keep their turn
        while st.idle and q:
            req = first_waiting(st, q)
            if req is None:
                break
            x, _ = choose_executor(st, req)
            if x is None:
                passed.append(q.pop(0))
                continue
            q.pop(0)
            if x.in_idle:
                started.append(x)
            out += place(st, req, x, now)
        if passed:
            q[:0] = passed
    for x in started:
        fill(st, x, now, out)
    return out


def serve_reserved(st: State, now: float, out: Out, touched):
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
            first = next(starving(st, now), None) or (req if waiting else None)
            if first is not None:
                out += place(st, first, x, now)
                released.append(x)
                continue
        reindex(st, x)
        released.append(x)
    if touched is None or not released:
        return touched
    return tuple(touched) + tuple(released)


def starving(st: State, now: float):
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


def guard_starved(st: State, now: float) -> None:
    """Bound how long a waiting request starves while busy executors keep taking work of the
    models they run: hold the executor expected to drain first for each starving request — it
    takes no new work and, once idle, serves the longest-starved request. At most
    ``starve_reserve_share`` of the ready executors are held at once, so the rest keep serving."""
    ready = sum(1 for x in st.executors.values() if x.state == "ready")
    room = max(1, int(ready * st.cfg.starve_reserve_share)) - len(st.reserved)
    if room <= 0 or not any(st.queued.values()):
        return
    held = set(st.reserved.values())
    to_hold: list[RequestView] = []
    for req in starving(st, now):
        if req.request_id not in held:
            to_hold.append(req)
            if len(to_hold) >= room:
                break
    if not to_hold:
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
    for req, (_, eid) in zip(to_hold, drain):
        st.reserved[eid] = req.request_id
        reindex(st, st.executors[eid])


def fill(st: State, x: ExecutorView, now: float, out: Out) -> None:
    """A running batch with free slots takes the oldest waiting requests of its model."""
    if x.serving_model is None:  # not ready, reserved, idle, or nothing to run
        return
    q = st.by_model.get(x.model)
    while q and len(x.active) < x.max_batch:
        req = first_waiting(st, q)
        if req is None or not kvroom.has_room(x, req):
            break  # no KV room: it waits (for another slice, or for room here: executor_inputs.step_stats)
        q.pop(0)
        out += place(st, req, x, now)


def assign(st: State, req: RequestView, x: ExecutorView, now: float) -> Out:
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
    reindex(st, x)
    msg = ex_msgs.AssignRequest(request_id=xid, model=s.model, prompt=s.prompt, prompt_token_ids=s.prompt_token_ids,
                                max_tokens=s.max_tokens, sampling=s.sampling, resume_token_ids=req.token_ids(),
                                slo=ex_msgs.SLO(ttft_ms=s.slo.ttft_ms or st.cfg.default_ttft_ms,
                                                tpot_ms=s.slo.tpot_ms or st.cfg.default_tpot_ms),
                                waited_ms=(now - req.accepted_at) * 1e3)
    out: Out = [ToExecutor(x.executor_id, msg)]
    if fresh:
        out += controller.start(st, x, req, now, switching)
    return out
