"""The scheduler's state and its outputs: plain data, no I/O.

The state is msgspec Structs throughout so a snapshot is one msgpack encode, and every mapping
is an insertion-ordered dict (never a set), so a replay iterates in the same order whatever the
process's hash seed.
"""

from __future__ import annotations

import math

import msgspec

from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.client import RequestFinished, SubmitRequest
from c2cq.services.scheduler.costmodel import Estimates
from c2cq.services.scheduler.kvroom import KVView
from c2cq.services.scheduler.metrics import Metrics
from c2cq.services.scheduler.pid import PidState
from c2cq.services.scheduler.validate import Limits


# Commands are frozen msgspec Structs rather than frozen dataclasses: built for every output of
# every event, they cost ~0.3 µs each instead of ~1.6 µs (a frozen dataclass's __init__ goes
# through object.__setattr__); positional construction, attributes and equality are the same.


class ToClient(msgspec.Struct, frozen=True):
    client: bytes  # the client's ZeroMQ routing id
    msg: object


class ToExecutor(msgspec.Struct, frozen=True):
    executor_id: str
    msg: object


class ToLog(msgspec.Struct, frozen=True):
    """A derived record for the log (a controller step), written after the inputs that caused it."""

    event: object


Command = ToClient | ToExecutor | ToLog


class Config(msgspec.Struct, frozen=True, kw_only=True):
    limits: Limits = Limits()
    heartbeat_timeout_s: float = 3.0
    max_wait_s: float = 60.0  # an accepted request with no executor for this long fails
    max_migrations: int = 3  # a request whose executor is lost moves at most this often, then fails
    # starvation guard: a request waiting this long (or starve_share of its TTFT target, if sooner)
    # gets the next executor that frees up; that executor takes no new work until then
    starve_after_s: float = 5.0
    starve_share: float = 0.5
    starve_reserve_share: float = 0.5  # at most this share of the ready executors is held at once
    recent_s: float = 10.0  # finished requests are remembered this long (idempotent resubmit, resend)
    recent_max: int = 20_000
    # admission: per-SLO-class bounded queues (class by TTFT target: interactive ≤ the bound < standard; none: batch)
    interactive_ttft_ms: float = 2_000.0
    queue_limits: dict[str, int] = msgspec.field(
        default_factory=lambda: {"interactive": 2_000, "standard": 4_000, "batch": 4_000})
    # cost-model priors, refined by measured StepStats (an H100 1g.10gb MIG slice)
    hbm_bps_prior: float = 3.35e12 / 7
    flops_prior: float = 989e12 / 7
    # the controller
    default_ttft_ms: float = 10_000.0
    default_tpot_ms: float = 200.0
    slo_margin: float = 0.8  # aim at this share of the SLO
    plan_interval_s: float = 0.5
    base_chunk_tokens: int = 512  # the chunk before anything is known of a slice (the roofline sets it after)
    max_chunk_tokens: int = 8192  # the largest prefill chunk a plan asks for
    # keep the residency memory allows (α at the memory ceiling) even when TPOT has slack: HBM that
    # no KV needs buys nothing idle; False: α settles at the roofline's floor for TPOT
    keep_resident: bool = True
    # admission rejects only an estimate over admit_margin × the TTFT target (the estimate is a
    # roofline: a request a little over it may still make it, and a rejection is a certain miss)
    admit_margin: float = 1.25
    weight_share: float = 0.8  # at most this share of a slice's memory holds weights (the rest: KV)
    link_headroom: float = 0.9
    alpha_step_min: float = 0.02  # smaller α changes are not sent
    demand_tau_s: float = 60.0  # a model's demand (requests) decays with this time constant


class Batch(msgspec.Struct, frozen=True, array_like=True):
    seq: int
    token_ids: tuple[int, ...]
    text: str


class Plan(msgspec.Struct, kw_only=True):
    alpha: float = 0.0
    chunk_tokens: int = 512
    kernel: str = "stream"
    alpha_pid: PidState = msgspec.field(default_factory=PidState)
    chunk_pid: PidState = msgspec.field(default_factory=PidState)
    last_at: float = -math.inf


class ExecutorView(msgspec.Struct, kw_only=True):
    executor_id: str
    boot_id: str
    backend: str
    device: str
    max_batch: int
    memory_budget_bytes: int
    link_bandwidth_bps: float
    state: str = "ready"  # ready | draining | unconfirmed (after a scheduler restart) | lost
    model: str | None = None  # the model it holds (or is switching to)
    alpha: float = 0.0
    active: dict[str, None] = {}  # request ids assigned to it, in assignment order
    last_seen: float = 0.0
    to_abort: list[str] = []  # executor-side ids of attempts to abort once it is heard from again
    link_group: str = ""  # executors of one group share one host link
    # where the placement indexes of the State list it (kept in step by indexes.reindex)
    in_idle: bool = False
    serving_model: str | None = None
    est: Estimates
    plan: Plan = msgspec.field(default_factory=Plan)
    chunk_tokens: int = 512
    ttft_s: float = 0.0  # measured TTFT of its requests (EWMA, from assignment)
    used_at: float = 0.0  # when a request of its model was last assigned to it or left it (eviction: LRU)
    on_link: bool = False  # counted in its link's ``busy`` (kept in step by indexes.reindex / relink)
    host: str = ""  # the host it runs on (SliceReady.host); "" on one host
    kv: KVView | None = None  # its KV pools as last reported (None: it reports none; kvroom.py)
    peer_key: str = ""  # the CURVE public key it registered with (ExecutorSaid.peer_key); "" without CURVE


