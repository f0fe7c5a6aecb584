"""The placement indexes: where placement finds its candidates and a link's load.

Placement reads its candidates from ``st.idle`` and ``st.serving`` and a link's load from
``st.links``; every step that changes an executor's state, batch, model or reservation calls
``reindex`` (which also counts the members reading over the link), and every step that changes
a member's link figures calls ``relink``. Both are pure functions of
the state, so a replay (or a snapshot plus its tail) rebuilds the same indexes.
"""

from __future__ import annotations

import msgspec

from c2cq.services.scheduler.state import ExecutorView, LinkLoad, State


def reindex(st: State, x: ExecutorView) -> None:
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
    on = _on_link(x)
    if x.on_link != on:  # a count, so a difference is exact (relink recounts it from the members)
        x.on_link = on
        link = st.links.get(x.link_group)
        if link is not None:
            link.busy += 1 if on else -1


def _on_link(x: ExecutorView) -> bool:
    """x reads over its link at every step: it serves, and not all of its model is in HBM."""
    return x.state == "ready" and bool(x.active) and x.alpha < 1.0


def relink(st: State, group: str) -> None:
    """Recompute one link's capacity and load from its live members (sums, never differences)."""
    cap, used, n, busy = 0.0, 0.0, 0, 0
    executors = st.executors
    for eid in st.groups.get(group, ()):  # it runs at every StepStats: _on_link and max() inlined
        y = executors.get(eid)
        if y is None:
            continue
        state = y.state
        y.on_link = on = state == "ready" and bool(y.active) and y.alpha < 1.0
        if state == "lost":
            continue
        est = y.est
        if est.link_bps > cap:
            cap = est.link_bps
        used += est.link_used_bps
        n += 1
        busy += on
    if not n:
        st.links.pop(group, None)
        return
    link = st.links.get(group)
    if link is None:
        st.links[group] = LinkLoad(cap_bps=cap, used_bps=used, busy=busy)
    else:
        link.cap_bps, link.used_bps, link.busy = cap, used, busy


def check_indexes(st: State) -> State:
    """After loading a snapshot: rebuild the indexes if they do not match the executors (a snapshot
    written by a version without them); a consistent snapshot is left exactly as it was."""
    probe = State(cfg=st.cfg, executors={}, groups=st.groups, reserved=st.reserved)
    for eid, x in st.executors.items():
        y = msgspec.structs.replace(x, in_idle=False, serving_model=None)
        probe.executors[eid] = y
        reindex(probe, y)
        if (y.in_idle, y.serving_model) != (x.in_idle, x.serving_model):
            return rebuild_indexes(st)
    for group in st.groups:
        relink(probe, group)
    if set(probe.idle) != set(st.idle) or {m: set(v) for m, v in probe.serving.items()} != {
            m: set(v) for m, v in st.serving.items()} or probe.links.keys() != st.links.keys() or any(
            probe.links[g].busy != st.links[g].busy for g in st.links):
        return rebuild_indexes(st)
    return st


def rebuild_indexes(st: State) -> State:
    """Recompute every placement index from the executors (a snapshot written before they existed)."""
    st.idle, st.serving, st.links = {}, {}, {}
    for x in st.executors.values():
        x.in_idle, x.serving_model = False, None
        reindex(st, x)
    for group in st.groups:
        relink(st, group)
    return st
