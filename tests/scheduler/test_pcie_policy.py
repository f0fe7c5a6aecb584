"""Placement on slow shared links: a switch goes where the link is free (a sibling that copies or
streams takes an equal share of it), and evicts the model cheapest to lose (demand × bytes)."""

from __future__ import annotations

from c2cq.schemas import executor as m
from c2cq.services.scheduler import core
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.state import State

from .history import S, completed, submit
from .test_eviction import assigns


def slice_ready(eid: str, group: str, at: float = 0.0, max_batch: int = 8) -> ev.ExecutorSaid:
    return ev.ExecutorSaid(at=at, executor_id=eid, msg=S(eid, m.SliceReady, executor_id=eid, boot_id="b0", backend="sim",
                                                       device=f"{group}/{eid}", link_group=group,
                                                       memory_budget_bytes=10 * 2**30, link_bandwidth_bps=50e9,
                                                       max_batch=max_batch))


def test_a_switch_avoids_the_link_a_sibling_reads_over():
    st = State()
    for eid, group in (("e0", "gpu0"), ("e1", "gpu0"), ("e2", "gpu1")):
        core.apply(st, slice_ready(eid, group))
    _, out = core.apply(st, submit("r1", 1.0, model="m-a"))
    assert assigns(out) == [("e0", "r1", "m-a")]
    assert st.links["gpu0"].busy == 1  # e0 serves at α = 0: it streams and copies over gpu0's link
    _, out = core.apply(st, submit("r2", 1.1, model="m-b"))
    assert assigns(out) == [("e2", "r2", "m-b")]  # e1 would share gpu0's link with e0; e2 has its own
    core.apply(st, completed("e0", "r1", 8, 1.5))
    assert st.links["gpu0"].busy == 0


def test_a_switch_evicts_the_model_cheapest_to_lose_not_the_least_recent():
    st = State()
    for eid in ("e0", "e1"):
        core.apply(st, slice_ready(eid, f"gpu-{eid}"))
    for k, at in enumerate((1.0, 1.1, 1.2)):  # m-a is asked for three times, on e0
        _, out = core.apply(st, submit(f"a{k}", at, model="m-a"))
        assert [a[0] for a in assigns(out)] == ["e0"]
    for k in range(3):
        core.apply(st, completed("e0", f"a{k}", 8, 4.0))
    _, out = core.apply(st, submit("b0", 5.0, model="m-b"))  # once, on e1 (which held nothing)
    assert assigns(out) == [("e1", "b0", "m-b")]
    core.apply(st, completed("e1", "b0", 8, 6.0))
    # e0's m-a was used least recently (4.0 < 6.0) but is wanted three times more: m-b goes
    _, out = core.apply(st, submit("c0", 7.0, model="m-c"))
    assert assigns(out) == [("e1", "c0", "m-c")]
    assert st.executors["e0"].model == "m-a"
