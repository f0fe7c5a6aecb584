"""One request's state inside the engine: tokens, KV blocks, random stream, streamed text."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from c2cq.services.executor.model.detokenizer import IncrementalDetokenizer
from c2cq.services.executor.model.kv_cache import BlockTable
from c2cq.services.executor.model.sampler import SamplingParams
from c2cq.services.executor.model.stop import StopText


@dataclass(slots=True)
class Sequence:
    request_id: str
    prompt_len: int
    params: SamplingParams
    tokens: list[int]  # prompt + generated
    table: BlockTable
    generator: torch.Generator
    detok: IncrementalDetokenizer | None
    stop_text: StopText
    arrival: float  # queue order: whole numbers as requests came; a recompute victim requeued behind a head
    num_cached: int = 0  # tokens whose K/V are in the cache
    preemptions: int = 0
    finish_reason: str | None = field(default=None)

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def pending(self) -> int:
        """Tokens still to run through the model before the next token can be sampled."""
        return len(self.tokens) - self.num_cached
