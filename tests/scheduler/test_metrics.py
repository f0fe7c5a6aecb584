"""The metrics fold (pure): recorded events → counters and histograms; re-sends and replays count once."""

from __future__ import annotations

import pytest

from c2cq.schemas import executor as m
from c2cq.schemas.client import SLO, MetricsQuery, MetricsReply, RequestFinished
from c2cq.services.scheduler import core, metrics
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.journal import Journal
from c2cq.services.scheduler.state import Config, State

from .history import S, completed, of, ready, submit, tokens


def run(events, st: State | None = None):
    st = st or State()
    outs = [core.apply(st, e)[1] for e in events]
    return st, outs


def families(st: State) -> dict:
    (cmd,) = core.query(st, b"c", MetricsQuery(nonce=1))
    reply = cmd.msg
    assert isinstance(reply, MetricsReply) and reply.nonce == 1 and reply.events == st.applied
    return {f.name: f for f in reply.families}


def value(fams, name: str, *labels: str) -> float:
    rows = {s.labels: s for s in fams[name].series}
    s = rows.get(labels)
    return 0.0 if s is None else (s.value if fams[name].kind != "histogram" else sum(s.buckets))


def hsum(fams, name: str, *labels: str) -> float:
    return {s.labels: s for s in fams[name].series}[labels].sum


SLO_OK = SLO(ttft_ms=500.0, tpot_ms=100.0)


def one_request() -> list:
    return [ready("e0", 0.0), submit("r1", 1.0, slo=SLO_OK), tokens("e0", "r1", 0, (5, 6), 1.2),
            tokens("e0", "r1", 2, (7,), 1.3), completed("e0", "r1", 3, 1.4),
            submit("r2", 1.5, model="m-unknown")]


def test_one_request_is_counted_as_vllm_counts_it():
    st, outs = run(one_request())
    f = families(st)
    p = "c2cq:"
    assert value(f, p + "requests_accepted", "m-a") == 1
    assert value(f, p + "requests_rejected", "", "unknown_model") == 1  # a made-up name adds no series
    assert value(f, p + "generation_tokens", "m-a") == 3
    assert value(f, p + "prompt_tokens", "m-a") == 3
    assert value(f, p + "request_success", "m-a", "length") == 1
    assert value(f, p + "time_to_first_token_seconds", "m-a") == 1
    assert hsum(f, p + "time_to_first_token_seconds", "m-a") == pytest.approx(0.2)
    # three tokens: the one that came with the first (0 s) and one 0.1 s later; the first is TTFT
    assert value(f, p + "inter_token_latency_seconds", "m-a") == 2
    assert hsum(f, p + "inter_token_latency_seconds", "m-a") == pytest.approx(0.1)
    assert hsum(f, p + "request_time_per_output_token_seconds", "m-a") == pytest.approx(0.05)
    assert hsum(f, p + "e2e_request_latency_seconds", "m-a") == pytest.approx(0.4)
    assert value(f, p + "request_queue_time_seconds", "m-a") == 1
    assert value(f, p + "slo_requests", "interactive", "all") == 1
    assert value(f, p + "slo_attained", "interactive", "ttft") == 1
    assert value(f, p + "slo_attained", "interactive", "tpot") == 1
    fin = of(outs[4], RequestFinished)[0]
    assert hsum(f, p + "e2e_request_latency_seconds", "m-a") == pytest.approx(fin.timings.e2e_ms / 1e3)
    assert value(f, p + "num_requests_running", "m-a") == 0 and value(f, p + "num_requests_waiting", "m-a") == 0


def test_the_histogram_buckets_follow_prometheus_le():
    st, _ = run(one_request())
    s = {x.labels: x for x in families(st)["c2cq:time_to_first_token_seconds"].series}[("m-a",)]
    bounds = metrics.TTFT_BUCKETS
    # 0.2 s: past 0.1, within 0.25
    assert s.buckets[bounds.index(0.25)] == 1 and sum(s.buckets) == 1
    assert len(s.buckets) == len(bounds) + 1


def test_a_missed_slo_is_a_miss():
    slo = SLO(ttft_ms=100.0, tpot_ms=10.0)
    st, _ = run([ready("e0", 0.0), submit("r1", 1.0, slo=slo), tokens("e0", "r1", 0, (5,), 1.05),
                 tokens("e0", "r1", 1, (6,), 1.5), completed("e0", "r1", 2, 1.6)])
    f = families(st)
    assert value(f, "c2cq:slo_attained", "interactive", "ttft") == 1
    assert value(f, "c2cq:slo_attained", "interactive", "tpot") == 0
    assert value(f, "c2cq:slo_attained", "interactive", "all") == 0
    assert value(f, "c2cq:slo_requests", "interactive", "all") == 1


def test_resends_are_not_counted_again():
    events = one_request()[:3]
    st, _ = run(events + [submit("r1", 1.25, slo=SLO_OK)])  # a client repeating its submit: a re-send
    before = families(st)
    assert value(before, "c2cq:requests_accepted", "m-a") == 1 and value(before, "c2cq:generation_tokens", "m-a") == 2
    assert value(before, "c2cq:num_requests_running", "m-a") == 1
    st, outs = run(one_request()[3:5] + [ev.Recovered(at=2.0), submit("r1", 2.1, slo=SLO_OK)], st)
    assert of(outs[2], RequestFinished) and of(outs[3], RequestFinished)  # the finish was sent again, twice
    f = families(st)
    assert value(f, "c2cq:requests_accepted", "m-a") == 1
    assert value(f, "c2cq:generation_tokens", "m-a") == 3
    assert value(f, "c2cq:request_success", "m-a", "length") == 1
    assert value(f, "c2cq:e2e_request_latency_seconds", "m-a") == 1


