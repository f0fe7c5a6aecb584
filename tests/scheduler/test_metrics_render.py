"""services/gateway/metrics.render: a MetricsReply in the Prometheus text format, read back by
prometheus_client's own parser, series for series."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from c2cq.schemas import executor as m
from c2cq.schemas.client import MetricsQuery
from c2cq.services.gateway.metrics import render
from c2cq.services.scheduler import core, metrics
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.state import State

from .history import S
from .test_metrics import one_request


class FakeClient:
    def __init__(self, reply) -> None:
        self.reply = reply

    async def metrics(self):
        return self.reply


def test_render_round_trips_through_the_prometheus_parser():
    st = State()
    for e in one_request():
        core.apply(st, e)
    reply = core.query(st, b"c", MetricsQuery(nonce=1))[0].msg
    body, ctype = asyncio.run(render(FakeClient(reply)))
    assert ctype.startswith("text/plain; version=")
    parsed = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert set(parsed) == {f.name for f in reply.families}
    n = 0
    for f in reply.families:
        p = parsed[f.name]
        assert p.type == f.kind and p.documentation == f.help
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in p.samples}
        for s in f.series:
            labels = tuple(sorted(zip(f.labels, s.labels)))
            if f.kind == "counter":
                assert samples[(f.name + "_total", labels)] == s.value
            elif f.kind == "gauge":
                assert samples[(f.name, labels)] == s.value
            else:
                cum = 0
                for le, c in zip([*f.bounds, float("inf")], s.buckets):
                    cum += c
                    le_s = "+Inf" if le == float("inf") else repr(float(le))
                    assert samples[(f.name + "_bucket", tuple(sorted(labels + (("le", le_s),))))] == cum
                assert samples[(f.name + "_count", labels)] == cum
                assert samples[(f.name + "_sum", labels)] == s.sum
            n += 1
    assert n >= 15
    assert metrics.FAMILIES["request_success"].labels == ("model_name", "finished_reason")


def test_kv_use_per_tier_and_rotations_per_slice_in_the_scrape():
    def kv(at: float, used: tuple[int, int], free: tuple[int, int], rotations: int, moved: int):
        return ev.ExecutorSaid(at=at, executor_id="e0", msg=S(
            "e0", m.StepStats, step_s=0.01, tokens=1, prefill_tokens=0, decode_tokens=1, batch=1, bytes_hbm=10,
            bytes_host=0, model="m-a", kv_device_used=used[0], kv_device_free=free[0], kv_host_used=used[1],
            kv_host_free=free[1], kv_rotations=rotations, kv_bytes_rotated=moved))

    st = State()
    for e in one_request()[:3] + [kv(1.2, (30, 4), (2, 60), 3, 3 << 20), kv(1.3, (20, 0), (12, 64), 1, 1 << 20)]:
        core.apply(st, e)
    reply = core.query(st, b"c", MetricsQuery(nonce=1))[0].msg
    body, _ = asyncio.run(render(FakeClient(reply)))
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    e0 = lambda tier: (("executor", "e0"), ("tier", tier))  # noqa: E731
    # the gauges: the last report, per tier
    assert got[("c2cq:kv_blocks_used", e0("device"))] == 20 and got[("c2cq:kv_blocks_used", e0("host"))] == 0
    assert got[("c2cq:kv_blocks_free", e0("device"))] == 12 and got[("c2cq:kv_blocks_free", e0("host"))] == 64
    # the counters: summed over the reports
    assert got[("c2cq:kv_rotations_total", (("executor", "e0"),))] == 4
    assert got[("c2cq:kv_bytes_rotated_total", (("executor", "e0"),))] == 4 << 20
