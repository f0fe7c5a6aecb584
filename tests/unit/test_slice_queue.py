"""SliceQueue: one model at a time on a slice; other models wait, FIFO, until the backend is idle."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from c2cq.schemas.executor import AssignRequest
from c2cq.services.executor.slice import SliceQueue


def req(rid: str, model: str) -> AssignRequest:
    return AssignRequest(request_id=rid, model=model, prompt="p", max_tokens=4)


def ids(reqs) -> list[str]:
    return [r.request_id for r in reqs]


def test_a_fresh_slice_waits_for_a_switch_then_serves_the_model():
    q = SliceQueue()
    assert q.admit(req("a1", "A")) is False  # no model yet: it waits for the switch
    assert q.running == set()
    model, take = q.next_switch()
    assert (model, ids(take)) == ("A", ["a1"])
    assert q.model == "A" and q.running == {"a1"}
    assert q.admit(req("a2", "A")) is True  # same model: straight into the running batch
    assert q.running == {"a1", "a2"}


def test_other_models_wait_and_no_switch_while_anything_runs():
    q = SliceQueue(model="A")
    assert q.admit(req("a1", "A"))
    assert q.admit(req("b1", "B")) is False
    assert q.next_switch() is None  # a1 still runs: the slice serves one model at a time
    assert q.model == "A"
    assert q.remove("a1") == "running"
    model, take = q.next_switch()
    assert (model, ids(take), q.model, q.running) == ("B", ["b1"], "B", {"b1"})


def test_fifo_by_first_waiting_request_and_within_each_model():
    q = SliceQueue(model="X")
    q.running.add("x0")
    for rid, model in [("b1", "B"), ("a1", "A"), ("b2", "B"), ("c1", "C"), ("a2", "A"), ("b3", "B")]:
        assert q.admit(req(rid, model)) is False
    q.remove("x0")
    order = []
    while (nxt := q.next_switch()) is not None:
        model, take = nxt
        order.append((model, ids(take)))
        assert q.running == set(ids(take))
        for r in take:
            q.remove(r.request_id)
    assert order == [("B", ["b1", "b2", "b3"]), ("A", ["a1", "a2"]), ("C", ["c1"])]
    assert not q.pending


def test_remove_says_where_the_request_was():
    q = SliceQueue(model="A")
    q.admit(req("a1", "A"))
    q.admit(req("b1", "B"))
    q.admit(req("b2", "B"))
    assert q.remove("b1") == "pending"
    assert q.remove("a1") == "running"
    assert q.remove("zz") == "unknown"
    assert q.remove("a1") == "unknown"  # removing twice is harmless
    assert q.remove("b1") == "unknown"
    assert ids(q.pending) == ["b2"] and q.running == set()


def test_nothing_to_switch_to_when_idle_and_empty():
    q = SliceQueue(model="A")
    assert q.next_switch() is None
    assert q.model == "A"


def test_a_removed_pending_request_is_not_switched_to():
    q = SliceQueue(model="A")
    q.admit(req("a1", "A"))
    q.admit(req("b1", "B"))
    q.admit(req("c1", "C"))
    q.remove("b1")
    q.remove("a1")
    model, take = q.next_switch()
    assert (model, ids(take)) == ("C", ["c1"])


ops = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.sampled_from("ABC")),
        st.tuples(st.just("remove"), st.integers(0, 30)),
        st.tuples(st.just("switch"), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, database=None)
@given(ops)
def test_invariants_under_any_sequence(seq):
    """Every admitted request is in exactly one place, running ones all belong to q.model, order is kept."""
    q, model_of, arrival, gone, n = SliceQueue(), {}, {}, set(), 0
    for op, arg in seq:
        if op == "admit":
            rid = f"r{n}"
            arrival[rid] = n
            n += 1
            model_of[rid] = arg
            now = q.admit(req(rid, arg))
            assert now == (arg == q.model)
        elif op == "remove":
            rid = f"r{arg}"
            where = q.remove(rid)
            assert (where == "unknown") == (rid not in model_of or rid in gone)
            if rid in model_of:
                gone.add(rid)
        else:
            before_model, before_running = q.model, set(q.running)
            first_pending = q.pending[0] if q.pending else None
            nxt = q.next_switch()
            if before_running or first_pending is None:
                assert nxt is None and q.model == before_model
            else:
                model, take = nxt
                assert model == first_pending.model == q.model
                assert [arrival[r] for r in ids(take)] == sorted(arrival[r] for r in ids(take))
        pending = ids(q.pending)
        assert len(pending) == len(set(pending)) and not set(pending) & q.running
        assert set(pending) | q.running == set(model_of) - gone
        assert all(model_of[r] == q.model for r in q.running)
        assert [arrival[r] for r in pending] == sorted(arrival[r] for r in pending)
