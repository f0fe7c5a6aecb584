"""The scheduler's metrics (pure): counters and histograms folded from the same events as its state.

Every request, whichever client sent it (the ZeroMQ client, the loadgen, the HTTP gateway),
goes through the scheduler, so its metrics are computed here: :func:`observe` is called by
``core.apply`` with each event and the commands it produced, and folds them into
``State.metrics``; :func:`reply` turns that fold, plus gauges read off the state as it is now
(running and waiting requests, α per slice, link bandwidth, KV blocks per tier), into a ``MetricsReply`` for a
``MetricsQuery``. Names, types, labels and buckets are declared once, in :data:`FAMILIES`:
vLLM's metrics under a ``c2cq:`` prefix (same types, same buckets, the same ``model_name`` and
``finished_reason`` labels), then c2cq's own.

Times are the events' own (``at``: the scheduler's clock when the input arrived), never a clock
read here, so folding the same events gives the same values.

What a restart does to them. The metrics are part of the state, hence part of every snapshot
(journal.py), and the events after a snapshot are replayed through ``core.apply`` on start
(main.py), which calls :func:`observe` again: a scheduler killed (kill -9) or stopped and
started again on the same home comes back with exactly the values it had after the last event
it made durable — counters do not reset and nothing is counted twice. Specifically:

- a ``Recovered`` event and a client's repeated submit re-send what clients were sent
  (accepts, token batches, finishes); those re-sends are not counted again: a request is
  counted accepted once (while it is in flight and not yet known here), its tokens once per
  output position, its finish once (its record here is dropped at the finish);
- what an event never made durable (the batch in flight at a crash) was never acted on, and is
  not counted;
- counters reset only when the log does: a new home, a deleted ``scheduler/events.db``, or a
  snapshot written by a version without metrics (the counters then start at zero from that
  snapshot's point, which Prometheus treats as a counter reset);
- the gauges are not folded: they are read off the state at each query, so after a restart
  they show the restarted scheduler's state (requests re-dispatched, executors unconfirmed
  until they speak again).

Not counted here: frames the shell rejects as malformed before they become events (they never
reach the core), and read-only queries.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from c2cq.schemas.client import (
    MetricFamily,
    MetricSeries,
    MetricsReply,
    RequestAccepted,
    RequestFinished,
    RequestRejected,
    SubmitRequest,
    TokensEmitted,
)
from c2cq.schemas.enums import FinishReason
from c2cq.schemas.executor import ModelResident, StepStats

if TYPE_CHECKING:
    from c2cq.services.scheduler.state import State

PREFIX = "c2cq:"
SEP = "\x1f"  # joins label values into one key (never part of a model name, executor id or code)


class Family(NamedTuple):
    name: str  # with the prefix; a counter's name without its _total suffix (as prometheus-client wants)
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...]
    bounds: tuple[float, ...] = ()  # a histogram's bucket upper bounds (+Inf implied)


# vLLM's buckets (vllm/v1/metrics/loggers.py), so dashboards and SLO queries carry over
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)  # vLLM's 1-2-5
SWITCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

M, R, C = ("model_name",), ("model_name", "finished_reason"), ("model_name", "code")
_DECLARED = [
    # -- vLLM's --------------------------------------------------------------------------------
    Family("time_to_first_token_seconds", "histogram", "Time to first token (accepted → first token relayed).", M,
           TTFT_BUCKETS),
    Family("inter_token_latency_seconds", "histogram",
           "Time between consecutive output tokens (a batch of n tokens after a gap g counts n times g/n; "
           "the tokens that arrive with the first one count 0).", M, ITL_BUCKETS),
    Family("request_time_per_output_token_seconds", "histogram",
           "Mean time per output token after the first, per request of two or more tokens.", M, ITL_BUCKETS),
    Family("e2e_request_latency_seconds", "histogram", "End-to-end request latency (accepted → finished).", M,
           REQUEST_BUCKETS),
    Family("request_queue_time_seconds", "histogram", "Time a request waited for a slice (accepted → assigned).", M,
           REQUEST_BUCKETS),
    Family("request_prompt_tokens", "histogram", "Prompt tokens per finished request.", M, TOKEN_BUCKETS),
    Family("request_generation_tokens", "histogram", "Output tokens per finished request.", M, TOKEN_BUCKETS),
    Family("num_requests_running", "gauge", "Requests on a slice now.", M),
    Family("num_requests_waiting", "gauge", "Accepted requests waiting for a slice now.", M),
    Family("prompt_tokens", "counter", "Prompt tokens of finished requests.", M),
    Family("generation_tokens", "counter", "Output tokens relayed to clients.", M),
    Family("request_success", "counter", "Finished requests by finish reason (stop, length, cancelled, error).", R),
    # -- c2cq's own ----------------------------------------------------------------------------
    Family("requests_accepted", "counter", "Requests accepted.", M),
    Family("requests_rejected", "counter", "Requests rejected at submission (or cancels of unknown requests), "
           "by error code; model_name is empty unless the model is one a request was accepted for.", C),
    Family("request_errors", "counter", "Accepted requests that ended in an error, by error code.", C),
    Family("requests_switched", "counter",
           "Finished requests whose slice had to switch to their model (RequestFinished.switched).", M),
    Family("model_switches", "counter", "Model switches reported by the slices.", ("executor", "model_name")),
    Family("model_switch_latency_seconds", "histogram", "Time a slice took from a switch to a servable model.", M,
           SWITCH_BUCKETS),
    Family("slo_requests", "counter", "Finished requests that carried an SLO target, by SLO class and target "
           "(ttft, tpot, or all: any target).", ("slo_class", "target")),
    Family("slo_attained", "counter", "Of those, the ones that ended normally (stop or length) within the target "
           "(all: within every target they carried).", ("slo_class", "target")),
    Family("weight_bytes_read", "counter", "Weight bytes the slices read, from device memory (HBM) or host memory.",
           ("executor", "memory")),
    Family("executor_tokens", "counter", "Tokens the slices computed (StepStats), by phase (prefill, decode).",
           ("executor", "phase")),
    Family("executor_alpha", "gauge", "The HBM-resident share α of the model a slice serves.",
           ("executor", "model_name")),
    Family("executors", "gauge", "Slices known to the scheduler, by state.", ("state",)),
    Family("link_bandwidth_bytes_per_second", "gauge", "Host → device link bandwidth, as measured, per link group.",
           ("link_group",)),
    Family("link_used_bytes_per_second", "gauge", "Host → device link traffic the slices draw now, per link group.",
           ("link_group",)),
    Family("kv_blocks_used", "gauge", "KV blocks held by requests, per slice and tier (device, host: rotated out), "
           "as the slice last reported.", ("executor", "tier")),
    Family("kv_blocks_free", "gauge", "Free KV blocks per slice and tier, as the slice last reported.",
           ("executor", "tier")),
    Family("kv_rotations", "counter", "Requests a slice rotated between its KV tiers (out or back in).",
           ("executor",)),
    Family("kv_bytes_rotated", "counter", "KV bytes a slice copied between its tiers, both directions.",
           ("executor",)),
]
# by name without the prefix (as the fold files them) → the declaration, named with it
FAMILIES: dict[str, Family] = {f.name: f._replace(name=PREFIX + f.name) for f in _DECLARED}
_EXECUTOR_STATES = ("ready", "draining", "unconfirmed", "lost")


class Hist(msgspec.Struct, array_like=True):
    counts: list[int]  # per bucket (not cumulative), the last one past the largest bound
    sum: float = 0.0


class Live(msgspec.Struct, array_like=True):
    """What is counted of a request in flight."""

    model: str
    klass: str
    accepted_at: float
    ttft_ms: float | None
    tpot_ms: float | None
    emitted: int = 0  # output tokens counted
    first_at: float | None = None
    last_at: float | None = None


class Metrics(msgspec.Struct, kw_only=True):
    counters: dict[str, dict[str, float]] = {}  # family → label key → value
    hists: dict[str, dict[str, Hist]] = {}
    live: dict[str, Live] = {}  # request id → what is counted of it so far

    def __post_init__(self) -> None:
        # every family has its dict, also in a snapshot of a version that declared fewer
        for name, f in FAMILIES.items():
            if f.kind == "counter":
                self.counters.setdefault(name, {})
            elif f.kind == "histogram":
                self.hists.setdefault(name, {})


# ---- the fold ------------------------------------------------------------------------------------
# Called for every event the scheduler folds, so written for speed: a type → handler table, label
# keys joined by hand, the per-batch token path inlined (bench/scheduler_metrics.py measures it).


def _inc(series: dict[str, float], k: str, by: float = 1.0) -> None:
    series[k] = series.get(k, 0.0) + by


def _hist(series: dict[str, Hist], k: str, bounds: tuple[float, ...], v: float, n: int = 1) -> None:
    h = series.get(k)
    if h is None:
        h = series[k] = Hist(counts=[0] * (len(bounds) + 1))
    h.counts[bisect_left(bounds, v)] += n  # the first bucket whose bound is >= v (Prometheus' le)
    h.sum += v * n


def observe(st: "State", e, out: list) -> None:
    """Fold one event (and the commands it produced) into ``st.metrics``."""
    m = st.metrics
    msg = getattr(e, "msg", None)
    on = _ON_INPUT.get(type(msg))
    if on is not None:
        on(st, m, e, msg)
    if out:
        get = _ON_OUTPUT.get
        for o in out:
            c = getattr(o, "msg", None)
            on = get(type(c))
            if on is not None:
                on(st, m, e, c)


def _stats(st: "State", m: Metrics, e, s: StepStats) -> None:
    if e.executor_id not in st.executors:
        return  # a slice that never announced itself
    eid, C = e.executor_id, m.counters
    # counters only grow: a negative figure (a broken executor) is not counted
    if s.bytes_hbm > 0 or s.bytes_host > 0:
        _inc_two(C["weight_bytes_read"], eid, "device", s.bytes_hbm, "host", s.bytes_host)
    if s.prefill_tokens > 0 or s.decode_tokens > 0:
        _inc_two(C["executor_tokens"], eid, "prefill", s.prefill_tokens, "decode", s.decode_tokens)
    if s.kv_rotations > 0:
        _inc(m.counters["kv_rotations"], eid, s.kv_rotations)
    if s.kv_bytes_rotated > 0:
        _inc(m.counters["kv_bytes_rotated"], eid, s.kv_bytes_rotated)


def _inc_two(series: dict[str, float], eid: str, ka: str, va: float, kb: str, vb: float) -> None:
    """Two of an executor's counters, each only if positive (every StepStats comes here: one call, not four)."""
    if va > 0:
        k = eid + SEP + ka
        series[k] = series.get(k, 0.0) + va
    if vb > 0:
        k = eid + SEP + kb
        series[k] = series.get(k, 0.0) + vb


