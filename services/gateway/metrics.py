"""``/metrics``: the scheduler's metrics in the Prometheus text format.

The gateway computes nothing itself: every request goes through the scheduler, which folds the
metrics from its event log (c2cq.services.scheduler.metrics declares the names, types, labels and
buckets, and says what a restart does to them). :func:`render` asks for a snapshot and renders it
with prometheus-client, through a per-render registry, so nothing is kept between scrapes.
"""

from __future__ import annotations

import math
from itertools import accumulate

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from c2cq.schemas.client import MetricFamily, MetricsReply


class _Snapshot:
    """A custom collector over one MetricsReply."""

    def __init__(self, reply: MetricsReply) -> None:
        self.reply = reply

    def collect(self):
        for f in self.reply.families:
            yield family(f)


def family(f: MetricFamily):
    labels = list(f.labels)
    if f.kind == "counter":
        out = CounterMetricFamily(f.name, f.help, labels=labels)
        for s in f.series:
            out.add_metric(list(s.labels), s.value)
    elif f.kind == "histogram":
        out = HistogramMetricFamily(f.name, f.help, labels=labels)
        les = [_le(b) for b in f.bounds] + ["+Inf"]
        for s in f.series:
            out.add_metric(list(s.labels), list(zip(les, accumulate(s.buckets))), s.sum)
    else:
        out = GaugeMetricFamily(f.name, f.help, labels=labels)
        for s in f.series:
            out.add_metric(list(s.labels), s.value)
    return out


def _le(b: float) -> str:
    return "+Inf" if math.isinf(b) else repr(float(b))


def to_text(reply: MetricsReply) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(reply))
    return generate_latest(registry)


async def render(client) -> tuple[bytes, str]:
    """(body, content type) of a scrape: the scheduler's metrics now (``client``: a c2cq AsyncClient)."""
    return to_text(await client.metrics()), CONTENT_TYPE_LATEST
