"""The supervisor's restart policy: exponential back-off, capped, and "failed" after too many in the window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from c2cq.supervisor.policy import RestartHistory, RestartPolicy

P = RestartPolicy(max_restarts=5, window_s=60.0, backoff_initial_s=0.2, backoff_max_s=5.0)


def test_back_off_doubles_then_fails_after_max_restarts_in_the_window():
    h = RestartHistory()
    delays = [h.decide(P, now=100.0 + i) for i in range(6)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, None]


def test_back_off_is_capped():
    p = RestartPolicy(max_restarts=20, window_s=1000.0, backoff_initial_s=1.0, backoff_max_s=5.0)
    h = RestartHistory()
    delays = [h.decide(p, now=float(i)) for i in range(10)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]


def test_restarts_outside_the_window_are_forgotten():
    h = RestartHistory()
    for i in range(4):
        h.decide(P, now=float(i))
    # 60 s after the first four, the slate is clean: back to the initial back-off
    assert h.decide(P, now=3.0 + 60.0) == 0.2
    assert h.times == [63.0]


def test_the_window_slides():
    h = RestartHistory()
    assert [h.decide(P, now=t) for t in (0.0, 10.0, 20.0, 30.0, 40.0)] == [0.2, 0.4, 0.8, 1.6, 3.2]
    assert h.decide(P, now=59.0) is None  # six crashes within 60 s
    # at t=60 the crash at t=0 leaves the window: four remain, so this one is the fifth
    assert h.decide(P, now=60.0) == 3.2


def test_a_failed_decision_records_nothing():
    h = RestartHistory()
    for i in range(5):
        h.decide(P, now=float(i))
    before = list(h.times)
    assert h.decide(P, now=5.0) is None
    assert h.times == before


def test_zero_restarts_allowed_fails_at_once():
    assert RestartHistory().decide(RestartPolicy(max_restarts=0), now=0.0) is None


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.floats(0.0, 30.0), min_size=1, max_size=40),
       st.integers(0, 8), st.floats(1.0, 120.0), st.floats(0.01, 2.0), st.floats(0.01, 10.0))
def test_never_more_than_max_restarts_in_any_window(gaps, max_restarts, window, initial, cap):
    p = RestartPolicy(max_restarts=max_restarts, window_s=window, backoff_initial_s=initial, backoff_max_s=cap)
    h, now, granted = RestartHistory(), 0.0, []
    for g in gaps:
        now += g
        d = h.decide(p, now)
        if d is not None:
            assert min(initial, cap) <= d <= cap
            granted.append(now)
    for t in granted:
        assert sum(t <= u < t + window for u in granted) <= max_restarts
