"""Sustained overload: submissions far above capacity for a long (virtual) time. Every request is
answered at once — accepted or rejected with a reason — and the state stays bounded (memory flat)."""

from __future__ import annotations

from c2cq.schemas.client import RequestAccepted, RequestRejected
from c2cq.schemas.executor import AssignRequest
from c2cq.services.scheduler import core
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.state import State, ToExecutor

from .history import completed, of, ready, submit


def sizes(st: State) -> int:
    return len(st.requests) + len(st.recent) + sum(len(q) for q in st.queues.values())


def test_state_stays_bounded_under_sustained_overload():
    st = State()
    for i in range(2):
        core.apply(st, ready(f"e{i}", 0.0))
    running: list[tuple[str, str]] = []
    answered = rejected = 0
    at_third = peak_after = 0
    t = 1.0
    n = 30_000
    for k in range(n):  # 1,000 submissions per virtual second; the two slices finish ~20/s
        t += 1e-3
        _, cmds = core.apply(st, submit(f"r{k}", t, model=("m-a", "m-b", "m-c")[k % 3]))
        answered += len(of(cmds, RequestAccepted)) + len(of(cmds, RequestRejected))
        rejected += len(of(cmds, RequestRejected))
        running += [(c.executor_id, c.msg.request_id) for c in cmds
                    if isinstance(c, ToExecutor) and isinstance(c.msg, AssignRequest)]
        if k % 50 == 0:  # an executor finishes its oldest request now and then
            if running:
                eid, xid = running.pop(0)
                _, more = core.apply(st, completed(eid, xid, 8, t))
                running += [(c.executor_id, c.msg.request_id) for c in more
                            if isinstance(c, ToExecutor) and isinstance(c.msg, AssignRequest)]
            core.apply(st, ev.Ticked(at=t))
        if k == n // 3:
            at_third = sizes(st)
        elif k > n // 3:
            peak_after = max(peak_after, sizes(st))
    assert answered == n, "every submission is answered at once (accepted or rejected), none left to time out"
    assert rejected > n // 2
    # queues full by a third of the run; from then on nothing grows but the remembered finished
    # requests (a handful here): flat, and under the configured bound
    bound = st.cfg.limits.max_waiting + st.cfg.recent_max + 2 * 64  # queues + remembered + in flight
    print(f"state size at a third of the run {at_third}, peak after {peak_after}, rejected {rejected}")
    assert at_third > 0 and peak_after <= at_third + 100, (at_third, peak_after)
    assert peak_after <= bound
