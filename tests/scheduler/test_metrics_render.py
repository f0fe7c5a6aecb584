"""services/gateway/metrics.render: a MetricsReply in the Prometheus text format, read back by
prometheus_client's own parser, series for series."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from c2cq.schemas.client import MetricsQuery
from c2cq.services.gateway.metrics import render
from c2cq.services.scheduler import core, metrics
from c2cq.services.scheduler.state import State

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