def test_a_request_re_dispatched_after_a_restart_counts_its_tokens_once():
    # r1 got 2 tokens; the scheduler restarts; the new attempt (r1~1) numbers from 2
    st, _ = run(one_request()[:3] + [ev.Recovered(at=1.25), ready("e0", 1.26, boot="b1"),
                                     tokens("e0", "r1~1", 2, (7,), 1.3), completed("e0", "r1~1", 3, 1.4)])
    f = families(st)
    assert value(f, "c2cq:generation_tokens", "m-a") == 3
    assert value(f, "c2cq:inter_token_latency_seconds", "m-a") == 2
    assert value(f, "c2cq:request_success", "m-a", "length") == 1


def test_switches_bytes_and_gauges():
    st, outs = run([ready("e0", 0.0), submit("r1", 1.0), submit("r2", 1.0, model="m-b"),
                    ev.ExecutorSaid(at=1.1, executor_id="e0", msg=S("e0", m.ModelResident, model="m-a", alpha=0.25,
                                                                     bytes_resident=10, switched_s=0.05)),
                    ev.ExecutorSaid(at=1.2, executor_id="e0", msg=S("e0", m.StepStats, step_s=0.01, tokens=4,
                                                                     prefill_tokens=3, decode_tokens=1, batch=1,
                                                                     bytes_hbm=100, bytes_host=300, model="m-a"))])
    f = families(st)
    assert value(f, "c2cq:model_switches", "e0", "m-a") == 1
    assert hsum(f, "c2cq:model_switch_latency_seconds", "m-a") == pytest.approx(0.05)
    assert value(f, "c2cq:weight_bytes_read", "e0", "device") == 100
    assert value(f, "c2cq:weight_bytes_read", "e0", "host") == 300
    assert value(f, "c2cq:executor_tokens", "e0", "prefill") == 3
    assert value(f, "c2cq:num_requests_running", "m-a") == 1
    assert value(f, "c2cq:num_requests_waiting", "m-b") == 1  # one slice, busy with m-a
    assert value(f, "c2cq:executor_alpha", "e0", "m-a") == pytest.approx(0.25)
    assert value(f, "c2cq:executors", "ready") == 1
    assert value(f, "c2cq:link_bandwidth_bytes_per_second", "sim:e0") > 0
    # the first request found e0 holding nothing: its finish says it switched
    st, outs = run([completed("e0", "r1", 1, 1.3)], st)
    assert of(outs[0], RequestFinished)[0].switched
    assert value(families(st), "c2cq:requests_switched", "m-a") == 1


def test_every_declared_family_is_in_the_reply_once_with_the_prefix():
    fams = families(State())
    assert list(fams) == [f.name for f in metrics.FAMILIES.values()]
    assert all(n.startswith("c2cq:") and not n.endswith("_total") for n in fams)
    for f in fams.values():
        assert (f.kind == "histogram") == bool(f.bounds) and list(f.bounds) == sorted(f.bounds)


def test_a_replay_from_a_snapshot_gives_the_same_metrics(tmp_path):
    events = one_request() + [submit("r3", 2.0), tokens("e0", "r3", 0, (1, 2, 3), 2.5), completed("e0", "r3", 3, 2.7)]
    for snap_at in (None, 3, len(events) - 1):
        path = tmp_path / f"{snap_at}.db"
        j = Journal(path, snapshot_every=10**9)
        live = State()
        for i, e in enumerate(events):
            j.append(live, [e])
            core.apply(live, e)
            if snap_at is not None and i + 1 == snap_at:
                j.maybe_snapshot(live, force=True)
        j.close()
        j = Journal(path)
        st, _ = j.load(Config())
        j.close()
        assert families(st) == families(live)
        assert value(families(st), "c2cq:generation_tokens", "m-a") == 6


def test_a_broken_executor_cannot_poison_the_counters():
    bad = [ev.ExecutorSaid(at=1.1, executor_id="e0", msg=S("e0", m.ModelResident, model="m-a", alpha=0.0,
                                                        bytes_resident=0, switched_s=v))
           for v in (float("nan"), float("inf"), -1.0)]
    bad.append(ev.ExecutorSaid(at=1.2, executor_id="e0", msg=S("e0", m.StepStats, step_s=0.01, tokens=-1,
                                                             prefill_tokens=-(2**63), decode_tokens=-1, batch=1,
                                                             bytes_hbm=-5, bytes_host=-(2**63), model="m-a",
                                                             kv_rotations=-3, kv_bytes_rotated=-(2**63))))
    bad.append(ev.ExecutorSaid(at=1.3, executor_id="nobody", msg=S("nobody", m.StepStats, step_s=0.01, tokens=1,
                                                                 prefill_tokens=1, decode_tokens=0, batch=1,
                                                                 bytes_hbm=1, bytes_host=1, model="m-a")))
    st, _ = run([ready("e0", 0.0), *bad])
    f = families(st)
    for name in ("c2cq:model_switches", "c2cq:model_switch_latency_seconds", "c2cq:weight_bytes_read",
                 "c2cq:executor_tokens", "c2cq:kv_rotations", "c2cq:kv_bytes_rotated"):
        assert f[name].series == (), name
