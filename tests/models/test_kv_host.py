"""The host KV tier: blocks rotated out and back are bitwise equal, and the pools' accounting holds."""

from __future__ import annotations

import pytest
import torch

from c2cq.errors import CapacityError
from c2cq.services.executor.model.errors import KVRotationError, OutOfHostKVBlocks, OutOfKVBlocks
from c2cq.services.executor.model.kv_cache import KVCache
from c2cq.services.executor.model.kv_host import HostKVPool, Tier

LAYERS, BLOCKS, BS, HEADS, DIM = 3, 12, 4, 2, 8
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="needs a CUDA device (pinned host pool)"))]


def fragmented(dtype: torch.dtype, gen: torch.Generator, device: str = "cpu"):
    """A cache whose three sequences hold interleaved, non-contiguous blocks of random K/V."""
    cache = KVCache(LAYERS, BLOCKS, BS, HEADS, DIM, dtype, device)
    tables = {r: cache.new_table() for r in ("a", "b", "c")}
    spacer = cache.new_table()
    for n in range(1, 4):  # grow in turns so the tables interleave
        for t in (*tables.values(), spacer):
            t.grow(cache.allocator, n * BS - 1)
    spacer.release(cache.allocator)  # holes between the tables' blocks
    lengths = {"a": 3 * BS - 1, "b": 2 * BS + 1, "c": 3 * BS - 2}
    for rid, t in tables.items():
        t.blocks = t.blocks[:-(-lengths[rid] // BS)]
    for layer in range(LAYERS):
        for rid, t in tables.items():
            shape = (lengths[rid], HEADS, DIM)
            k = torch.randn(shape, generator=gen).to(device, dtype)
            v = torch.randn(shape, generator=gen).to(device, dtype)
            cache.write(layer, t.slots(0, lengths[rid]).to(device), k, v)
    return cache, tables, lengths


def snapshot(cache: KVCache, table, length: int) -> list[torch.Tensor]:
    return [torch.cat(cache.read(layer, table, length)).clone() for layer in range(LAYERS)]


def bitwise_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    bits = BITS[a[0].dtype]
    return all(torch.equal(x.view(bits), y.view(bits)) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotated_out_and_back_blocks_are_bitwise_equal(dtype, device):
    gen = torch.Generator().manual_seed(7)
    cache, tables, lengths = fragmented(dtype, gen, device)
    assert any(b - a != 1 for a, b in zip(tables["a"].blocks, tables["a"].blocks[1:]))  # really fragmented
    host = HostKVPool.like(cache, num_blocks=8)
    assert host.data.device.type == "cpu" and host.data.is_pinned() == (device == "cuda")
    before = {r: snapshot(cache, t, lengths[r]) for r, t in tables.items()}
    free_before = cache.allocator.num_free

    rotated = {r: tables[r].blocks for r in ("a", "c")}
    got = host.copy_out(cache, rotated)
    assert [len(b) for b in got.values()] == [3, 3] and host.num_free == 2
    for r in rotated:
        tables[r].blocks = []
    assert host.complete(cache).out == ("a", "c")
    assert cache.allocator.num_free == free_before + 6

    # someone else takes the freed device blocks and writes over them
    other = cache.new_table()
    other.grow(cache.allocator, cache.allocator.num_free * BS)
    for layer in range(LAYERS):
        n = len(other.blocks) * BS
        cache.write(layer, other.slots(0, n).to(device), torch.full((n, HEADS, DIM), 9.0, dtype=dtype, device=device),
                    torch.full((n, HEADS, DIM), -9.0, dtype=dtype, device=device))
    other.release(cache.allocator)

    new = host.copy_in(cache, ["c", "a"])
    assert host.tier("a") is Tier.IN_PENDING
    done = host.complete(cache)
    assert done.back == new
    for r, blocks in done.back.items():
        tables[r].blocks = blocks
    for r, t in tables.items():
        assert bitwise_equal(snapshot(cache, t, lengths[r]), before[r]), r
    assert host.num_free == host.num_blocks and not host.pending
    assert host.bytes_out == host.bytes_in == 6 * host.block_nbytes
    assert host.block_nbytes == LAYERS * BS * 2 * HEADS * DIM * torch.finfo(dtype).bits // 8


def test_both_pools_return_to_full_after_many_rotations():
    gen = torch.Generator().manual_seed(3)
    cache, tables, lengths = fragmented(torch.float32, gen)
    host = HostKVPool.like(cache, num_blocks=9)
    order = torch.Generator().manual_seed(5)
    for _ in range(12):
        on_device = [r for r in tables if host.tier(r) is None]
        on_host = [r for r in tables if host.tier(r) is Tier.HOST]
        if on_device and (not on_host or torch.rand(1, generator=order).item() < 0.5):
            rid = on_device[int(torch.randint(len(on_device), (1,), generator=order))]
            host.copy_out(cache, {rid: tables[rid].blocks})
            tables[rid].blocks = []
        else:
            rid = on_host[int(torch.randint(len(on_host), (1,), generator=order))]
            tables[rid].blocks = host.copy_in(cache, [rid])[rid]
        host.complete(cache)
        used = sum(len(t.blocks) for t in tables.values())
        assert cache.allocator.num_free == BLOCKS - used
        assert host.num_free == 9 - sum(host.blocks_of(r) for r in tables)
    for rid in list(tables):
        if host.tier(rid) is Tier.HOST:
            host.drop(rid)
        tables[rid].release(cache.allocator)
    assert host.num_free == 9 and cache.allocator.num_free == BLOCKS and not host.pending


def test_a_device_block_copied_out_is_not_reused_before_the_copy_completes():
    cache, tables, _ = fragmented(torch.float32, torch.Generator().manual_seed(1))
    host = HostKVPool.like(cache, num_blocks=8)
    blocks = list(tables["a"].blocks)
    host.copy_out(cache, {"a": blocks})
    tables["a"].blocks = []
    grabbed = cache.allocator.allocate(cache.allocator.num_free)
    assert not set(grabbed) & set(blocks)
    with pytest.raises(OutOfKVBlocks):
        cache.allocator.allocate(1)
    cache.allocator.free(grabbed)
    host.complete(cache)
    assert set(cache.allocator.free_set()) >= set(blocks)


def test_misuse_is_refused_with_a_clear_error():
    cache, tables, _ = fragmented(torch.float32, torch.Generator().manual_seed(2))
    host = HostKVPool.like(cache, num_blocks=8)
    a, b = list(tables["a"].blocks), list(tables["b"].blocks)
    with pytest.raises(KVRotationError, match="is free"):
        host.copy_out(cache, {"x": [next(iter(cache.allocator.free_set()))]})
    with pytest.raises(KVRotationError, match="two tables"):
        host.copy_out(cache, {"a": a, "b": [a[0]]})
    host.copy_out(cache, {"a": a})
    with pytest.raises(KVRotationError, match="not yet complete"):
        host.copy_out(cache, {"b": b + [a[1]]})
    with pytest.raises(KVRotationError, match="already copying out"):
        host.copy_out(cache, {"a": b})
    with pytest.raises(KVRotationError, match="not complete"):
        host.copy_in(cache, ["a"])
    with pytest.raises(KVRotationError, match="complete the copy first"):
        host.drop("a")
    host.complete(cache)
    with pytest.raises(KVRotationError, match="twice"):
        host.copy_in(cache, ["a", "a"])
    host.drop("a")
    with pytest.raises(KVRotationError, match="dropped twice"):
        host.drop("a")
    with pytest.raises(KVRotationError, match="no KV on host"):
        host.copy_in(cache, ["a"])
    assert host.num_free == 8  # nothing leaked by the refusals
    with pytest.raises(KVRotationError, match="does not match"):
        host.copy_out(KVCache(LAYERS, 4, BS, HEADS, DIM, torch.bfloat16), {})


def test_pools_that_are_full_refuse_without_changing_anything():
    cache, tables, _ = fragmented(torch.float32, torch.Generator().manual_seed(4))
    host = HostKVPool.like(cache, num_blocks=4)
    with pytest.raises(OutOfHostKVBlocks) as err:
        host.copy_out(cache, {"a": tables["a"].blocks, "b": tables["b"].blocks})
    assert isinstance(err.value, CapacityError) and "need 6 host KV blocks, 4 of 4 free" in str(err.value)
    assert host.num_free == 4 and host.tier("a") is None
    host.copy_out(cache, {"a": tables["a"].blocks})
    tables["a"].blocks = []
    host.complete(cache)
    hog = cache.allocator.allocate(cache.allocator.num_free - 2)
    with pytest.raises(OutOfKVBlocks):
        host.copy_in(cache, ["a"])
    assert host.tier("a") is Tier.HOST and cache.allocator.num_free == 2
    cache.allocator.free(hog)


def test_a_request_with_no_blocks_yet_goes_out_and_back_too():
    cache = KVCache(LAYERS, 4, BS, HEADS, DIM, torch.float32)
    host = HostKVPool.like(cache, num_blocks=2)
    assert host.copy_out(cache, {"new": []}) == {"new": []} and host.tier("new") is Tier.OUT_PENDING
    assert host.complete(cache).out == ("new",)
    assert host.copy_in(cache, ["new"]) == {"new": []}
    assert host.complete(cache).back == {"new": []} and host.tier("new") is None
    assert host.bytes_out == host.bytes_in == 0 and host.num_free == 2 and cache.allocator.num_free == 4


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (copy stream)")


def test_on_a_cpu_slice_a_copy_is_complete_when_issued():
    cache, tables, _ = fragmented(torch.float32, torch.Generator().manual_seed(5))
    host = HostKVPool.like(cache, num_blocks=8)
    blocks = list(tables["a"].blocks)
    host.copy_out(cache, {"a": blocks})
    assert host.complete(cache, wait=False).out == ("a",)  # nothing to wait for: synchronous copies
    assert set(cache.allocator.free_set()) >= set(blocks)
    back = host.copy_in(cache, ["a"])
    assert host.complete(cache, wait=False).back == back and not host.pending


@CUDA
def test_copies_run_on_their_own_stream_and_no_block_is_freed_before_its_event():
    cache, tables, lengths = fragmented(torch.float32, torch.Generator().manual_seed(6), "cuda")
    host = HostKVPool.like(cache, num_blocks=8)
    before = snapshot(cache, tables["a"], lengths["a"])
    blocks = list(tables["a"].blocks)
    host.copy_out(cache, {"b": tables["b"].blocks})  # makes the copy stream
    tables["b"].blocks = []
    host.complete(cache)
    free = cache.allocator.num_free
    assert host._stream is not None and host._stream != torch.cuda.current_stream()
    with torch.cuda.stream(host._stream):
        torch.cuda._sleep(2_000_000_000)  # the next copy waits behind this on the copy stream (~1 s)
    host.copy_out(cache, {"a": blocks})
    tables["a"].blocks = []
    done = host.complete(cache, wait=False)  # the copy cannot have finished: its blocks stay the copy's
    assert done.out == () and host.tier("a") is Tier.OUT_PENDING and cache.allocator.num_free == free
    assert torch.cuda.current_stream().query()  # the compute stream was never held up by the copy
    assert host.complete(cache).out == ("a",) and cache.allocator.num_free == free + len(blocks)
    tables["a"].blocks = host.copy_in(cache, ["a"])["a"]
    host.complete(cache)
    assert bitwise_equal(snapshot(cache, tables["a"], lengths["a"]), before)


@CUDA
def test_a_copy_out_sees_what_the_compute_stream_queued_before_it():
    cache, tables, lengths = fragmented(torch.float32, torch.Generator().manual_seed(8), "cuda")
    host = HostKVPool.like(cache, num_blocks=8)
    torch.cuda._sleep(1_000_000_000)  # on the compute stream: the write below runs late
    for layer in range(LAYERS):
        slots = tables["a"].slots(0, lengths["a"]).cuda()
        ones = torch.ones((lengths["a"], HEADS, DIM), device="cuda")
        cache.write(layer, slots, ones * layer, -ones)
    host.copy_out(cache, {"a": tables["a"].blocks})
    tables["a"].blocks = []
    host.complete(cache)
    tables["a"].blocks = host.copy_in(cache, ["a"])["a"]
    host.complete(cache)
    for layer in range(LAYERS):
        k, v = cache.read(layer, tables["a"], lengths["a"])
        assert torch.equal(k, torch.full_like(k, layer)) and torch.equal(v, -torch.ones_like(v))


def test_blocks_copied_ahead_leave_only_the_last_block_to_copy_and_come_back_bitwise_equal():
    gen = torch.Generator().manual_seed(11)
    cache, tables, lengths = fragmented(torch.float32, gen)
    host = HostKVPool.like(cache, num_blocks=8)
    a = tables["a"].blocks  # 3 blocks, 11 tokens: the first 2 full
    before = snapshot(cache, tables["a"], lengths["a"])
    assert host.copy_ahead(cache, "a", a[:1], max_blocks=4) == 1
    assert host.copy_ahead(cache, "a", a[:2], max_blocks=4) == 1 and host.copy_ahead(cache, "a", a[:2], 4) == 0
    assert host.num_free == 6 and host.room == 8 and host.ahead_of("a") == 2
    with pytest.raises(KVRotationError, match="copied ahead, it must not be written"):
        host.check_write("a", 1)  # a step writing into a full block: refused
    host.check_write("a", 2)
    with pytest.raises(KVRotationError, match="not the ones copied ahead"):
        host.copy_out(cache, {"a": [a[1], a[0], a[2]]})
    at_rotate = host.bytes_at_rotate
    host.copy_out(cache, {"a": a})
    assert host.bytes_at_rotate - at_rotate == host.block_nbytes  # only the last, partial block
    assert host.bytes_out == 3 * host.block_nbytes and host.ahead_blocks == 0
    tables["a"].blocks = []
    host.complete(cache)
    tables["a"].blocks = host.copy_in(cache, ["a"])["a"]
    host.complete(cache)
    assert bitwise_equal(snapshot(cache, tables["a"], lengths["a"]), before)
    assert host.num_free == 8


def test_copies_ahead_are_taken_back_for_a_rotation_and_dropped_with_their_request():
    cache, tables, _ = fragmented(torch.float32, torch.Generator().manual_seed(3))
    host = HostKVPool.like(cache, num_blocks=5)
    host.copy_ahead(cache, "b", tables["b"].blocks[:2], max_blocks=2)
    host.copy_ahead(cache, "c", tables["c"].blocks[:2], max_blocks=2)
    assert host.num_free == 1 and host.room == 5
    host.copy_out(cache, {"a": tables["a"].blocks})  # 3 blocks: takes back a copy ahead
    assert host.num_free == 0 and host.ahead_blocks == 2
    with pytest.raises(OutOfHostKVBlocks):
        host.copy_out(cache, {"b": tables["b"].blocks})  # 1 block more than b's copies ahead, none left
    for rid in ("b", "c"):
        host.drop_ahead(rid)
        host.drop_ahead(rid)  # none left: a no-op
    host.complete(cache)
    with pytest.raises(KVRotationError, match="on host"):
        host.copy_ahead(cache, "a", tables["a"].blocks[:2], max_blocks=2)  # its KV is on host already
    host.drop("a")
    assert host.num_free == 5 and host.ahead_blocks == 0
