"""What every executor backend (sim, cpu, cuda) provides to the slice loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.schemas.executor import AssignRequest


class Output(msgspec.Struct, frozen=True):
    """One request's output of one step. A frozen msgspec Struct (not a frozen dataclass): made for
    every sequence of every step, it costs ~0.1 µs instead of ~1.7 µs (a frozen dataclass's
    __init__ goes through object.__setattr__); positional construction and equality are the same."""

    request_id: str
    index: int  # index of the first new token in the request's output
    token_ids: tuple[int, ...]
    text: str
    finish: FinishReason | None = None
    prompt_tokens: int = 0
    error: str | None = None
    code: ErrorCode | None = None  # with error: its code (INTERNAL when None)


@dataclass(slots=True)
class StepResult:
    outputs: list[Output] = field(default_factory=list)
    busy_s: float = 0.0  # the step's duration (measured, or modelled by the sim backend)
    prefill_tokens: int = 0
    decode_tokens: int = 0
    bytes_hbm: int = 0
    bytes_host: int = 0
    kv_blocks: tuple[int, int, int, int] | None = None  # (device used, free, host used, free) after the step
    kv_rotations: int = 0
    kv_bytes_rotated: int = 0

    def accumulate(self, other: "StepResult") -> None:
        """Add another step's time, tokens and bytes to this window's totals (outputs are not kept)."""
        self.busy_s += other.busy_s
        self.prefill_tokens += other.prefill_tokens
        self.decode_tokens += other.decode_tokens
        self.bytes_hbm += other.bytes_hbm
        self.bytes_host += other.bytes_host
        self.kv_blocks = other.kv_blocks if other.kv_blocks is not None else self.kv_blocks
        self.kv_rotations += other.kv_rotations
        self.kv_bytes_rotated += other.kv_bytes_rotated

    def kv_stats(self) -> dict[str, int | None]:
        """The StepStats KV fields of this window (block counts None where the backend has no KV pool)."""
        used, free, host_used, host_free = self.kv_blocks if self.kv_blocks is not None else (None,) * 4
        return {"kv_device_used": used, "kv_device_free": free, "kv_host_used": host_used,
                "kv_host_free": host_free, "kv_rotations": self.kv_rotations,
                "kv_bytes_rotated": self.kv_bytes_rotated}


class Backend(Protocol):
    name: str
    device: str
    memory_budget_bytes: int
    link_bandwidth_bps: float
    max_batch: int
    blocking: bool  # True: step() computes for real and must run off the event loop

    def switch(self, info: ModelInfo) -> None: ...
    def add(self, req: AssignRequest) -> None: ...
    def abort(self, request_id: str) -> None: ...
    def has_work(self) -> bool: ...
    def step(self, chunk_tokens: int) -> StepResult: ...
    def alpha(self) -> float: ...
    def set_alpha(self, alpha: float) -> None: ...
