"""Paged KV cache: fixed-size blocks in one pool per layer, a block table per sequence."""

from __future__ import annotations

from collections.abc import Callable

import torch

from c2cq.services.executor.model.errors import OutOfKVBlocks


class BlockAllocator:
    """Hands out block ids from a fixed pool; raises OutOfKVBlocks when it cannot."""

    def __init__(self, num_blocks: int, on_first_use: Callable[[list[int]], None] | None = None) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first
        self._on_first_use = on_first_use
        self._used = 0  # blocks [0, _used) have been handed out at least once

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise OutOfKVBlocks(f"need {n} KV blocks, {len(self._free)} of {self.num_blocks} free")
        got = [self._free.pop() for _ in range(n)]
        fresh = [b for b in got if b >= self._used]
        if fresh:
            self._used = max(fresh) + 1
            if self._on_first_use is not None:
                self._on_first_use(fresh)
        return got

    def free_set(self) -> frozenset[int]:
        """The ids free now (a copy; for checks that a block handed to someone is really in use)."""
        return frozenset(self._free)

    def free(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))


class BlockTable:
    """The blocks one sequence's KV occupies, in position order."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.blocks: list[int] = []

    def blocks_needed(self, num_tokens: int) -> int:
        """Blocks to add so that positions [0, num_tokens) have a slot."""
        return max(0, -(-num_tokens // self.block_size) - len(self.blocks))

    def grow(self, allocator: BlockAllocator, num_tokens: int) -> None:
        self.blocks.extend(allocator.allocate(self.blocks_needed(num_tokens)))

    def release(self, allocator: BlockAllocator) -> None:
        allocator.free(self.blocks)
        self.blocks = []

    def slots(self, start: int, end: int) -> torch.Tensor:
        """Flat slot ids (block * block_size + offset) of positions [start, end)."""
        pos = torch.arange(start, end)
        table = torch.tensor(self.blocks, dtype=torch.long)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size


class KVCache:
    """Per layer one pool of [num_blocks, block_size, 2, kv_heads, head_dim] (K then V of each slot side by
    side: attention gathers both with one indexed copy); ``k``/``v`` are its halves."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks, on_first_use=self._zero)
        shape = (num_blocks, block_size, 2, kv_heads, head_dim)
        # empty, not zeros: untouched pages cost no memory, so the pool's resident size follows the tokens
        # actually cached. Attention gathers whole blocks and masks the slots past a sequence's length, and
        # a masked score or value must still be finite (0 · NaN is NaN): a block is zeroed when it is first
        # handed out, after which its slots only ever hold values some sequence wrote.
        self.pools = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.k = [p[:, :, 0] for p in self.pools]
        self.v = [p[:, :, 1] for p in self.pools]
        self._k_slots = [k.flatten(0, 1) for k in self.k]  # [blocks · block_size, kv_heads, head_dim] views
        self._v_slots = [v.flatten(0, 1) for v in self.v]

    def _zero(self, blocks: list[int]) -> None:
        ids = torch.tensor(blocks, dtype=torch.long, device=self.pools[0].device)
        for pool in self.pools:
            pool.index_fill_(0, ids, 0)

    def new_table(self) -> BlockTable:
        return BlockTable(self.block_size)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [tokens, kv_heads, head_dim] at flat ``slots``."""
        # one indexed copy each into the pool's K and V halves (a stack of the two first and one copy: 15 µs
        # a layer at batch 8 against 9)
        self._k_slots[layer].index_copy_(0, slots, k)
        self._v_slots[layer].index_copy_(0, slots, v)

    def read(self, layer: int, table: BlockTable, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V of positions [0, length) of one sequence, each [length, kv_heads, head_dim]."""
        n = -(-length // self.block_size)
        ids = torch.tensor(table.blocks[:n], dtype=torch.long, device=self.k[layer].device)
        k = self.k[layer][ids].flatten(0, 1)[:length]
        v = self.v[layer][ids].flatten(0, 1)[:length]
        return k, v
