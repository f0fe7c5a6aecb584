"""A step's flat token batch: every scheduled sequence's new tokens, back to back."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from c2cq.services.executor.model.kv_cache import BlockTable


@dataclass(frozen=True, slots=True)
class SeqSpan:
    """One sequence's tokens in the flat batch: rows [start, end), which see KV positions [0, ctx_len)."""

    start: int
    end: int
    ctx_len: int
    table: BlockTable


@dataclass(frozen=True, slots=True)
class FlatBatch:
    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long, position of each token in its sequence
    slots: torch.Tensor  # [T] long, flat KV slot each token's K/V is written to
    rope_lens: torch.Tensor  # [T] long, the length its sequence reaches in this step (dynamic rope)
    spans: tuple[SeqSpan, ...]
    logits_rows: torch.Tensor  # [S] long, rows whose next-token logits are wanted

    def to(self, device: torch.device) -> "FlatBatch":
        """The same batch with its tensors on ``device`` (block tables stay host-side lists)."""
        return FlatBatch(input_ids=self.input_ids.to(device), positions=self.positions.to(device),
                         slots=self.slots.to(device), rope_lens=self.rope_lens.to(device), spans=self.spans,
                         logits_rows=self.logits_rows.to(device))

    @classmethod
    def build(cls, chunks: list[tuple[list[int], int, BlockTable]], want_logits: list[bool]) -> "FlatBatch":
        """From (new token ids, tokens already cached, block table) per sequence."""
        ids: list[int] = []
        positions, slots, rope_lens, spans, rows = [], [], [], [], []
        for (tokens, cached, table), want in zip(chunks, want_logits, strict=True):
            start, end = len(ids), len(ids) + len(tokens)
            ids.extend(tokens)
            ctx = cached + len(tokens)
            positions.append(torch.arange(cached, ctx))
            slots.append(table.slots(cached, ctx))
            rope_lens.append(torch.full((len(tokens),), ctx, dtype=torch.long))
            spans.append(SeqSpan(start, end, ctx, table))
            if want:
                rows.append(end - 1)
        return cls(
            input_ids=torch.tensor(ids, dtype=torch.long),
            positions=torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long),
            slots=torch.cat(slots) if slots else torch.zeros(0, dtype=torch.long),
            rope_lens=torch.cat(rope_lens) if rope_lens else torch.zeros(0, dtype=torch.long),
            spans=tuple(spans),
            logits_rows=torch.tensor(rows, dtype=torch.long),
        )
