"""The scheduler's metrics (pure): counters and histograms folded from the same events as its state.

Every request, whichever client sent it (the ZeroMQ client, the loadgen, the HTTP gateway),
goes through the scheduler, so its metrics are computed here: :func:`observe` is called by
``core.apply`` with each event and the commands it produced, and folds them into
``State.metrics``; :func:`reply` turns that fold, plus gauges read off the state as it is now
(running and waiting requests, α per slice, link bandwidth), into a ``MetricsReply`` for a
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
           "by error code.", C),
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


# ---- the fold ------------------------------------------------------------------------------------


def key(*values: str) -> str:
    return SEP.join(values)


def inc(m: Metrics, name: str, k: str, by: float = 1.0) -> None:
    series = m.counters.setdefault(name, {})
    series[k] = series.get(k, 0.0) + by


def hist(m: Metrics, name: str, k: str, v: float, n: int = 1) -> None:
    series = m.hists.setdefault(name, {})
    h = series.get(k)
    bounds = FAMILIES[name].bounds
    if h is None:
        h = series[k] = Hist(counts=[0] * (len(bounds) + 1))
    h.counts[bisect_left(bounds, v)] += n
    h.sum += v * n


def observe(st: "State", e, out: list) -> None:
    """Fold one event (and the commands it produced) into ``st.metrics``."""
    m, now = st.metrics, e.at
    msg = getattr(e, "msg", None)
    if isinstance(msg, StepStats):
        if msg.bytes_hbm:
            inc(m, "weight_bytes_read", key(e.executor_id, "device"), msg.bytes_hbm)
        if msg.bytes_host:
            inc(m, "weight_bytes_read", key(e.executor_id, "host"), msg.bytes_host)
        if msg.prefill_tokens:
            inc(m, "executor_tokens", key(e.executor_id, "prefill"), msg.prefill_tokens)
        if msg.decode_tokens:
            inc(m, "executor_tokens", key(e.executor_id, "decode"), msg.decode_tokens)
    elif isinstance(msg, ModelResident):
        if msg.switched_s is not None and msg.model is not None and e.executor_id in st.executors:
            inc(m, "model_switches", key(e.executor_id, msg.model))
            hist(m, "model_switch_latency_seconds", msg.model, msg.switched_s)
    for o in out:
        c = getattr(o, "msg", None)
        if isinstance(c, TokensEmitted):
            _tokens(m, c, now)
        elif isinstance(c, RequestFinished):
            _finished(m, c)
        elif isinstance(c, RequestAccepted):
            req = st.requests.get(c.request_id)
            if req is not None and c.request_id not in m.live:  # else a re-send of an accept counted before
                s = req.submit
                m.live[c.request_id] = Live(model=s.model, klass=req.klass, accepted_at=req.accepted_at,
                                            ttft_ms=s.slo.ttft_ms, tpot_ms=s.slo.tpot_ms)
                inc(m, "requests_accepted", s.model)
        elif isinstance(c, RequestRejected):
            model = msg.model if isinstance(msg, SubmitRequest) else ""  # a cancel names no model
            inc(m, "requests_rejected", key(model, c.code))


def _tokens(m: Metrics, c: TokensEmitted, now: float) -> None:
    r = m.live.get(c.request_id)
    end = c.seq + len(c.token_ids)
    if r is None or end <= r.emitted:
        return  # a re-send (or a request accepted before metrics existed)
    n = end - max(c.seq, r.emitted)
    if r.first_at is None:
        r.first_at = now
        hist(m, "time_to_first_token_seconds", r.model, now - r.accepted_at)
        if n > 1:
            hist(m, "inter_token_latency_seconds", r.model, 0.0, n - 1)
    else:
        hist(m, "inter_token_latency_seconds", r.model, (now - r.last_at) / n, n)
    r.last_at = now
    r.emitted = end
    inc(m, "generation_tokens", r.model, n)


def _finished(m: Metrics, c: RequestFinished) -> None:
    r = m.live.pop(c.request_id, None)
    if r is None:
        return  # a re-send of a finish counted before
    model, t = r.model, c.timings
    inc(m, "request_success", key(model, c.finish_reason))
    inc(m, "prompt_tokens", model, c.usage.prompt_tokens)
    hist(m, "e2e_request_latency_seconds", model, t.e2e_ms / 1e3)
    hist(m, "request_queue_time_seconds", model, t.queued_ms / 1e3)
    hist(m, "request_prompt_tokens", model, c.usage.prompt_tokens)
    hist(m, "request_generation_tokens", model, r.emitted)
    if c.switched:
        inc(m, "requests_switched", model)
    if c.finish_reason == FinishReason.ERROR:
        inc(m, "request_errors", key(model, c.error_code or "internal"))
    tpot = (r.last_at - r.first_at) / (r.emitted - 1) if r.emitted > 1 else None
    if tpot is not None:
        hist(m, "request_time_per_output_token_seconds", model, tpot)
    if c.finish_reason == FinishReason.CANCELLED or (r.ttft_ms is None and r.tpot_ms is None):
        return  # a cancel is the client's choice, not a miss; no target, nothing to attain
    # as the loadgen judges it (report.meets_slo): ended normally, TTFT and TPOT within their
    # targets; a reply of one token has no TPOT, so it meets any TPOT target
    ok = c.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    met = ok
    for target, limit, got in (("ttft", r.ttft_ms, t.ttft_ms), ("tpot", r.tpot_ms, None if tpot is None else tpot * 1e3)):
        if limit is None:
            continue
        if target == "ttft":
            hit = ok and got is not None and got <= limit
        else:
            hit = ok and (got is None or got <= limit)
        inc(m, "slo_requests", key(r.klass, target))
        inc(m, "slo_attained", key(r.klass, target), float(hit))
        met = met and hit
    inc(m, "slo_requests", key(r.klass, "all"))
    inc(m, "slo_attained", key(r.klass, "all"), float(met))


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
    for x in st.executors.values():
        states[x.state] = states.get(x.state, 0.0) + 1
        if x.model is not None and x.state != "lost":
            alpha[key(x.executor_id, x.model)] = x.alpha
    return {
        "num_requests_running": running,
        "num_requests_waiting": waiting,
        "executor_alpha": alpha,
        "executors": states,
        "link_bandwidth_bytes_per_second": {g: link.cap_bps for g, link in st.links.items()},
        "link_used_bytes_per_second": {g: link.used_bps for g, link in st.links.items()},
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
