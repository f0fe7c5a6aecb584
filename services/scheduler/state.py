"""The scheduler's state and its outputs: plain data, no I/O."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.client import SubmitRequest
from c2cq.services.scheduler.validate import Limits


@dataclass(frozen=True, slots=True)
class ToClient:
    client: bytes  # the client's ZeroMQ identity
    msg: object


@dataclass(frozen=True, slots=True)
class ToExecutor:
    executor_id: str
    msg: object


@dataclass(slots=True)
class ExecutorView:
    executor_id: str
    boot_id: str
    backend: str
    device: str
    max_batch: int
    memory_budget_bytes: int
    link_bandwidth_bps: float
    state: str = "ready"  # ready | draining | lost
    model: str | None = None  # the model it holds (or is switching to)
    alpha: float = 0.0
    active: set[str] = field(default_factory=set)  # request ids assigned to it
    last_seen: float = 0.0
    last_seq: int = 0


@dataclass(slots=True)
class RequestView:
    submit: SubmitRequest
    client: bytes
    info: ModelInfo
    accepted_at: float
    executor: str | None = None
    assigned_at: float | None = None
    first_token_at: float | None = None
    emitted: int = 0  # tokens relayed to the client so far
    switched: bool = False


@dataclass(slots=True)
class State:
    limits: Limits = field(default_factory=Limits)
    heartbeat_timeout_s: float = 3.0
    max_wait_s: float = 60.0  # an accepted request with no executor for this long fails
    executors: dict[str, ExecutorView] = field(default_factory=dict)
    requests: dict[str, RequestView] = field(default_factory=dict)
    waiting: deque[str] = field(default_factory=deque)  # accepted, no executor yet (FIFO)
    total: int = 0
