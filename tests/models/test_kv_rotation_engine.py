"""Requests rotated to the host KV pool and back give the tokens of a run that never rotated."""

from __future__ import annotations

import pytest
import torch

from c2cq.schemas.executor import StepStats
from c2cq.services.executor.backend import StepResult
from c2cq.services.executor.model.engine import Engine
from c2cq.services.executor.model.errors import KVRotationError
from c2cq.services.executor.model.sampler import SamplingParams

from .conftest import prompt


def run(ck, arrivals, *, kv_blocks, host_kv_blocks=0, rotate_every=0, seed=0, ahead=0):
    """Step the engine with requests arriving at given steps; every ``rotate_every`` steps rotate a random
    running request out and, the step after, the longest-rotated one back in; ``ahead``: full blocks of
    the running requests copied ahead each step (before the rotation)."""
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=kv_blocks, block_size=4, host_kv_blocks=host_kv_blocks)
    pick = torch.Generator().manual_seed(seed)
    got: dict[str, list[int]] = {}
    out_order: list[str] = []
    rotations = 0
    for step in range(2000):
        for rid, ids, params in arrivals.get(step, []):
            engine.add(rid, ids, params)
        if step > max(arrivals) and not engine.num_requests:
            break
        if ahead:
            engine.copy_ahead([s.request_id for s in engine.kv_states() if s.device_blocks and not s.rotated],
                              ahead)
        if rotate_every and step % rotate_every == 0:
            running = sorted(engine.request_ids - engine.rotated)
            if running:
                rid = running[int(torch.randint(len(running), (1,), generator=pick))]
                engine.rotate_out([rid])
                out_order.append(rid)
                rotations += 1
        elif out_order and engine.free_blocks >= engine.host.blocks_of(out_order[0]):
            engine.rotate_in([out_order.pop(0)])
        for out in engine.step(chunk_tokens=5):
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
    else:
        raise AssertionError("requests did not finish")
    return got, engine, rotations


@pytest.mark.parametrize("name", ["llama", "qwen2_moe"])
def test_rotation_every_k_steps_keeps_greedy_tokens(checkpoints, name):
    ck = checkpoints(name)
    arrivals_at = torch.Generator().manual_seed(13)
    arrivals: dict[int, list] = {}
    for i in range(6):
        step = int(torch.randint(0, 12, (1,), generator=arrivals_at))
        arrivals.setdefault(step, []).append((f"r{i}", prompt(40 + i, 5 + 4 * i), SamplingParams(max_tokens=10 + i)))
    expected, _, _ = run(ck, arrivals, kv_blocks=256)
    for k in (2, 3):
        got, engine, rotations = run(ck, arrivals, kv_blocks=64, host_kv_blocks=64, rotate_every=k, seed=k)
        assert rotations >= 5 and got == expected
        assert engine.free_blocks == 64 and engine.host.num_free == 64 and not engine.rotated
        assert engine.host.bytes_out == engine.host.bytes_in > 0
        # with full blocks copied ahead: the same tokens, both pools full again, less copied at rotation
        got, engine, _ = run(ck, arrivals, kv_blocks=64, host_kv_blocks=64, rotate_every=k, seed=k, ahead=2)
        assert got == expected
        assert engine.free_blocks == 64 and engine.host.num_free == 64 and engine.host.ahead_blocks == 0
        host = engine.host
        assert 0 < host.bytes_at_rotate < host.bytes_in <= host.bytes_out == host.bytes_at_rotate + host.bytes_ahead


def two_started(ck, b_len: int) -> Engine:
    """An engine with a host pool and two requests past their first step: "a" (9 tokens), "b"."""
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=32, block_size=4, host_kv_blocks=16)
    engine.add("a", prompt(1, 9), SamplingParams(max_tokens=6))
    engine.add("b", prompt(2, b_len), SamplingParams(max_tokens=6))
    engine.step(chunk_tokens=32)
    return engine


def test_aborting_a_rotated_request_frees_its_host_blocks(checkpoints):
    engine = two_started(checkpoints("llama"), 9)
    engine.rotate_out(["a"])
    assert engine.abort("a") and not engine.abort("a")  # the pending copy is completed, then dropped
    assert engine.host.num_free == 16 and engine.free_blocks == 32 - 3
    with pytest.raises(KVRotationError, match="not running here"):
        engine.rotate_out(["a"])
    engine.rotate_out(["b"])
    engine.step(chunk_tokens=32)  # b skips steps while rotated
    assert engine.rotated == {"b"} and engine.free_blocks == 32
    engine.rotate_in(["b"])
    assert engine.abort("b")
    assert engine.host.num_free == 16 and engine.free_blocks == 32