def _resident(st: "State", m: Metrics, e, r: ModelResident) -> None:
    t = r.switched_s
    # a NaN or an infinity would stay in the histogram's sum for good
    if t is not None and 0.0 <= t < math.inf and r.model in st.models and e.executor_id in st.executors:
        _inc(m.counters["model_switches"], e.executor_id + SEP + r.model)
        _hist(m.hists["model_switch_latency_seconds"], r.model, SWITCH_BUCKETS, t)


def _accepted(st: "State", m: Metrics, e, c: RequestAccepted) -> None:
    req = st.requests.get(c.request_id)
    if req is None or c.request_id in m.live:
        return  # a re-send of an accept counted before
    s = req.submit
    m.live[c.request_id] = Live(model=s.model, klass=req.klass, accepted_at=req.accepted_at, ttft_ms=s.slo.ttft_ms,
                                tpot_ms=s.slo.tpot_ms)
    _inc(m.counters["requests_accepted"], s.model)


def _rejected(st: "State", m: Metrics, e, c: RequestRejected) -> None:
    msg = getattr(e, "msg", None)
    # labelled by model only where it is one the scheduler has served (accepted a request of): a
    # client must not add a series per made-up name; a cancel names no model
    model = msg.model if isinstance(msg, SubmitRequest) and msg.model in st.models else ""
    _inc(m.counters["requests_rejected"], model + SEP + c.code)


