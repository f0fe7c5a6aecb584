"""Client ↔ scheduler messages (ROUTER at the scheduler, DEALER at each client)."""

from __future__ import annotations

from typing import Union

import msgspec

from c2cq.schemas.base import Message
from c2cq.schemas.enums import ErrorCode, FinishReason


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    temperature: float = 0.0  # 0 → greedy
    top_k: int = 0  # 0 → off
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False


class SLO(msgspec.Struct, frozen=True, kw_only=True):
    ttft_ms: float | None = None
    tpot_ms: float | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int
    completion_tokens: int


class Timings(msgspec.Struct, frozen=True, kw_only=True):
    queued_ms: float  # accepted → assigned
    ttft_ms: float | None  # accepted → first token relayed (None when no token came)
    e2e_ms: float  # accepted → finished


class SubmitRequest(Message, frozen=True, kw_only=True, tag="submit"):
    request_id: str  # unique per request, chosen by the client library
    model: str
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    max_tokens: int = 128
    sampling: SamplingParams = SamplingParams()
    slo: SLO = SLO()
    client_request_id: str | None = None  # the user's own label, echoed back


class CancelRequest(Message, frozen=True, kw_only=True, tag="cancel"):
    request_id: str


class Ping(Message, frozen=True, kw_only=True, tag="ping"):
    nonce: int


class StatusQuery(Message, frozen=True, kw_only=True, tag="status_query"):
    nonce: int


class RequestAccepted(Message, frozen=True, kw_only=True, tag="accepted"):
    request_id: str
    model: str
    client_request_id: str | None = None


class TokensEmitted(Message, frozen=True, kw_only=True, tag="tokens"):
    request_id: str
    seq: int  # index of the first token of this batch in the request's output (0-based)
    token_ids: tuple[int, ...]
    text: str


class RequestFinished(Message, frozen=True, kw_only=True, tag="finished"):
    request_id: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    executor: str | None = None
    switched: bool = False  # the executor had to switch to this model for it (a cold start elsewhere)
    error_code: ErrorCode | None = None
    message: str | None = None


class RequestRejected(Message, frozen=True, kw_only=True, tag="rejected"):
    request_id: str | None  # None when the frame was too malformed to carry one
    code: ErrorCode
    message: str


class Pong(Message, frozen=True, kw_only=True, tag="pong"):
    nonce: int


class ExecutorStatus(msgspec.Struct, frozen=True, kw_only=True):
    executor_id: str
    state: str  # "ready" | "draining" | "lost"
    backend: str
    device: str
    model: str | None
    alpha: float
    active_requests: int
    queued_requests: int  # always 0 from this scheduler: it assigns a request when a slice takes it;
    #                       the waiting ones are StatusReply.waiting, by model


class StatusReply(Message, frozen=True, kw_only=True, tag="status"):
    nonce: int
    executors: tuple[ExecutorStatus, ...]
    requests_in_flight: int
    requests_total: int
    waiting: dict[str, int] = {}  # model → accepted requests not yet on a slice


class MetricsQuery(Message, frozen=True, kw_only=True, tag="metrics_query"):
    nonce: int


class MetricSeries(msgspec.Struct, frozen=True, kw_only=True):
    labels: tuple[str, ...]  # values, in the order of the family's label names
    value: float = 0.0  # a counter's or a gauge's value
    buckets: tuple[int, ...] = ()  # a histogram's count per bucket (not cumulative; the last is past the largest bound)
    sum: float = 0.0  # a histogram's sum of observations


class MetricFamily(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # "c2cq:…"; a counter's without its _total suffix
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...]  # label names
    bounds: tuple[float, ...] = ()  # a histogram's bucket upper bounds (+Inf implied)
    series: tuple[MetricSeries, ...] = ()


class MetricsReply(Message, frozen=True, kw_only=True, tag="metrics"):
    """The scheduler's metrics now (services/scheduler/metrics.py declares and explains them)."""

    nonce: int
    families: tuple[MetricFamily, ...]
    events: int = 0  # events folded into them so far


class ModelsQuery(Message, frozen=True, kw_only=True, tag="models_query"):
    """The catalog as the scheduler knows it: what a client on another host (``c2cq --connect``) can
    name, without reaching the control plane's catalog itself."""

    nonce: int


class ModelEntry(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    kind: str  # "real" | "sim"
    architecture: str
    parameters: int
    dtype: str
    vocab_size: int
    max_context: int


class ModelsReply(Message, frozen=True, kw_only=True, tag="models"):
    nonce: int
    models: tuple[ModelEntry, ...]
    error: str | None = None  # the catalog did not answer: ``models`` is what the scheduler last heard


ClientToScheduler = Union[SubmitRequest, CancelRequest, Ping, StatusQuery, MetricsQuery, ModelsQuery]
SchedulerToClient = Union[RequestAccepted, TokensEmitted, RequestFinished, RequestRejected, Pong, StatusReply,
                          MetricsReply, ModelsReply]
