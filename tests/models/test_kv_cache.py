"""Paged KV cache: allocation, slots, and blocks returned on finish and abort."""

from __future__ import annotations

import pytest
import torch

from c2cq.errors import CapacityError, RequestError
from c2cq.services.executor.model.engine import Engine
from c2cq.services.executor.model.errors import OutOfKVBlocks
from c2cq.services.executor.model.kv_cache import BlockAllocator, BlockTable, KVCache
from c2cq.services.executor.model.sampler import SamplingParams

from .conftest import drain, prompt


def test_allocator_hands_out_distinct_blocks_and_raises_when_empty():
    alloc = BlockAllocator(5)
    got = alloc.allocate(3) + alloc.allocate(2)
    assert sorted(got) == [0, 1, 2, 3, 4]
    with pytest.raises(OutOfKVBlocks) as err:
        alloc.allocate(1)
    assert isinstance(err.value, CapacityError) and "0 of 5 free" in str(err.value)
    alloc.free(got[:2])
    assert alloc.num_free == 2


def test_block_table_slots_follow_its_blocks():
    alloc = BlockAllocator(8)
    alloc.allocate(1)  # block 0 is someone else's
    table = BlockTable(block_size=3)
    table.grow(alloc, 7)
    assert table.blocks == [1, 2, 3]
    assert table.slots(2, 7).tolist() == [5, 6, 7, 8, 9]
    assert table.blocks_needed(9) == 0 and table.blocks_needed(10) == 1


def test_cache_reads_back_what_it_wrote_across_blocks():
    cache = KVCache(num_layers=1, num_blocks=6, block_size=2, kv_heads=2, head_dim=4, dtype=torch.float32)
    other, mine = cache.new_table(), cache.new_table()
    other.grow(cache.allocator, 2)
    mine.grow(cache.allocator, 5)
    k, v = torch.randn(5, 2, 4), torch.randn(5, 2, 4)
    cache.write(0, mine.slots(0, 5), k, v)
    cache.write(0, other.slots(0, 2), torch.zeros(2, 2, 4), torch.zeros(2, 2, 4))
    rk, rv = cache.read(0, mine, 5)
    assert torch.equal(rk, k) and torch.equal(rv, v)


def test_blocks_freed_on_finish_and_abort(checkpoints):
    ck = checkpoints("llama")
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=20, block_size=2)
    engine.add("done", prompt(1, 9), SamplingParams(max_tokens=6))
    engine.add("cut", prompt(2, 9), SamplingParams(max_tokens=6))
    engine.step(chunk_tokens=32)
    engine.step(chunk_tokens=32)
    assert engine.free_blocks == 20 - 2 * 5  # 10 tokens each in cache, 2 per block
    assert engine.abort("cut") and not engine.abort("cut")
    assert engine.free_blocks == 15
    drain(engine, 32)
    assert engine.free_blocks == 20 and engine.num_requests == 0


def test_request_that_cannot_fit_is_rejected(checkpoints):
    ck = checkpoints("llama")
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=4, block_size=4)
    with pytest.raises(RequestError) as err:
        engine.add("big", prompt(1, 10), SamplingParams(max_tokens=7))
    assert err.value.code == "prompt_too_long"
    engine.add("ok", prompt(1, 10), SamplingParams(max_tokens=6))
    with pytest.raises(RequestError) as dup:
        engine.add("ok", prompt(1, 3), SamplingParams())
    assert dup.value.code == "duplicate_request"


@pytest.mark.parametrize("name", ["llama", "mistral_window", "mixtral"])
def test_unwritten_slots_are_never_read(checkpoints, name):
    """The pool is allocated uninitialised (pages cost memory only once written): poisoning every slot
    with NaN before use must leave the greedy output unchanged."""
    ck = checkpoints(name)
    ids = prompt(11, 9)
    outs = []
    for poison in (False, True):
        engine = Engine(ck.config, ck.tensors, None, kv_blocks=12, block_size=4)
        if poison:
            for t in (*engine.cache.k, *engine.cache.v):
                t.fill_(float("nan"))
        engine.add("a", ids, SamplingParams(max_tokens=20))
        engine.add("b", ids[:5], SamplingParams(max_tokens=7))
        outs.append({rid: [t for o in out for t in o.new_token_ids] for rid, out in drain(engine, 3).items()})
    assert outs[0] == outs[1]
    assert len(outs[0]["a"]) == 20 and len(outs[0]["b"]) == 7
