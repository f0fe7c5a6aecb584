"""The scheduler's pure core: ``apply(state, event) -> (state, commands)``, a fold over its log.

Every input that changes the state is a SchedulerEvent (events.py) carrying the time it arrived;
``apply`` folds one into the state (mutated in place and returned: the caller owns it) and
returns the commands to send. No sockets, no clocks, no randomness: replaying the same events
into a fresh state gives the same state and the same commands. Read-only queries (Ping,
StatusQuery) go through ``query`` and are not logged.

This module is the single entry: the type → handler tables below. The handlers live by what they
answer, each module one idea:

- client_inputs.py   Submitted, CancelAsked; the read-only queries
- executor_inputs.py what executors say: SliceReady, TokensProduced, RequestCompleted,
                     ModelResident, Heartbeat, StepStats
- hosts.py           HostReported: which models each node's host has published (many hosts)
- endings.py         finish, detach, migrate from a lost executor; ExecutorUnreachable,
                     Recovered, Stopped
- tick.py            Ticked: timeouts, expiry, the starvation guard, dispatch, the plan
- dispatch.py        late binding of waiting requests to free capacity; the starvation guard
- admission.py       SLO classes, admission, the waiting queues
- indexes.py         the placement indexes (idle, serving, link loads)
- placement.py, controller.py, costmodel.py: where a request goes, the per-executor plan, the
  cost model (levels 1-3)
"""

from __future__ import annotations

from c2cq.schemas import executor as ex_msgs
from c2cq.schemas.client import MetricsQuery, Ping, StatusQuery
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler import metrics
from c2cq.services.scheduler.admission import slo_class
from c2cq.services.scheduler.client_inputs import cancel, query, submitted
from c2cq.services.scheduler.endings import recovered, stopped, unreachable
from c2cq.services.scheduler.executor_inputs import (
    heartbeat,
    model_resident,
    request_completed,
    slice_ready,
    step_stats,
    tokens_produced,
)
from c2cq.services.scheduler.hosts import host_reported
from c2cq.services.scheduler.indexes import check_indexes, rebuild_indexes
from c2cq.services.scheduler.placement import choose_executor
from c2cq.services.scheduler.state import Command, RequestView, State
from c2cq.services.scheduler.tick import tick

__all__ = ["EVENT_HANDLERS", "EXECUTOR_HANDLERS", "QUERIES", "RequestView", "apply", "check_indexes",
           "choose_executor", "event_key", "fold", "query", "rebuild_indexes", "slo_class"]

Out = list[Command]


def _executor_said(st: State, e: ev.ExecutorSaid) -> Out:
    x = st.executors.get(e.executor_id)
    if x is not None and x.state in ("ready", "draining"):
        x.last_seen = e.at
    out = EXECUTOR_HANDLERS[type(e.msg)](st, e.executor_id, e.msg, e.at)
    x = st.executors.get(e.executor_id)
    if e.peer_key and x is not None:  # its registration (a SliceReady over CURVE): the key it is known by
        x.peer_key = e.peer_key
    return out


EXECUTOR_HANDLERS = {
    ex_msgs.SliceReady: slice_ready,
    ex_msgs.TokensProduced: tokens_produced,
    ex_msgs.RequestCompleted: request_completed,
    ex_msgs.ModelResident: model_resident,
    ex_msgs.Heartbeat: heartbeat,
    ex_msgs.StepStats: step_stats,
}
EVENT_HANDLERS = {
    ev.Submitted: submitted,
    ev.CancelAsked: cancel,
    ev.ExecutorSaid: _executor_said,
    ev.ExecutorUnreachable: unreachable,
    ev.Ticked: tick,
    ev.Recovered: recovered,
    ev.Stopped: stopped,
    ev.PlanStepped: lambda st, e: [],  # derived: the tick that caused it computes it again
    ev.HostReported: host_reported,
}
QUERIES = (Ping, StatusQuery, MetricsQuery)


def apply(st: State, e: ev.SchedEvent) -> tuple[State, Out]:
    """Fold one event into the state (in place) and return it with the commands to send."""
    out = decide(st, e)
    metrics.observe(st, e, out)
    return st, out


def decide(st: State, e: ev.SchedEvent) -> Out:
    """``apply`` without folding the event into ``st.metrics`` (what /metrics serves; no decision reads
    them): the simulator's fold, which serves no metrics (the same commands, the same state but those)."""
    st.applied += 1
    return EVENT_HANDLERS[type(e)](st, e)


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
