"""The host tier of a slice's KV: a fixed-size pool that whole requests' KV is rotated out to and back from.

Block-first layout: the pool is one tensor [num_blocks, num_layers, block_size, 2, kv_heads, head_dim],
so one block of one request, all layers, is one contiguous region and rotating a request is one large
copy per block (the device pool is layer-first, one tensor per layer, so the device side gathers each
layer's blocks into a staging tensor of the same block-first shape first).

Copies are batched per step and *pending* until ``complete()``: the blocks a copy reads stay owned by
the copy (a device block copied out goes back to the device allocator only when its copy completes; a
host block copied in goes back to the host pool then), so no block is reused before its copy is done.
A request is in at most one tier: copying out takes its device blocks from the caller (whose block
table must drop them), copying in hands new device blocks back only on completion. On a CPU slice the
copies are synchronous and ``complete()`` only does the accounting.

Copies ahead (DuplexKV): while a request that is a likely victim decodes, its full blocks (which no
longer change) may be copied to host blocks ahead of time (``copy_ahead``); a later ``copy_out`` then
copies only the blocks not yet copied (its last, partial block) and takes the ahead copies as its first
host blocks. An ahead copy is a cache: its host blocks count as room (``room``), taken back when a
rotation needs them, dropped when the request ends or is preempted (``drop_ahead``, after its copy has
finished), and a write into a block copied ahead is refused (``check_write``): it cannot happen to a full
block, and if it did the host copy would be stale.

On cuda the host pool is pinned and the copies run on a copy stream of their own, so they overlap the
compute stream's steps, in both directions at once (out: device → host, in: host → device, each its
own DMA). Each batch first waits for what the compute stream has queued (the blocks it reads were
written there; the blocks it writes may still be read by a kernel queued before), then records an
event; ``complete(wait=False)`` finishes only the copies whose events have completed and leaves the
others pending (their blocks still theirs), ``complete()`` waits for all. The staging tensors of a
batch live until its event has completed.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from c2cq.services.executor.model.errors import KVRotationError, OutOfHostKVBlocks, OutOfKVBlocks
from c2cq.services.executor.model.kv_cache import KVCache


class Tier(enum.Enum):
    OUT_PENDING = "copying out"  # host blocks being written; its device blocks held by the copy
    HOST = "on host"  # the KV lives in host blocks only
    IN_PENDING = "copying in"  # new device blocks being written; its host blocks held by the copy


@dataclass(slots=True)
class _Entry:
    tier: Tier
    host: list[int]
    device: list[int] = field(default_factory=list)  # the blocks a pending copy holds (out: read, in: written)
    done: torch.cuda.Event | None = None  # the pending copy's event (cuda); None: complete when issued


@dataclass(slots=True)
class _Ahead:
    device: list[int]  # the request's first device blocks (position order), copied ahead
    host: list[int]  # their host copies
    done: torch.cuda.Event | None = None  # the last batch that copied some of them (cuda)


@dataclass(frozen=True, slots=True)
class Completed:
    """What one ``complete()`` finished: requests now on host, and requests back on device with their
    new device blocks (in position order, for their block tables)."""

    out: tuple[str, ...]
    back: dict[str, list[int]]


class HostKVPool:
    def __init__(self, num_blocks: int, *, num_layers: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, pin: bool = False) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        # pinned (page-locked) only in a cuda executor: CPU-only torch cannot pin
        self.data = torch.zeros((num_blocks, num_layers, block_size, 2, kv_heads, head_dim), dtype=dtype,
                                pin_memory=pin)
        self._free = list(range(num_blocks - 1, -1, -1))
        self._entries: dict[str, _Entry] = {}
        self._ahead: dict[str, _Ahead] = {}
        self._stream: torch.cuda.Stream | None = None  # the copy stream (cuda), made on first use
        self._inflight: list[tuple[torch.cuda.Event, tuple[torch.Tensor, ...]]] = []  # staging kept to its event
        self.bytes_out = 0  # since start
        self.bytes_in = 0
        self.bytes_ahead = 0  # of bytes_out, copied ahead (some of it dropped unused)
        self.bytes_at_rotate = 0  # of bytes_out, copied when a request was rotated out

    @classmethod
    def like(cls, cache: KVCache, num_blocks: int) -> HostKVPool:
        """A host pool whose blocks hold exactly what one of ``cache``'s blocks holds, in every layer."""
        pool = cache.pools[0]
        return cls(num_blocks, num_layers=len(cache.pools), block_size=pool.shape[1], kv_heads=pool.shape[3],
                   head_dim=pool.shape[4], dtype=pool.dtype, pin=pool.device.type == "cuda")

    # -- accounting -------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def ahead_blocks(self) -> int:
        """Host blocks held by copies ahead (taken back when a rotation needs them)."""
        return sum(len(a.host) for a in self._ahead.values())

    @property
    def room(self) -> int:
        """Host blocks a rotation out may take: the free ones and those of copies ahead."""
        return len(self._free) + self.ahead_blocks

    def ahead_of(self, request_id: str) -> int:
        """Blocks of this request copied ahead (its first ones)."""
        a = self._ahead.get(request_id)
        return 0 if a is None else len(a.device)

    @property
    def block_nbytes(self) -> int:
        """Bytes of one block, all layers (what rotating one block moves)."""
        return self.data[0].numel() * self.data.element_size()

    @property
    def pending(self) -> bool:
        return any(e.tier is not Tier.HOST for e in self._entries.values())

    @property
    def releasing(self) -> int:
        """Device blocks held by copies out not yet complete: back in the device allocator once they are."""
        return sum(len(e.device) for e in self._entries.values() if e.tier is Tier.OUT_PENDING)

    def tier(self, request_id: str) -> Tier | None:
        entry = self._entries.get(request_id)
        return None if entry is None else entry.tier

    def blocks_of(self, request_id: str) -> int:
        """Host blocks a request holds (0 when it is not here)."""
        entry = self._entries.get(request_id)
        return 0 if entry is None else len(entry.host)

    def _check_cache(self, cache: KVCache) -> None:
        pool = cache.pools[0]
        if (len(cache.pools), *pool.shape[1:]) != tuple(self.data.shape[1:]) or pool.dtype != self.data.dtype:
            raise KVRotationError(f"device pool of {len(cache.pools)} x {tuple(pool.shape)} {pool.dtype} does not "
                                  f"match host blocks of {tuple(self.data.shape[1:])} {self.data.dtype}")

    # -- copies -----------------------------------------------------------------------------------
    def copy_out(self, cache: KVCache, seq_blocks: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
        """Start copying each request's device blocks (in position order) to host blocks; returns the host
        blocks per request. The device blocks now belong to the copy: the caller's tables must drop them;
        they return to the device allocator on ``complete()``."""
        self._check_cache(cache)
        for rid, blocks in seq_blocks.items():
            a = self._ahead.get(rid)
            if a is not None and list(blocks[:len(a.device)]) != a.device:
                raise KVRotationError(f"request {rid!r}: its first blocks are not the ones copied ahead")
        want = sum(len(b) - self.ahead_of(rid) for rid, b in seq_blocks.items())
        in_flight = {b for e in self._entries.values() for b in e.device}
        free_dev = cache.allocator.free_set()
        seen: set[int] = set()
        for rid, blocks in seq_blocks.items():
            if rid in self._entries:
                raise KVRotationError(f"request {rid!r} is already {self._entries[rid].tier.value}")
            for b in blocks:
                if not 0 <= b < cache.allocator.num_blocks:
                    raise KVRotationError(f"request {rid!r}: device block {b} is outside the pool")
                if b in free_dev:
                    raise KVRotationError(f"request {rid!r}: device block {b} is free, not a table's")
                if b in in_flight:
                    raise KVRotationError(f"request {rid!r}: device block {b} is in a copy not yet complete")
                if b in seen:
                    raise KVRotationError(f"request {rid!r}: device block {b} is in two tables")
                seen.add(b)
        others = [r for r in self._ahead if r not in seq_blocks]
        if want > len(self._free) + sum(len(self._ahead[r].host) for r in others):
            raise OutOfHostKVBlocks(f"need {want} host KV blocks, {len(self._free)} of {self.num_blocks} free")
        while want > len(self._free):  # take back other requests' copies ahead (same stream: in order)
            self._free.extend(reversed(self._ahead.pop(others.pop()).host))
        ahead = {rid: self._ahead.pop(rid) for rid in seq_blocks if rid in self._ahead}
        dev_ids = [b for rid, blocks in seq_blocks.items() for b in blocks[self._k(ahead, rid):]]
        host_ids = [self._free.pop() for _ in dev_ids]
        done = None
        if dev_ids:
            done = self._to_host(cache, dev_ids, host_ids)
            self.bytes_out += len(host_ids) * self.block_nbytes
            self.bytes_at_rotate += len(host_ids) * self.block_nbytes
        out: dict[str, list[int]] = {}
        at = 0
        for rid, blocks in seq_blocks.items():
            a, k = ahead.get(rid), self._k(ahead, rid)
            out[rid] = (a.host if a is not None else []) + host_ids[at:at + len(blocks) - k]
            # one stream: this batch done means the copies ahead are too
            self._entries[rid] = _Entry(Tier.OUT_PENDING, out[rid], list(blocks),
                                        done if done is not None or a is None else a.done)
            at += len(blocks) - k
        return out

    def _to_host(self, cache: KVCache, dev_ids: list[int], host_ids: list[int]) -> torch.cuda.Event | None:
        """Queue the copy of these device blocks (all layers) to these host blocks; its event (cuda)."""
        device = cache.pools[0].device
        with self._copying(device):
            ids = torch.tensor(dev_ids, dtype=torch.long, device=device)
            staging = torch.stack([p.index_select(0, ids) for p in cache.pools], dim=1)  # block-first
            for i, h in enumerate(host_ids):
                self.data[h].copy_(staging[i], non_blocking=True)
            return self._record(device, ids, staging)

    @staticmethod
    def _k(ahead: Mapping[str, _Ahead], rid: str) -> int:
        a = ahead.get(rid)
        return 0 if a is None else len(a.device)

    def copy_ahead(self, cache: KVCache, request_id: str, full_blocks: Sequence[int], max_blocks: int) -> int:
        """Copy up to ``max_blocks`` more of a running request's full blocks (its first ones, position
        order: ``full_blocks`` are all it has, the ones already copied ahead first) to host blocks; the
        number copied. The device blocks stay the request's (they are read, never written again)."""
        self._check_cache(cache)
        if request_id in self._entries:
            raise KVRotationError(f"request {request_id!r} is {self._entries[request_id].tier.value}")
        a = self._ahead.get(request_id)
        k = 0 if a is None else len(a.device)
        if list(full_blocks[:k]) != (a.device if a is not None else []):
            raise KVRotationError(f"request {request_id!r}: its first blocks are not the ones copied ahead")
        new = list(full_blocks[k:k + max(0, min(max_blocks, len(self._free)))])
        if not new:
            return 0
        free_dev = cache.allocator.free_set()
        if any(not 0 <= b < cache.allocator.num_blocks or b in free_dev for b in new):
            raise KVRotationError(f"request {request_id!r}: a block to copy ahead is not a table's")
        host_ids = [self._free.pop() for _ in new]
        done = self._to_host(cache, new, host_ids)
        if a is None:
            a = self._ahead[request_id] = _Ahead([], [])
        a.device += new
        a.host += host_ids
        a.done = done
        nbytes = len(new) * self.block_nbytes
        self.bytes_out += nbytes
        self.bytes_ahead += nbytes
        return len(new)

    def check_write(self, request_id: str, first_block: int) -> None:
        """A step writes this request's KV from its block ``first_block`` on: refused when that block was
        copied ahead (only full blocks are, and a full block is never written again)."""
        if first_block < self.ahead_of(request_id):
            raise KVRotationError(f"request {request_id!r}: block {first_block} was copied ahead, it must "
                                  f"not be written (only full blocks are copied ahead)")

    def drop_ahead(self, request_id: str) -> None:
        """Free a request's copies ahead (it ends, or is preempted for recompute); its device blocks may be
        reused once this returns (it waits for their copy on cuda). No-op when it has none."""
        a = self._ahead.pop(request_id, None)
        if a is None:
            return
        if a.done is not None:
            a.done.synchronize()
        self._free.extend(reversed(a.host))

    def copy_in(self, cache: KVCache, request_ids: Iterable[str]) -> dict[str, list[int]]:
        """Start copying rotated requests back into newly allocated device blocks; returns them per request.
        They must not be read before ``complete()``, which hands them back for the requests' tables."""
        self._check_cache(cache)
        rids = list(request_ids)
        for rid in rids:
            entry = self._entries.get(rid)
            if entry is None:
                raise KVRotationError(f"request {rid!r} has no KV on host")
            if entry.tier is not Tier.HOST:
                raise KVRotationError(f"request {rid!r} is {entry.tier.value}: its copy is not complete")
        if len(set(rids)) != len(rids):
            raise KVRotationError("a request is asked back twice in one copy")
        want = sum(len(self._entries[r].host) for r in rids)
        if want > cache.allocator.num_free:
            raise OutOfKVBlocks(f"need {want} KV blocks to rotate in, {cache.allocator.num_free} of "
                                f"{cache.allocator.num_blocks} free")
        dev = cache.allocator.allocate(want)
        done = None
        if dev:
            device = cache.pools[0].device
            host_ids = [h for rid in rids for h in self._entries[rid].host]
            with self._copying(device):
                staging = torch.empty((len(dev), *self.data.shape[1:]), dtype=self.data.dtype, device=device)
                for i, h in enumerate(host_ids):
                    staging[i].copy_(self.data[h], non_blocking=True)
                ids = torch.tensor(dev, dtype=torch.long, device=device)
                for layer, pool in enumerate(cache.pools):
                    pool.index_copy_(0, ids, staging[:, layer])
                done = self._record(device, ids, staging)
            self.bytes_in += len(dev) * self.block_nbytes
        out: dict[str, list[int]] = {}
        at = 0
        for rid in rids:
            entry = self._entries[rid]
            out[rid] = dev[at:at + len(entry.host)]
            entry.tier, entry.device, entry.done = Tier.IN_PENDING, out[rid], done
            at += len(entry.host)
        return out

    def _copying(self, device: torch.device):
        """Where a batch of copies is queued: on cuda the copy stream, after all the compute stream has
        queued so far (the blocks read were written there; the blocks written may still be read there)."""
        if device.type != "cuda":
            return contextlib.nullcontext()
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        self._stream.wait_stream(torch.cuda.current_stream(device))
        return torch.cuda.stream(self._stream)

    def _record(self, device: torch.device, *staging: torch.Tensor) -> torch.cuda.Event | None:
        """The event that says a batch's copies are done (cuda), its staging tensors kept alive until then."""
        if device.type != "cuda":
            return None
        done = torch.cuda.Event()
        done.record(self._stream)
        self._inflight.append((done, staging))
        return done

    def complete(self, cache: KVCache, *, wait: bool = True) -> Completed:
        """Finish the pending copies (``wait=False``: only those already done, without waiting): blocks
        copied out return to the device allocator, blocks copied in return to the host pool, and the
        requests copied in get their device blocks (the compute stream is ordered after their copy)."""
        if wait and self._inflight:
            self._inflight[-1][0].synchronize()  # one stream: the last batch done means all are
        finished = {id(ev) for ev, _ in self._inflight if wait or ev.query()}
        self._inflight = [(ev, st) for ev, st in self._inflight if id(ev) not in finished]
        out: list[str] = []
        back: dict[str, list[int]] = {}
        for rid, entry in list(self._entries.items()):
            if entry.tier is Tier.HOST or (entry.done is not None and id(entry.done) not in finished):
                continue
            if entry.done is not None:  # done already; the wait orders the compute stream after it all the same
                torch.cuda.current_stream().wait_event(entry.done)
            if entry.tier is Tier.OUT_PENDING:
                cache.allocator.free(entry.device)
                entry.tier, entry.device, entry.done = Tier.HOST, [], None
                out.append(rid)
            elif entry.tier is Tier.IN_PENDING:
                self._free.extend(reversed(entry.host))
                back[rid] = entry.device
                del self._entries[rid]
        return Completed(tuple(out), back)

    def drop(self, request_id: str) -> None:
        """Free a rotated request's host blocks (it was aborted or will be recomputed)."""
        entry = self._entries.get(request_id)
        if entry is None:
            raise KVRotationError(f"request {request_id!r} has no KV on host (dropped twice?)")
        if entry.tier is not Tier.HOST:
            raise KVRotationError(f"request {request_id!r} is {entry.tier.value}: complete the copy first")
        del self._entries[request_id]
        self._free.extend(reversed(entry.host))