class LinkLoad(msgspec.Struct, kw_only=True):
    """One shared host link, summed over its live members (recomputed whenever a member changes,
    never updated by differences, so no rounding drifts in)."""

    cap_bps: float = 0.0  # the best link bandwidth measured by any member
    used_bps: float = 0.0  # what the members draw now
    busy: int = 0  # members serving with α < 1: each reads over the link at every step (streams or copies)


class HostView(msgspec.Struct, kw_only=True):
    """What a node's catalog last said of its host (hosts.host_reported)."""

    published: dict[str, None] = {}
    publishing: dict[str, None] = {}
    at: float = 0.0
    peer_key: str = ""  # the CURVE public key its catalog reported with; "" without CURVE


class RequestView(msgspec.Struct, kw_only=True):
    submit: SubmitRequest
    klass: str
    client: bytes
    info: ModelInfo | None
    accepted_at: float
    executor: str | None = None
    assigned_at: float | None = None
    first_token_at: float | None = None
    batches: list[Batch] = []  # what the client was sent, in order
    emitted: int = 0  # tokens relayed to the client so far
    switched: bool = False
    attempt: int = 0  # +1 per re-dispatch; names the executor-side id of the attempt
    migrations: int = 0  # re-dispatches caused by a lost executor
    finished: RequestFinished | None = None
    finished_at: float | None = None

    @property
    def request_id(self) -> str:
        return self.submit.request_id

    def token_ids(self) -> tuple[int, ...]:
        if not self.batches:
            return ()
        return tuple(t for b in self.batches for t in b.token_ids)


CLASSES = ("interactive", "standard", "batch")  # dispatch order


class State(msgspec.Struct, kw_only=True):
    cfg: Config = Config()
    executors: dict[str, ExecutorView] = {}
    requests: dict[str, RequestView] = {}  # accepted and not finished
    # accepted requests with no executor yet, in dispatch order: by SLO class, and by model (both
    # lists may hold stale ids — placed or finished — that are skipped and dropped when met)
    queues: dict[str, list[str]] = {}
    by_model: dict[str, list[str]] = {}
    queued: dict[str, int] = {}  # SLO class → live requests waiting (exact)
    exec_ids: dict[str, str] = {}  # executor-side id of the current attempt → request id
    recent: dict[str, RequestView] = {}  # finished within cfg.recent_s, in finishing order
    models: dict[str, tuple[int, int]] = {}  # model → (bytes, parameters), as submissions described them
    groups: dict[str, list[str]] = {}  # link group → executor ids
    # placement indexes, maintained incrementally by indexes.reindex / indexes.relink so a placement
    # looks at its candidates only; part of the snapshot like everything else (a deterministic fold)
    idle: dict[str, None] = {}  # ready, not reserved, nothing assigned
    serving: dict[str, dict[str, None]] = {}  # model → ready, not reserved executors running it
    links: dict[str, LinkLoad] = {}  # link group → its load
    reserved: dict[str, str] = {}  # executor → the starved request it is held for (starvation guard)
    # model → (requests, decayed by cfg.demand_tau_s, as of when): how much each model is asked for
    demand: dict[str, tuple[float, float]] = {}
    hosts: dict[str, HostView] = {}  # host → its catalog's last report; empty on one host (hosts.py)
    total: int = 0
    applied: int = 0  # events folded so far
    metrics: Metrics = msgspec.field(default_factory=Metrics)  # folded by core.apply (metrics.observe)

    def waiting(self) -> int:
        return sum(self.queued.values())

    def waiting_ids(self, klass: str) -> list[str]:
        """The live waiting requests of a class, in dispatch order (stale ids left out)."""
        out: dict[str, None] = {}
        for rid in self.queues.get(klass, ()):
            req = self.requests.get(rid)
            if req is not None and req.executor is None:
                out[rid] = None
        return list(out)


def exec_request_id(req: RequestView) -> str:
    """The id an executor knows the request's current attempt by (stale attempts never collide)."""
    return req.submit.request_id if req.attempt == 0 else f"{req.submit.request_id}~{req.attempt}"


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(State)


def encode_state(st: State) -> bytes:
    return _ENC.encode(st)


def decode_state(body: bytes, cfg: Config | None = None) -> State:
    st = _DEC.decode(body)
    if cfg is not None:
        st.cfg = cfg
    return st