def _tokens(st: "State", m: Metrics, e, c: TokensEmitted) -> None:
    r = m.live.get(c.request_id)
    end = c.seq + len(c.token_ids)
    if r is None or end <= r.emitted:
        return  # a re-send (or a request accepted before metrics existed)
    now, model = e.at, r.model
    n = end - (c.seq if c.seq > r.emitted else r.emitted)
    if r.first_at is None:
        r.first_at = now
        _hist(m.hists["time_to_first_token_seconds"], model, TTFT_BUCKETS, now - r.accepted_at)
        if n > 1:
            _hist(m.hists["inter_token_latency_seconds"], model, ITL_BUCKETS, 0.0, n - 1)
    else:  # the hot path (every batch after the first), inlined
        gap = (now - r.last_at) / n
        series = m.hists["inter_token_latency_seconds"]
        h = series.get(model)
        if h is None:
            h = series[model] = Hist(counts=[0] * (len(ITL_BUCKETS) + 1))
        h.counts[bisect_left(ITL_BUCKETS, gap)] += n
        h.sum += gap * n
    r.last_at = now
    r.emitted = end
    gen = m.counters["generation_tokens"]
    gen[model] = gen.get(model, 0.0) + n


def _finished(st: "State", m: Metrics, e, c: RequestFinished) -> None:
    r = m.live.pop(c.request_id, None)
    if r is None:
        return  # a re-send of a finish counted before
    C, H, model, t, reason = m.counters, m.hists, r.model, c.timings, c.finish_reason
    _inc(C["request_success"], model + SEP + reason)
    _inc(C["prompt_tokens"], model, c.usage.prompt_tokens)
    _hist(H["e2e_request_latency_seconds"], model, REQUEST_BUCKETS, t.e2e_ms / 1e3)
    _hist(H["request_queue_time_seconds"], model, REQUEST_BUCKETS, t.queued_ms / 1e3)
    _hist(H["request_prompt_tokens"], model, TOKEN_BUCKETS, c.usage.prompt_tokens)
    _hist(H["request_generation_tokens"], model, TOKEN_BUCKETS, r.emitted)
    if c.switched:
        _inc(C["requests_switched"], model)
    if reason == _ERROR:
        _inc(C["request_errors"], model + SEP + (c.error_code or "internal"))
    tpot = (r.last_at - r.first_at) / (r.emitted - 1) if r.emitted > 1 else None
    if tpot is not None:
        _hist(H["request_time_per_output_token_seconds"], model, ITL_BUCKETS, tpot)
    if (r.ttft_ms is None and r.tpot_ms is None) or reason == _CANCELLED:
        return  # a cancel is the client's choice, not a miss; no target, nothing to attain
    # as the loadgen judges it (report.meets_slo): ended normally, TTFT and TPOT within their
    # targets; a reply of one token has no TPOT, so it meets any TPOT target
    ok = reason == _LENGTH or reason == _STOP
    asked, hit = C["slo_requests"], C["slo_attained"]
    met = ok
    if r.ttft_ms is not None:
        good = ok and t.ttft_ms is not None and t.ttft_ms <= r.ttft_ms
        _inc(asked, r.klass + SEP + "ttft")
        _inc(hit, r.klass + SEP + "ttft", float(good))
        met = good
    if r.tpot_ms is not None:
        good = ok and (tpot is None or tpot * 1e3 <= r.tpot_ms)
        _inc(asked, r.klass + SEP + "tpot")
        _inc(hit, r.klass + SEP + "tpot", float(good))
        met = met and good
    _inc(asked, r.klass + SEP + "all")
    _inc(hit, r.klass + SEP + "all", float(met))


