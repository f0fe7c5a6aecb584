"""The durable log: events survive a reopen; snapshot + tail equals a full replay."""

from __future__ import annotations

import sqlite3

from c2cq.services.scheduler import core
from c2cq.services.scheduler.journal import Journal
from c2cq.services.scheduler.state import Config, State, decode_state, encode_state

from .test_core_history import history, starvation_history


def write(path, events, snapshot_at: int | None = None, every: int = 10**9) -> State:
    j = Journal(path, snapshot_every=every)
    st = State()
    for i, e in enumerate(events):
        j.append(st, [e])  # appended before it is applied, as the shell does
        core.apply(st, e)
        if snapshot_at is not None and i + 1 == snapshot_at:
            assert j.maybe_snapshot(st, force=True)
    j.close()
    return st


def test_reopen_replays_to_the_same_state(tmp_path):
    live = write(tmp_path / "a.db", history())
    for _ in range(2):  # twice: a replay must not change the log
        j = Journal(tmp_path / "a.db")
        st, n = j.load(Config())
        j.close()
        assert n == len(history())
        assert encode_state(st) == encode_state(live)


def test_snapshot_bounds_the_replay(tmp_path):
    live = write(tmp_path / "b.db", history(), snapshot_at=9)
    j = Journal(tmp_path / "b.db")
    st, n = j.load(Config())
    assert n == len(history()) - 9
    assert encode_state(st) == encode_state(live)


def test_the_log_is_auditable_and_keyed_by_request(tmp_path):
    write(tmp_path / "c.db", history())
    db = sqlite3.connect(tmp_path / "c.db")
    kinds = [k for (k,) in db.execute("select kind from events order by id")]
    assert kinds[:3] == ["executor_said", "executor_said", "submitted"]
    # the second attempt's executor-side id ("r1~1") is filed under the request's own id
    r1 = [k for (k,) in db.execute("select kind from events where key = 'r1' order by id")]
    assert r1 == ["submitted", "executor_said", "executor_said"]


def test_a_torn_tail_loses_only_the_uncommitted_batch(tmp_path):
    path = tmp_path / "d.db"
    write(path, history()[:5])
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("begin")
    db.execute("insert into events(ts_ns, kind, key, body) values (0, 'submitted', 'x', x'00')")
    db.close()  # closed without commit, as a crash mid-transaction would leave it
    j = Journal(path)
    st, n = j.load(Config())
    assert n == 5 and set(st.requests) == {"r1", "r2"}


def test_snapshot_plus_tail_equals_full_replay_with_held_executors(tmp_path):
    """The placement indexes and starvation holds are state too: a snapshot taken anywhere (while
    an executor is held, too), plus the tail, gives exactly the state of a full replay."""
    cfg = Config(starve_after_s=2.0)
    events = starvation_history()
    full = encode_state(core.fold(State(cfg=cfg), events))
    held_cuts = 0
    for cut in range(1, len(events), 3):
        j = Journal(tmp_path / f"s{cut}.db", snapshot_every=10**9)
        st = State(cfg=cfg)
        for i, e in enumerate(events):
            j.append(st, [e])
            core.apply(st, e)
            if i + 1 == cut:
                j.maybe_snapshot(st, force=True)
                held_cuts += bool(st.reserved)
        j.close()
        j = Journal(tmp_path / f"s{cut}.db")
        again, n = j.load(cfg)
        j.close()
        assert n == len(events) - cut and encode_state(again) == full
    assert held_cuts >= 2  # the premise: some snapshots were taken while an executor was held


def test_a_snapshot_without_indexes_is_rebuilt(tmp_path):
    """A snapshot written before the placement indexes existed loads with them rebuilt."""
    cfg = Config(starve_after_s=2.0)
    events = starvation_history()
    st = core.fold(State(cfg=cfg), events[:10])
    bare = encode_state(st)
    st2 = decode_state(bare, cfg)
    st2.idle, st2.serving, st2.links = {}, {}, {}
    for x in st2.executors.values():
        x.in_idle, x.serving_model = False, None
    fixed = core.check_indexes(st2)
    assert encode_state(fixed) == bare
