"""Chunked prefill and continuous batching give the same tokens as one request at a time."""

from __future__ import annotations

import pytest

from c2cq.services.executor.model.engine import Engine
from c2cq.services.executor.model.sampler import SamplingParams

from .conftest import drain, prompt, token_ids

PROMPT_LENS = [17, 5, 30, 1]


def _alone(ck, ids, params, chunk=64):
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=32, block_size=4)
    engine.add("r", ids, params)
    return token_ids(drain(engine, chunk)["r"])


@pytest.mark.parametrize("name", ["llama", "qwen2_moe", "mistral_window"])
@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunk_size_does_not_change_tokens(checkpoints, name, chunk):
    ck = checkpoints(name)
    ids = prompt(11, 23)
    params = SamplingParams(max_tokens=12)
    assert _alone(ck, ids, params, chunk) == _alone(ck, ids, params, 64)


@pytest.mark.parametrize("name", ["llama_tied_llama3", "mixtral", "qwen3"])
def test_batched_requests_match_each_alone(checkpoints, name):
    ck = checkpoints(name)
    prompts = {f"r{i}": prompt(20 + i, n) for i, n in enumerate(PROMPT_LENS)}
    params = {rid: SamplingParams(max_tokens=8 + 3 * i) for i, rid in enumerate(prompts)}
    expected = {rid: _alone(ck, ids, params[rid]) for rid, ids in prompts.items()}

    engine = Engine(ck.config, ck.tensors, None, kv_blocks=64, block_size=4)
    rids = list(prompts)
    engine.add(rids[0], prompts[rids[0]], params[rids[0]])
    engine.add(rids[1], prompts[rids[1]], params[rids[1]])
    got: dict[str, list[int]] = {}
    mixed = False
    for step in range(200):
        if step == 2:  # arrivals while others are mid-prefill or decoding
            engine.add(rids[2], prompts[rids[2]], params[rids[2]])
        if step == 4:
            engine.add(rids[3], prompts[rids[3]], params[rids[3]])
        if step > 4 and not engine.num_requests:
            break
        outs = engine.step(chunk_tokens=6)
        stats = engine.last_stats
        mixed |= stats.prefill_tokens > 0 and stats.decode_tokens > 0
        for out in outs:
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
    assert got == expected
    assert mixed, "no step ran prefill chunks and decodes together"


def test_prefill_budget_is_respected(checkpoints):
    ck = checkpoints("llama")
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=64, block_size=4)
    engine.add("a", prompt(1, 20), SamplingParams(max_tokens=4))
    engine.add("b", prompt(2, 20), SamplingParams(max_tokens=4))
    seen = []
    while engine.num_requests:
        engine.step(chunk_tokens=7)
        seen.append(engine.last_stats)
    assert all(s.prefill_tokens <= 7 for s in seen)
    assert sum(s.prefill_tokens for s in seen) == 40  # 2 prompts of 20, each token computed once
    assert sum(s.decode_tokens for s in seen) == 2 * 3  # the first token comes from the prefill


def test_preemption_under_kv_pressure_keeps_tokens(checkpoints):
    ck = checkpoints("llama")
    prompts = {f"r{i}": prompt(40 + i, 9) for i in range(3)}
    params = SamplingParams(max_tokens=15)
    expected = {rid: _alone(ck, ids, params) for rid, ids in prompts.items()}
    # Each request needs ceil(24 / 4) = 6 blocks at the end; 10 blocks cannot hold all three at once.
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=10, block_size=4)
    for rid, ids in prompts.items():
        engine.add(rid, ids, params)
    got = {rid: token_ids(outs) for rid, outs in drain(engine, 32).items()}
    assert got == expected
    assert engine.preemptions > 0
    assert engine.free_blocks == 10


def test_long_prompts_competing_for_blocks_all_finish(checkpoints):
    ck = checkpoints("mixtral")
    prompts = {f"r{i}": prompt(60 + i, 26) for i in range(3)}
    params = SamplingParams(max_tokens=6)
    expected = {rid: _alone(ck, ids, params) for rid, ids in prompts.items()}
    # 9 blocks of 4 = 36 slots: one request (32 tokens) fits, two never fit together.
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=9, block_size=4)
    for rid, ids in prompts.items():
        engine.add(rid, ids, params)
    got = {rid: token_ids(outs) for rid, outs in drain(engine, 40).items()}
    assert got == expected and engine.free_blocks == 9
