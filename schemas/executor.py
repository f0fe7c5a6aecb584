"""Scheduler ↔ executor messages (ROUTER at the scheduler, DEALER with identity = executor id)."""

from __future__ import annotations

from typing import Union


from c2cq.schemas.base import Event, Message
from c2cq.schemas.client import SLO, SamplingParams
from c2cq.schemas.enums import ErrorCode, FinishReason


# ---- scheduler → executor (commands) ---------------------------------------------------------


class AssignRequest(Message, frozen=True, kw_only=True, tag="assign"):
    request_id: str
    model: str
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    # token-only migration: tokens already delivered to the client; the executor recomputes
    # their KV and continues from there, numbering new tokens from len(resume_token_ids).
    resume_token_ids: tuple[int, ...] = ()
    # the request's targets (the client's, else the scheduler's defaults; none: the executor's defaults)
    # and how long it already waited at the scheduler: its TTFT deadline at the executor is
    # arrival + slo.ttft_ms - waited_ms (what KV rotation weighs its slack against)
    slo: SLO = SLO()
    waited_ms: float = 0.0


class AbortRequest(Message, frozen=True, kw_only=True, tag="abort"):
    request_id: str


class ApplyPlan(Message, frozen=True, kw_only=True, tag="plan"):
    alpha: float  # HBM-resident share of the weights of the model being served, in [0, 1]
    chunk_tokens: int  # prefill chunk size


class PreloadModel(Message, frozen=True, kw_only=True, tag="preload"):
    model: str
    alpha: float = 1.0


class EvictModel(Message, frozen=True, kw_only=True, tag="evict"):
    model: str


class Drain(Message, frozen=True, kw_only=True, tag="drain"):
    """Finish what is in flight, accept nothing new."""


SchedulerToExecutor = Union[AssignRequest, AbortRequest, ApplyPlan, PreloadModel, EvictModel, Drain]


# ---- executor → scheduler (events) -----------------------------------------------------------


class SliceReady(Event, frozen=True, kw_only=True, tag="slice_ready"):
    executor_id: str
    boot_id: str  # new per process start: a new boot means the previous incarnation's work is gone
    backend: str
    device: str  # "cpu:0", "cuda:0", "MIG-…", "sim:h100-1g"
    memory_budget_bytes: int
    link_bandwidth_bps: float  # bytes/s host → device (measured where possible)
    max_batch: int
    # slices with the same link group share one host link (the MIG slices of one GPU: its UUID;
    # CPU slices: "host"); None: a link of its own. Set by the supervisor, which knows the parents.
    link_group: str | None = None
    host: str | None = None  # the host (node) it runs on: placement needs its catalog there to publish the model


class TokensProduced(Event, frozen=True, kw_only=True, tag="tokens_produced"):
    request_id: str
    index: int  # index of the first token in the request's output
    token_ids: tuple[int, ...]
    text: str


class RequestCompleted(Event, frozen=True, kw_only=True, tag="completed"):
    request_id: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    error_code: ErrorCode | None = None
    message: str | None = None


class StepStats(Event, frozen=True, kw_only=True, tag="step_stats"):
    step_s: float
    tokens: int
    prefill_tokens: int
    decode_tokens: int
    batch: int
    bytes_hbm: int  # weight bytes read from device memory in the step
    bytes_host: int  # weight bytes read from host memory in the step
    model: str | None = None
    # KV in two tiers, at the end of the window (None: the slice does not report it)
    kv_device_used: int | None = None  # device KV blocks held by requests
    kv_device_free: int | None = None
    kv_host_used: int | None = None  # host KV blocks held by rotated requests
    kv_host_free: int | None = None
    kv_rotations: int = 0  # requests rotated out or back in over the window
    kv_bytes_rotated: int = 0  # bytes copied between the tiers over the window, both directions


class ModelResident(Event, frozen=True, kw_only=True, tag="model_resident"):
    model: str | None  # None: nothing held
    alpha: float
    bytes_resident: int
    switched_s: float | None = None  # time the switch took to the first servable state


class Heartbeat(Event, frozen=True, kw_only=True, tag="heartbeat"):
    executor_id: str
    boot_id: str
    active: int
    waiting: int
    draining: bool = False


ExecutorToScheduler = Union[SliceReady, TokensProduced, RequestCompleted, StepStats, ModelResident, Heartbeat]
