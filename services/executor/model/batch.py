"""A step's flat token batch: every scheduled sequence's new tokens, back to back, and the metadata every
layer shares (positions, KV slots, the attention plan), built once per step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from c2cq.services.executor.model.attention import AttnMeta
from c2cq.services.executor.model.kv_cache import BlockTable


@dataclass(frozen=True, slots=True)
class FlatBatch:
    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long, position of each token in its sequence
    slots: torch.Tensor  # [T] long, flat KV slot each token's K/V is written to
    rope_lens: torch.Tensor  # [T] long, the length its sequence reaches in this step (dynamic rope)
    attn: AttnMeta
    logits_rows: torch.Tensor  # [S] long, rows whose next-token logits are wanted

    def to(self, device: torch.device) -> "FlatBatch":
        """The same batch with its tensors on ``device``."""
        return FlatBatch(input_ids=self.input_ids.to(device), positions=self.positions.to(device),
                         slots=self.slots.to(device), rope_lens=self.rope_lens.to(device),
                         attn=self.attn.to(device), logits_rows=self.logits_rows.to(device))

    @classmethod
    def build(cls, chunks: list[tuple[list[int], int, BlockTable]], want_logits: list[bool]) -> "FlatBatch":
        """From (new token ids, tokens already cached, block table) per sequence."""
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        rope_lens: list[int] = []
        spans, rows = [], []
        block_size = chunks[0][2].block_size if chunks else 1
        for (tokens, cached, table), want in zip(chunks, want_logits, strict=True):
            start, n = len(ids), len(tokens)
            ids.extend(tokens)
            ctx = cached + n
            positions.extend(range(cached, ctx))
            bs, blocks = table.block_size, table.blocks
            slots.extend(blocks[p // bs] * bs + p % bs for p in range(cached, ctx))
            rope_lens.extend([ctx] * n)
            spans.append((start, n, ctx, blocks))
            if want:
                rows.append(start + n - 1)
        t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
        return cls(input_ids=t(ids), positions=t(positions), slots=t(slots), rope_lens=t(rope_lens),
                   attn=AttnMeta.build(spans, block_size), logits_rows=t(rows))
