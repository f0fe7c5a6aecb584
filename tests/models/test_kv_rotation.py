"""The per-step KV rotation policy: each rule, the per-step bound, and accounting under random load."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c2cq.errors import ConfigError
from c2cq.services.executor.rotation import (
    Decision, FreeBlocks, KVPolicy, Rotated, RotationConfig, Running, Waiting, decide,
)

CFG = RotationConfig(max_blocks_per_step=16, ttft_slack_s=0.5, victim_min_slack_s=0.2, return_slack_s=0.05)
NOW = 100.0


def head(blocks: int, ttft_slack: float) -> Waiting:
    """A waiting request whose TTFT slack at NOW is ``ttft_slack`` (prefill estimated at 0.3 s)."""
    return Waiting("w", blocks, ttft_deadline=NOW + 0.3 + ttft_slack, est_prefill_s=0.3)


def run(rid: str, blocks: int, tpot_slack: float, first_token: bool = True) -> Running:
    return Running(rid, blocks, first_token, token_deadline=NOW + tpot_slack)


def ids(moves) -> list[str]:
    return [m.request_id for m in moves]


def test_no_pressure_means_an_empty_decision_under_every_policy():
    running = [run("a", 4, 1.0), run("b", 4, 0.9)]
    for policy in KVPolicy:
        cfg = RotationConfig(policy=policy)
        fits = decide(NOW, [head(4, 0.0)], running, [], FreeBlocks(device=4, host=32), cfg)
        idle = decide(NOW, [], running, [], FreeBlocks(device=0, host=32), cfg)
        for d in (fits, idle):
            assert d.empty and d.blocks_moved == 0 and d.reason == "no pressure"


def test_a_short_head_with_low_ttft_slack_rotates_out_the_most_tpot_slack_first():
    running = [run("tight", 4, 0.3), run("loose", 3, 2.0), run("mid", 4, 1.0), run("new", 8, 5.0, first_token=False)]
    d = decide(NOW, [head(8, 0.1)], running, [], FreeBlocks(device=2, host=32), CFG)
    assert ids(d.rotate_out) == ["loose", "mid"]  # 7 blocks cover the 6 short; "new" has no first token
    assert d.head_short == 6 and d.head_ttft_slack_s == pytest.approx(0.1) and not d.recompute
    assert [m.slack_s for m in d.rotate_out] == [pytest.approx(2.0), pytest.approx(1.0)]
    log = d.log_fields()
    assert log["head"] == "w" and log["rotate_out"][0][:2] == ("loose", 3) and log["head_short"] == 6


def test_a_short_head_with_ttft_slack_left_waits():
    d = decide(NOW, [head(8, 2.0)], [run("a", 8, 3.0)], [], FreeBlocks(device=0, host=32), CFG)
    assert d.empty and d.reason == "head has TTFT slack"


def test_victims_keep_their_own_tpot_slack_floor():
    running = [run("a", 8, 0.19), run("b", 8, 0.1)]  # none above victim_min_slack_s
    d = decide(NOW, [head(4, 0.0)], running, [], FreeBlocks(device=0, host=32), CFG)
    assert d.empty and "no request can make room" in d.reason


def test_recompute_frees_instead_of_copying_and_block_never_moves():
    running = [run("a", 4, 1.0), run("b", 4, 2.0)]
    args = (NOW, [head(4, 0.0)], running, [], FreeBlocks(device=0, host=0))
    rc = decide(*args, RotationConfig(policy=KVPolicy.RECOMPUTE))
    assert ids(rc.recompute) == ["b"] and not rc.rotate_out  # host room does not matter
    assert decide(*args, CFG).empty  # rotate needs host room: none
    blocked = decide(*args, RotationConfig(policy=KVPolicy.BLOCK))
    assert blocked.empty and blocked.reason.startswith("block")


def test_rotated_requests_come_back_when_their_deadline_nears_largest_lag_first():
    rotated = [Rotated("early", 2, NOW + 1.0), Rotated("late", 3, NOW - 0.5), Rotated("near", 2, NOW + 0.01)]
    d = decide(NOW, [head(1, 5.0)], [], rotated, FreeBlocks(device=6, host=0), CFG)
    assert ids(d.rotate_in) == ["late", "near"] and d.rotate_in[0].slack_s == pytest.approx(-0.5)
    # strictly by lag: the most lagging one does not fit, so the next one does not jump ahead
    d = decide(NOW, [head(1, 5.0)], [], rotated, FreeBlocks(device=2, host=0), CFG)
    assert d.empty and "lagging rotated request short of blocks, no request can make room" in d.reason
    # nothing due yet: they stay out unless the head keeps the room it needs
    d = decide(NOW, [head(2, 5.0)], [], [Rotated("early", 2, NOW + 1.0)], FreeBlocks(device=3, host=0), CFG)
    assert d.empty and d.reason == "rotated requests not due"
    d = decide(NOW, [head(1, 5.0)], [], [Rotated("early", 2, NOW + 1.0)], FreeBlocks(device=3, host=0), CFG)
    assert ids(d.rotate_in) == ["early"] and d.reason == "return: room left for the head"


def test_the_copy_time_counts_against_a_rotated_requests_slack():
    cfg = RotationConfig(copy_s_per_block=0.02)
    d = decide(NOW, [head(1, 5.0)], [], [Rotated("r", 4, NOW + 0.1)], FreeBlocks(device=6, host=0), cfg)
    assert ids(d.rotate_in) == ["r"] and d.rotate_in[0].slack_s == pytest.approx(0.02)


def test_with_nothing_waiting_rotated_requests_come_back_as_room_allows():
    d = decide(NOW, [], [], [Rotated("r", 4, NOW + 9.0)], FreeBlocks(device=4, host=0), CFG)
    assert ids(d.rotate_in) == ["r"] and d.reason == "return: nothing waits"


def test_a_head_more_urgent_than_every_return_is_served_first():
    rotated = [Rotated("r", 2, NOW + 0.0)]  # slack 0.0
    running = [run("a", 4, 1.0)]
    d = decide(NOW, [head(4, -0.2)], running, rotated, FreeBlocks(device=2, host=8), CFG)
    assert ids(d.rotate_out) == ["a"] and not d.rotate_in
    d = decide(NOW, [head(4, 0.3)], running, rotated, FreeBlocks(device=2, host=8), CFG)
    assert ids(d.rotate_in) == ["r"] and not d.rotate_out


def test_a_due_rotated_request_without_room_swaps_with_the_most_slack():
    rotated = [Rotated("late", 3, NOW - 0.5), Rotated("early", 2, NOW + 1.0)]
    running = [run("banked", 4, 3.0), run("tight", 2, 0.1), run("mid", 2, 1.0)]
    d = decide(NOW, [], running, rotated, FreeBlocks(device=1, host=32), CFG)
    assert ids(d.rotate_out) == ["banked"] and d.reason == "make room for a lagging rotated request: rotate out"
    # a head more urgent than the lagging one is served first
    d = decide(NOW, [head(2, -1.0)], running, rotated, FreeBlocks(device=1, host=32), CFG)
    assert ids(d.rotate_out) == ["banked"] and d.reason == "make room for the head: rotate out"
    # nothing due: no swap
    d = decide(NOW, [], running, rotated[1:], FreeBlocks(device=1, host=32), CFG)
    assert d.empty and d.reason == "rotated requests not due"


def test_running_requests_that_cannot_grow_make_room_by_slack_first():
    running = [run("old", 6, 0.5), run("young", 2, 0.3), run("banked", 4, 3.0)]
    # three decodes cross into a new block this step, two blocks are free: one short
    d = decide(NOW, [], running, [], FreeBlocks(device=2, host=32), CFG, growth=3)
    assert ids(d.rotate_out) == ["banked"] and "grow" in d.reason
    rc = decide(NOW, [], running, [], FreeBlocks(device=2, host=32), RotationConfig(policy=KVPolicy.RECOMPUTE),
                growth=3)
    assert ids(rc.recompute) == ["young"]  # the least work to redo
    # growth that fits is no pressure, and what it takes is not room for the head or a return
    assert decide(NOW, [], running, [], FreeBlocks(device=3, host=32), CFG, growth=3).reason == "no pressure"
    d = decide(NOW, [head(2, 5.0)], running, [], FreeBlocks(device=3, host=32), CFG, growth=3)
    assert d.empty and d.head_short == 2 and d.reason == "head has TTFT slack"
    assert decide(NOW, [], running, [], FreeBlocks(device=2, host=32), RotationConfig(policy=KVPolicy.BLOCK),
                  growth=3).empty


def test_at_most_max_blocks_per_step_move():
    running = [run(f"r{i}", 6, 1.0 + i) for i in range(6)]
    d = decide(NOW, [head(40, 0.0)], running, [], FreeBlocks(device=0, host=100), CFG)
    assert d.blocks_moved == 12 and len(d.rotate_out) == 2  # 16 allowed: two of 6, a third would pass it
    big = decide(NOW, [head(4, 0.0)], [run("huge", 17, 9.0), run("small", 4, 1.0)], [],
                 FreeBlocks(device=0, host=100), CFG)
    assert ids(big.rotate_out) == ["small"]  # a request over the bound is never split
    rotated = [Rotated(f"x{i}", 6, NOW - i) for i in range(4)]
    back = decide(NOW, [], [], rotated, FreeBlocks(device=100, host=0), CFG)
    assert back.blocks_moved == 12


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="max_blocks_per_step"):
        RotationConfig(max_blocks_per_step=0)
    with pytest.raises(ConfigError, match="return_slack_s"):
        RotationConfig(return_slack_s=0.3, victim_min_slack_s=0.2)


# -- accounting under random load: apply each decision to a toy slice and check both tiers ---------------

DEVICE, HOST = 24, 10


@st.composite
def loads(draw):
    """Per step: arrivals (blocks, TTFT target), time passing, requests finishing, next-token targets, the
    blocks the running requests grow by."""
    steps = draw(st.integers(1, 60))
    return [(draw(st.lists(st.tuples(st.integers(1, 8), st.floats(0.0, 1.0)), max_size=3)),
             draw(st.floats(0.01, 0.2)), draw(st.integers(0, 1)), draw(st.floats(0.1, 1.5)), draw(st.integers(0, 3)))
            for _ in range(steps)]


@settings(max_examples=150, deadline=None, database=None)
@given(load=loads(), policy=st.sampled_from(list(KVPolicy)), bound=st.integers(1, 12))
def test_accounting_never_goes_negative_nor_past_capacity(load, policy, bound):
    cfg = RotationConfig(policy=policy, max_blocks_per_step=bound)
    now, n = 0.0, 0
    waiting: list[Waiting] = []
    running: dict[str, Running] = {}
    rotated: dict[str, Rotated] = {}
    for arrivals, dt, finishing, tpot, growth in load:
        now += dt
        for blocks, slo in arrivals:
            waiting.append(Waiting(f"q{n}", blocks, now + slo, 0.05))
            n += 1
        used = sum(r.blocks for r in running.values())
        held = sum(r.blocks for r in rotated.values())
        free = FreeBlocks(DEVICE - used, HOST - held)
        d: Decision = decide(now, waiting, list(running.values()), list(rotated.values()), free, cfg, growth)
        assert d.blocks_moved <= bound
        assert sum(m.blocks for m in d.rotate_in) <= max(0, free.device - growth)  # returns never eat growth
        moved = ids(d.rotate_out) + ids(d.recompute) + ids(d.rotate_in)
        assert len(moved) == len(set(moved))
        if policy is KVPolicy.BLOCK:
            assert d.empty
        for m in d.rotate_out:
            r = running.pop(m.request_id)
            assert r.first_token and m.blocks == r.blocks
            rotated[r.request_id] = Rotated(r.request_id, r.blocks, r.token_deadline)
        for m in d.recompute:
            r = running.pop(m.request_id)
            waiting.append(Waiting(r.request_id, r.blocks, now + 1.0, 0.05))
        for m in d.rotate_in:
            r = rotated.pop(m.request_id)
            running[r.request_id] = Running(r.request_id, r.blocks, True, now + 0.5)
        if waiting and waiting[0].blocks_needed <= DEVICE - sum(r.blocks for r in running.values()):
            w = waiting.pop(0)
            running[w.request_id] = Running(w.request_id, w.blocks_needed, False, now + 0.5)
        for rid in list(running)[:finishing]:
            del running[rid]
        running = {k: Running(k, r.blocks, True, now + tpot) for k, r in running.items()}  # a token each
        used = sum(r.blocks for r in running.values())
        held = sum(r.blocks for r in rotated.values())
        assert 0 <= used <= DEVICE and 0 <= held <= HOST
        assert not set(running) & set(rotated)
