"""What the passing of time does (the shell's Ticked): executors silent past the heartbeat timeout
are lost, requests that waited past ``max_wait_s`` fail, finished requests older than
``recent_s`` are forgotten; then the starvation guard, a dispatch, and the controller's plan.
"""

from __future__ import annotations

from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.services.scheduler import controller
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.admission import first_waiting, unqueue
from c2cq.services.scheduler.dispatch import dispatch, guard_starved
from c2cq.services.scheduler.endings import finish, lose
from c2cq.services.scheduler.state import Command, State

Out = list[Command]
_LIVE = ("ready", "draining", "unconfirmed")


def tick(st: State, e: ev.Ticked) -> Out:
    now, cfg = e.at, st.cfg
    out: Out = []
    for x in list(st.executors.values()):
        if x.state in _LIVE and now - x.last_seen > cfg.heartbeat_timeout_s:
            out += lose(st, x, now, f"no heartbeat for {now - x.last_seen:.1f} s")
    for queue in st.queues.values():
        while (req := first_waiting(st, queue)) is not None and now - req.accepted_at > cfg.max_wait_s:
            queue.pop(0)
            unqueue(st, req)
            out += finish(st, req, FinishReason.ERROR, now, completion=req.emitted, code=ErrorCode.NO_EXECUTOR,
                           message=f"no executor became available within {cfg.max_wait_s:.0f} s")
    while st.recent:
        oldest = next(iter(st.recent.values()))
        if now - oldest.finished_at <= cfg.recent_s:
            break
        del st.recent[oldest.request_id]
    guard_starved(st, now)
    out += dispatch(st, now)
    return out + controller.plan(st, now)
