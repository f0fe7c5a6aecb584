"""The scheduler's own events: every input that changes its state, as it is written to the log.

Each carries ``at``, the scheduler's clock (time.monotonic, shared by every process of a host)
when the input arrived, so a replay folds the same inputs at the same times.
"""

from __future__ import annotations

from typing import Union

import msgspec

from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.client import SubmitRequest
from c2cq.schemas.executor import ExecutorToScheduler


class SchedEvent(msgspec.Struct, frozen=True, tag=True, kw_only=True, tag_field="t"):
    at: float


class Submitted(SchedEvent, frozen=True, kw_only=True, tag="submitted"):
    client: bytes  # the client's routing id
    msg: SubmitRequest
    info: ModelInfo | None = None  # the model as the catalog described it at that moment


class CancelAsked(SchedEvent, frozen=True, kw_only=True, tag="cancel_asked"):
    client: bytes
    request_id: str


class ExecutorSaid(SchedEvent, frozen=True, kw_only=True, tag="executor_said", omit_defaults=True):
    executor_id: str
    msg: ExecutorToScheduler
    # the CURVE public key (z85) it spoke with, set on a SliceReady only (its registration): the
    # executor's identity across hosts; "" over ipc (one host) or without CURVE. Omitted when "",
    # so the token stream's records stay as small as before.
    peer_key: str = ""


class ExecutorUnreachable(SchedEvent, frozen=True, kw_only=True, tag="executor_unreachable"):
    executor_id: str


class Ticked(SchedEvent, frozen=True, kw_only=True, tag="tick"):
    pass


class Recovered(SchedEvent, frozen=True, kw_only=True, tag="recovered"):
    """A new scheduler process took over the log: re-dispatch what was in flight, resend to clients."""


class Stopped(SchedEvent, frozen=True, kw_only=True, tag="stopped"):
    """A clean shutdown: requests in flight end with shutting_down, executors are forgotten."""


class PlanStepped(SchedEvent, frozen=True, kw_only=True, tag="plan_stepped"):
    """A controller step (derived: written by the scheduler, a no-op on replay, where the tick that
    caused it computes it again): the plan and the P, I, D terms that explain it."""

    executor_id: str
    model: str
    alpha: float
    chunk_tokens: int
    kernel: str  # hybrid_gemm | hbm_gemm | stream
    tpot_s: float  # measured
    tpot_target_s: float
    ttft_s: float
    ttft_target_s: float
    p: float  # α controller terms
    i: float
    d: float
    chunk_p: float
    chunk_i: float
    chunk_d: float
    link_scale: float  # < 1: the streamed share was scaled down to fit the shared link


class HostReported(SchedEvent, frozen=True, kw_only=True, tag="host_reported"):
    """A node's catalog said which models its host has published in shared memory, and which it is
    publishing (catalog.HostModels)."""

    host: str
    published: tuple[str, ...] = ()
    publishing: tuple[str, ...] = ()
    peer_key: str = ""  # the node catalog's CURVE public key (z85); "" without CURVE


SchedulerEvent = Union[Submitted, CancelAsked, ExecutorSaid, ExecutorUnreachable, Ticked, Recovered, Stopped,
                       PlanStepped, HostReported]
EVENT_TYPES: tuple[type, ...] = SchedulerEvent.__args__