_STOP, _LENGTH, _CANCELLED, _ERROR = FinishReason.STOP, FinishReason.LENGTH, FinishReason.CANCELLED, FinishReason.ERROR
_ON_INPUT = {StepStats: _stats, ModelResident: _resident}
_ON_OUTPUT = {TokensEmitted: _tokens, RequestFinished: _finished, RequestAccepted: _accepted,
              RequestRejected: _rejected}


# ---- the snapshot --------------------------------------------------------------------------------


def gauges(st: "State") -> dict[str, dict[str, float]]:
    """The gauges, read off the state as it is now (not folded: nothing of them needs replaying)."""
    running = {model: 0.0 for model in st.models}  # every model seen shows 0 rather than vanishing
    waiting = dict(running)
    for req in st.requests.values():
        side = waiting if req.executor is None else running
        side[req.submit.model] = side.get(req.submit.model, 0.0) + 1
    states = {s: 0.0 for s in _EXECUTOR_STATES}
    alpha: dict[str, float] = {}
    used: dict[str, float] = {}
    free: dict[str, float] = {}
    for x in st.executors.values():
        states[x.state] = states.get(x.state, 0.0) + 1
        if x.model is not None and x.state != "lost":
            alpha[x.executor_id + SEP + x.model] = x.alpha
        kv = x.kv
        if kv is not None and x.state != "lost":
            eid = x.executor_id + SEP
            used[eid + "device"], used[eid + "host"] = float(kv.device_used), float(kv.host_used)
            free[eid + "device"], free[eid + "host"] = float(kv.device_free), float(kv.host_free)
    return {
        "num_requests_running": running,
        "num_requests_waiting": waiting,
        "executor_alpha": alpha,
        "executors": states,
        "link_bandwidth_bytes_per_second": {g: link.cap_bps for g, link in st.links.items()},
        "link_used_bytes_per_second": {g: link.used_bps for g, link in st.links.items()},
        "kv_blocks_used": used,
        "kv_blocks_free": free,
    }


def reply(st: "State", nonce: int) -> MetricsReply:
    """Every declared family, in declaration order, with its series (a family with none is listed empty)."""
    m, now = st.metrics, gauges(st)
    families = []
    for short, f in FAMILIES.items():
        if f.kind == "histogram":
            series = tuple(MetricSeries(labels=_labels(f, k), buckets=tuple(h.counts), sum=h.sum)
                           for k, h in m.hists.get(short, {}).items())
        else:
            values = (m.counters if f.kind == "counter" else now).get(short, {})
            series = tuple(MetricSeries(labels=_labels(f, k), value=v) for k, v in values.items())
        families.append(MetricFamily(name=f.name, kind=f.kind, help=f.help, labels=f.labels, bounds=f.bounds,
                                     series=series))
    return MetricsReply(nonce=nonce, families=tuple(families), events=st.applied)


def _labels(f: Family, k: str) -> tuple[str, ...]:
    return tuple(k.split(SEP)) if len(f.labels) > 1 else (k,)
