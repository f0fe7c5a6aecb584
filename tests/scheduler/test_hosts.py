"""History tests: models on many hosts. A request goes only to a host whose catalog has its model
published; a host still publishing it counts as a startup cost; a request no host can take waits
without holding up the others of its class; with no reports (one host) nothing changes."""

from __future__ import annotations

from c2cq.schemas import executor as m
from c2cq.services.scheduler import core
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.state import State

from .history import MODELS, S, of, submit


def ready(eid: str, host: str, at: float = 0.0) -> ev.ExecutorSaid:
    return ev.ExecutorSaid(at=at, executor_id=eid, msg=S(eid, m.SliceReady, executor_id=eid, boot_id="b0",
                                                       backend="sim", device="sim:0", memory_budget_bytes=10 * 2**30,
                                                       link_bandwidth_bps=55e9, max_batch=64, link_group="host",
                                                       host=host))


def report(host: str, at: float, published=(), publishing=()) -> ev.HostReported:
    return ev.HostReported(at=at, host=host, published=tuple(published), publishing=tuple(publishing))


def run(events) -> tuple[State, list]:
    st, out = State(), []
    for e in events:
        out += core.apply(st, e)[1]
    return st, out


def placed(out) -> dict[str, str]:
    """request id → the executor it was assigned to."""
    return {a.request_id: c.executor_id for c in out for a in [c.msg] if isinstance(a, m.AssignRequest)}


def test_a_request_goes_only_where_its_model_is_published():
    # a-exec would win the tie on its id; its host has not published m-a
    st, out = run([ready("a-exec", "h1"), ready("b-exec", "h2"), report("h1", 0.1, published=["m-b"]),
                   report("h2", 0.1, published=["m-a"]), submit("r1", 0.2, "m-a"), submit("r2", 0.3, "m-b")])
    assert placed(out) == {"r1": "b-exec", "r2": "a-exec"}
    assert {x.executor_id: x.link_group for x in st.executors.values()} == {"a-exec": "h1:host", "b-exec": "h2:host"}


def test_link_groups_stay_per_host():
    st, _ = run([ready("a-exec", "h1"), ready("b-exec", "h2"), ready("c-exec", "h2")])
    assert st.groups == {"h1:host": ["a-exec"], "h2:host": ["b-exec", "c-exec"]}


def test_a_host_still_publishing_is_a_startup_cost_not_a_refusal():
    both = [ready("a-exec", "h1"), ready("b-exec", "h2"), report("h1", 0.1, publishing=["m-a"]),
            report("h2", 0.1, published=["m-a"])]
    _, out = run([*both, submit("r1", 0.2, "m-a")])
    assert placed(out) == {"r1": "b-exec"}  # published beats publishing
    # b-exec busy with another model: the publishing host takes it rather than leave it waiting
    _, out = run([*both, report("h2", 0.1, published=["m-a", "m-b"]), submit("r0", 0.15, "m-b"),
                  submit("r1", 0.2, "m-a")])
    assert placed(out) == {"r0": "b-exec", "r1": "a-exec"}


def test_a_request_no_host_can_take_waits_and_lets_the_others_of_its_class_by():
    st, out = run([ready("a-exec", "h1"), report("h1", 0.1, published=["m-b"]), submit("r1", 0.2, "m-a"),
                   submit("r2", 0.3, "m-b"), ev.Ticked(at=0.5)])
    assert placed(out) == {"r2": "a-exec"}
    assert st.requests["r1"].executor is None and st.waiting() == 1
    # the host publishes m-a later; once a-exec is free, r1 goes there
    st2, out2 = run([ready("a-exec", "h1"), ready("c-exec", "h1"), report("h1", 0.1, published=["m-b"]),
                     submit("r1", 0.2, "m-a"), report("h1", 1.0, published=["m-b", "m-a"]), ev.Ticked(at=1.25)])
    assert placed(out2) == {"r1": "a-exec"}


def test_one_host_without_reports_places_as_before():
    _, out = run([ready("a-exec", ""), ready("b-exec", ""), submit("r1", 0.2, "m-a")])
    assert placed(out) == {"r1": "a-exec"}
    assert of(out, m.AssignRequest)[0].model == "m-a" and "m-a" in MODELS
