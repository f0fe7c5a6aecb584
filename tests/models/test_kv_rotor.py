"""The rotation policy driving an Engine on a fake clock: a late request with a tight TTFT target gets
its first token sooner by rotating a long decode out, and every request's greedy tokens are unchanged."""

from __future__ import annotations

import pytest

from c2cq.errors import ConfigError
from c2cq.services.executor.model.engine import Engine
from c2cq.services.executor.model.kv_rotor import KVRotor
from c2cq.services.executor.rotation import KVPolicy, RotationConfig
from c2cq.services.executor.model.sampler import SamplingParams

from .conftest import prompt

DT = 0.1  # fake seconds per step
LONG = SamplingParams(max_tokens=24)
LATE_AT = 20


def serve(ck, policy: KVPolicy | None, kv_blocks: int):
    """(tokens per request, step of the late request's first token, the engine, the rotor)."""
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=kv_blocks, block_size=4, host_kv_blocks=16)
    rotor = KVRotor(engine, RotationConfig(policy=policy or KVPolicy.BLOCK), prefill_s_per_token=0.01)
    arrivals = {0: [("a", prompt(1, 8), LONG), ("b", prompt(2, 8), LONG)],
                LATE_AT: [("late", prompt(3, 12), SamplingParams(max_tokens=4))]}
    got: dict[str, list[int]] = {}
    first = None
    for step in range(400):
        now = step * DT
        for rid, ids, params in arrivals.get(step, []):
            engine.add(rid, ids, params)
            rotor.track(rid, now, ttft_s=0.5, tpot_s=1.0)
        if step > LATE_AT and not engine.num_requests:
            break
        if policy is not None:
            rotor.before_step(now, chunk_tokens=16)
        for out in engine.step(chunk_tokens=16):
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
            rotor.token(out.request_id, now + DT)
            if out.request_id == "late" and first is None:
                first = step
            if out.finished:
                rotor.forget(out.request_id)
    else:
        raise AssertionError("requests did not finish")
    return got, first, engine, rotor


def test_rotation_serves_a_late_request_sooner_with_the_same_tokens(checkpoints):
    ck = checkpoints("llama")
    expected, _, _, _ = serve(ck, None, kv_blocks=256)
    blocked, first_blocked, _, idle = serve(ck, KVPolicy.BLOCK, kv_blocks=16)
    rotated, first_rotated, engine, rotor = serve(ck, KVPolicy.ROTATE, kv_blocks=16)
    assert blocked == expected and rotated == expected
    assert idle.rotations == 0
    assert rotor.rotations >= 2  # out, and back in
    assert first_rotated <= LATE_AT + 2 < first_blocked
    assert engine.free_blocks == 16 and engine.host.num_free == 16 and not engine.rotated
    # the victim's full blocks were copied ahead: rotating it out copied less than it brought back
    host = engine.host
    assert host.bytes_ahead > 0 and host.bytes_at_rotate < host.bytes_in and host.ahead_blocks == 0


@pytest.mark.parametrize("policy", list(KVPolicy))
def test_without_pressure_the_rotor_changes_nothing(checkpoints, policy):
    ck = checkpoints("llama")
    expected, first, _, _ = serve(ck, None, kv_blocks=256)
    got, first_p, _, rotor = serve(ck, policy, kv_blocks=256)
    assert got == expected and first_p == first and rotor.rotations == rotor.recomputes == 0
    assert rotor.last is not None and rotor.last.empty


def test_rotate_without_a_host_pool_is_refused(checkpoints):
    ck = checkpoints("llama")
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=8, block_size=4)
    with pytest.raises(ConfigError, match="needs a host KV pool"):
        KVRotor(engine, RotationConfig(policy=KVPolicy.ROTATE), prefill_s_per_token=0.01)
    KVRotor(engine, RotationConfig(policy=KVPolicy.RECOMPUTE), prefill_s_per_token=0.01)  # needs none


def test_recompute_under_pressure_keeps_tokens(checkpoints):
    ck = checkpoints("llama")
    expected, _, _, _ = serve(ck, None, kv_blocks=256)
    got, first, engine, rotor = serve(ck, KVPolicy.RECOMPUTE, kv_blocks=16)
    assert got == expected and rotor.recomputes >= 1 and rotor.rotations == 0
    assert engine.free_blocks == 16 and engine.host.num_free == 16


def test_recompute_victims_queue_behind_the_head_they_made_room_for(checkpoints):
    ck = checkpoints("llama")
    _, first_blocked, _, _ = serve(ck, KVPolicy.BLOCK, kv_blocks=16)
    got, first, engine, rotor = serve(ck, KVPolicy.RECOMPUTE, kv_blocks=16)
    assert got == serve(ck, None, kv_blocks=256)[0]
    assert first <= LATE_AT + 2 < first_blocked
    assert rotor.recomputes >= 1 and engine.free_blocks == 16


def test_a_part_prefilled_head_still_waits_and_gets_room_every_step(checkpoints):
    """A long prompt prefilled in chunks stays the head waiting request while it holds blocks and has no
    token yet (counted as running it dropped out of the waiting list: it stalled with its chunks held
    while the policy saw nothing wait and brought the request rotated out for it back); it progresses every
    step, no request goes out and back on consecutive steps, and the tokens are unchanged."""
    ck = checkpoints("llama")
    long_late = [("late", prompt(3, 40), SamplingParams(max_tokens=4))]

    def run(kv_blocks: int, policy: KVPolicy):
        engine = Engine(ck.config, ck.tensors, None, kv_blocks=kv_blocks, block_size=4, host_kv_blocks=32)
        rotor = KVRotor(engine, RotationConfig(policy=policy), prefill_s_per_token=0.01)
        arrivals = {0: [("a", prompt(1, 8), LONG), ("b", prompt(2, 8), LONG)], 12: long_late}
        got: dict[str, list[int]] = {}
        heads, cached, moves = [], [], []
        for step in range(400):
            now = step * DT
            for rid, ids, params in arrivals.get(step, []):
                engine.add(rid, ids, params)
                rotor.track(rid, now, ttft_s=0.5, tpot_s=1.0)
            if step > 12 and not engine.num_requests:
                return got, heads, cached, moves, engine
            d = rotor.before_step(now, chunk_tokens=4)
            moves.append(({m.request_id for m in d.rotate_out}, {m.request_id for m in d.rotate_in}))
            if step >= 12 and "late" not in got:
                heads.append(d.head)
                cached.append(next(st.cached for st in engine.kv_states() if st.request_id == "late"))
            for out in engine.step(chunk_tokens=4):
                got.setdefault(out.request_id, []).extend(out.new_token_ids)
                rotor.token(out.request_id, now + DT)
        raise AssertionError("requests did not finish")

    expected = run(256, KVPolicy.BLOCK)[0]
    got, heads, cached, moves, engine = run(16, KVPolicy.ROTATE)
    assert got == expected
    assert heads and all(h == "late" for h in heads)
    assert all(b > a for a, b in zip(cached, cached[1:])), cached  # a chunk every step until its first token
    assert sum(len(o) + len(i) for o, i in moves) >= 2
    for (out, back), (out2, back2) in zip(moves, moves[1:]):
        assert not (out & back2) and not (back & out2)
    assert engine.free_blocks == 16 and engine.host.num_free == 32 and not engine.rotated
