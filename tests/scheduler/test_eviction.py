"""A switch never evicts a model that has requests in flight on that slice: a request of another
model waits for the slice to drain (or goes elsewhere), both in a recorded history and in every
state of a recorded simulator log."""

from __future__ import annotations

from c2cq.schemas import executor as m
from c2cq.services.scheduler import core
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.state import State, ToExecutor

from .history import C1, S, completed, ready, submit
from .replay import read_log


def assigns(cmds) -> list[tuple[str, str, str]]:
    return [(c.executor_id, c.msg.request_id, c.msg.model) for c in cmds
            if isinstance(c, ToExecutor) and isinstance(c.msg, m.AssignRequest)]


def test_a_request_of_another_model_waits_for_the_busy_slice_to_drain():
    st = State()
    core.apply(st, ready("e0", 0.0))
    _, out = core.apply(st, submit("r1", 1.0, model="m-a", max_tokens=4))
    assert assigns(out) == [("e0", "r1", "m-a")]
    _, out = core.apply(st, submit("r2", 1.1, model="m-b"))
    assert assigns(out) == []  # e0 holds m-a with r1 in flight: no switch under it
    assert st.executors["e0"].model == "m-a" and list(st.executors["e0"].active) == ["r1"]
    _, out = core.apply(st, submit("r3", 1.2, model="m-a"))
    assert assigns(out) == [("e0", "r3", "m-a")]  # its own model joins the batch
    core.apply(st, completed("e0", "r1", 4, 1.5))
    assert st.executors["e0"].model == "m-a"  # r3 is still in flight: m-b still waits
    _, out = core.apply(st, completed("e0", "r3", 8, 1.6))
    assert assigns(out) == [("e0", "r2", "m-b")]  # drained: now it switches
    assert st.executors["e0"].model == "m-b"


def test_a_stale_model_resident_does_not_let_another_model_into_the_batch():
    """e0 is given r1 (m-a); r1 is cancelled and e0, idle again, is given r2 (m-b); then e0's
    report of the m-a switch arrives. The scheduler keeps m-b for e0 (r2 is in flight there), so a
    new m-a request does not join r2's batch (it would wait behind it on the slice)."""
    st = State()
    core.apply(st, ready("e0", 0.0))
    core.apply(st, submit("r1", 1.0, model="m-a"))
    core.apply(st, ev.CancelAsked(at=1.1, client=C1, request_id="r1"))
    _, out = core.apply(st, submit("r2", 1.2, model="m-b"))
    assert assigns(out) == [("e0", "r2", "m-b")]
    stale = S("e0", m.ModelResident, model="m-a", alpha=0.0, bytes_resident=0, switched_s=0.3)
    core.apply(st, ev.ExecutorSaid(at=1.3, executor_id="e0", msg=stale))
    x = st.executors["e0"]
    assert x.model == "m-b" and x.est.switch_s == 0.3  # the switch time is still a measurement
    _, out = core.apply(st, submit("r3", 1.4, model="m-a"))
    assert assigns(out) == []
    _, out = core.apply(st, completed("e0", "r2", 8, 1.5))
    assert assigns(out) == [("e0", "r3", "m-a")]


def test_no_assignment_of_a_recorded_run_puts_a_second_model_in_flight_on_a_slice():
    """Every AssignRequest of the recorded log's fold: the other requests in flight on that slice
    (the scheduler's view) are of the same model — a slice switches only once drained."""
    st = State()
    switches = 0
    for e in read_log():
        before = {eid: x.model for eid, x in st.executors.items()}
        _, out = core.apply(st, e)
        for eid, rid, model in assigns(out):
            others = [r for r in st.executors[eid].active if r != rid]
            assert all(st.requests[r].submit.model == model for r in others), (e.at, eid, rid)
            switches += before.get(eid) not in (None, model)
    assert switches > 20  # the log does switch models, often