def test_an_engine_without_a_host_pool_refuses_to_rotate(checkpoints):
    ck = checkpoints("llama")
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=8, block_size=4)
    engine.add("a", prompt(1, 5), SamplingParams(max_tokens=2))
    with pytest.raises(KVRotationError, match="no host KV pool"):
        engine.rotate_out(["a"])


def test_step_stats_report_both_tiers_and_what_rotated(checkpoints):
    engine = two_started(checkpoints("llama"), 5)
    assert engine.kv_blocks == (3 + 2, 27, 0, 16) and engine.last_stats.kv_rotations == 0
    engine.rotate_out(["a"])
    engine.step(chunk_tokens=32)
    moved = engine.last_stats
    assert moved.kv_rotations == 1 and moved.kv_bytes_rotated == 3 * engine.host.block_nbytes
    assert engine.kv_blocks == (2, 30, 3, 13)
    engine.step(chunk_tokens=32)
    assert engine.last_stats.kv_rotations == engine.last_stats.kv_bytes_rotated == 0

    window = StepResult()
    window.accumulate(StepResult(kv_blocks=(5, 27, 0, 16)))
    window.accumulate(StepResult(kv_blocks=(2, 30, 3, 13), kv_rotations=1, kv_bytes_rotated=100))
    window.accumulate(StepResult(kv_rotations=1, kv_bytes_rotated=50))  # no pool figures: the last stand
    msg = StepStats(source="e", seq=0, ts_ns=0, step_s=0.1, tokens=1, prefill_tokens=0, decode_tokens=1,
                    batch=1, bytes_hbm=0, bytes_host=0, **window.kv_stats())
    assert (msg.kv_device_used, msg.kv_device_free, msg.kv_host_used, msg.kv_host_free) == (2, 30, 3, 13)
    assert msg.kv_rotations == 2 and msg.kv_bytes_rotated == 150
    assert StepResult().kv_stats()["kv_device_free"] is None


class _Running:
    """A copy's event that has not finished (what a cuda copy stream gives while the copy runs)."""

    def query(self) -> bool:
        return False


def test_a_decode_waits_for_blocks_a_copy_out_still_holds_rather_than_preempting(checkpoints):
    """On cuda a rotation's copy out holds its device blocks until its event: a decode short of exactly
    those blocks waits a step for them instead of preempting (itself, here: no younger request), and
    runs once the copy is done; tokens stay those of an unbounded pool."""
    ck = checkpoints("llama")
    params = SamplingParams(max_tokens=6)
    a, b = prompt(3, 7), prompt(4, 7)
    ref = Engine(ck.config, ck.tensors, None, kv_blocks=64, block_size=4)
    ref.add("A", a, params)
    ref.add("B", b, params)
    want: dict[str, list[int]] = {}
    while ref.num_requests:
        for out in ref.step(chunk_tokens=16):
            want.setdefault(out.request_id, []).extend(out.new_token_ids)
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=4, block_size=4, host_kv_blocks=8)
    engine.add("A", a, params)
    engine.add("B", b, params)
    got: dict[str, list[int]] = {}

    def step() -> set[str]:
        outs = engine.step(chunk_tokens=16)
        for out in outs:
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
        return {out.request_id for out in outs}

    step()  # both prompts (2 blocks each: the pool is full) and their first tokens
    step()  # position 7: the last slot of each one's second block
    assert engine.free_blocks == 0
    engine.rotate_out(["A"])
    pending = _Running()  # A's copy out still runs: its 2 device blocks are not free yet
    engine.host._entries["A"].done = pending
    engine.host._inflight.append((pending, ()))
    assert engine.host.releasing == 2
    assert step() == set() and engine.preemptions == 0  # B needs a block for position 8: it waits
    engine.host._entries["A"].done = None  # the copy finished
    engine.host._inflight.clear()
    assert step() == {"B"} and engine.preemptions == 0
    while engine.num_requests:
        if "A" in engine.rotated and engine.free_blocks >= engine.host.blocks_of("A"):
            engine.rotate_in(["A"])
        step()
    assert got == want and engine.kv_blocks == (0, 4, 0, 8)
