"""/metrics after a known load on a running sim instance, parsed with prometheus_client's own parser:
the counts equal what the clients sent and saw, and a kill -9 of the scheduler leaves them as they were."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from c2cq.client import AsyncClient
from c2cq.errors import C2CQError, RequestError
from c2cq.services.gateway.metrics import render
from c2cq.testing import wait_for

N = 30
MODELS = [f"sim-{i:03d}" for i in range(6)]


def scheduler(home) -> dict:
    doc = json.loads((home / "run" / "state.json").read_text())
    return next(s for s in doc["services"] if s["name"] == "scheduler")


async def scrape(client) -> dict[str, dict]:
    body, ctype = await render(client)
    assert ctype.startswith("text/plain")
    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(body.decode()):
        assert fam.name.startswith("c2cq:")
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(m: dict, name: str, **match) -> float:
    return sum(v for labels, v in m.get(name, {}).items() if match.items() <= dict(labels).items())


async def load(c: AsyncClient) -> dict:
    async def one(i: int):
        s = await c.submit(MODELS[i % len(MODELS)], f"prompt {i}", max_tokens=4 + i % 9, ignore_eos=True,
                           slo={"ttft_ms": 5_000.0} if i % 3 == 0 else None)
        got = 0
        try:
            async for t in s:
                got += len(t.token_ids)
                if i == 7:  # one request cancelled after its first tokens
                    await s.cancel()
        except RequestError as e:
            return ("rejected" if s.accepted is None else "error", e.code, got, s.finished)
        return ("finished", None, got, s.finished)

    async def rejected(model: str, **kw):
        try:
            await (await c.submit(model, "x", **kw)).text()
        except RequestError as e:
            return ("rejected", e.code, 0, None)
        raise AssertionError("not rejected")

    outcomes = await asyncio.gather(*(one(i) for i in range(N)), rejected("no-such-model"),
                                    rejected(MODELS[0], max_tokens=10**6))
    return outcomes


def test_metrics_count_what_was_sent_and_survive_a_scheduler_kill(sim_instance):
    home = sim_instance.home

    async def run():
        async with AsyncClient(home=str(home), timeout=60) as c:
            outcomes = await load(c)
            return outcomes, await scrape(c)

    outcomes, m = asyncio.run(run())
    finished = [o[3] for o in outcomes if o[0] == "finished"]
    assert len(finished) == N  # the cancelled one too: a cancel ends the stream normally
    rejected = Counter(o[1] for o in outcomes if o[0] == "rejected")
    assert rejected == {"unknown_model": 1, "bad_max_tokens": 1}
    tokens_seen = sum(o[2] for o in outcomes)
    assert tokens_seen == sum(f.usage.completion_tokens for f in finished)

    assert total(m, "c2cq:requests_accepted_total") == N
    for code, n in rejected.items():
        assert total(m, "c2cq:requests_rejected_total", code=code) == n
    reasons = Counter(f.finish_reason.value for f in finished)
    assert reasons["cancelled"] == 1
    for reason, n in reasons.items():
        assert total(m, "c2cq:request_success_total", finished_reason=reason) == n
    for model in MODELS:
        mine = [outcomes[i][3] for i in range(N) if MODELS[i % len(MODELS)] == model]
        assert total(m, "c2cq:generation_tokens_total", model_name=model) == sum(
            f.usage.completion_tokens for f in mine)
        assert total(m, "c2cq:prompt_tokens_total", model_name=model) == sum(f.usage.prompt_tokens for f in mine)
    assert total(m, "c2cq:generation_tokens_total") == tokens_seen
    with_tokens = sum(1 for f in finished if f.usage.completion_tokens > 0)
    assert total(m, "c2cq:time_to_first_token_seconds_count") == with_tokens
    assert total(m, "c2cq:inter_token_latency_seconds_count") == tokens_seen - with_tokens
    assert total(m, "c2cq:e2e_request_latency_seconds_count") == N
    assert total(m, "c2cq:request_queue_time_seconds_count") == N
    assert total(m, "c2cq:e2e_request_latency_seconds_bucket", le="+Inf") == N
    assert total(m, "c2cq:e2e_request_latency_seconds_sum") == pytest.approx(sum(f.timings.e2e_ms for f in finished) / 1e3)
    switched = sum(f.switched for f in finished)
    assert switched >= 1 and total(m, "c2cq:requests_switched_total") == switched
    assert 1 <= total(m, "c2cq:model_switches_total") <= switched
    assert total(m, "c2cq:slo_requests_total", target="ttft") == sum(
        1 for i, o in enumerate(outcomes[:N]) if i % 3 == 0 and o[3].finish_reason != "cancelled")
    assert total(m, "c2cq:num_requests_running") == 0 and total(m, "c2cq:num_requests_waiting") == 0
    assert total(m, "c2cq:weight_bytes_read_total") > 0

    # kill -9 the scheduler: the supervisor restarts it, it replays its log, the counters are as they were
    before = scheduler(home)["pid"]
    os.kill(before, signal.SIGKILL)
    wait_for(lambda: scheduler(home)["pid"] != before and scheduler(home)["state"] == "running", 30,
             "the scheduler restarted")

    async def again():
        while True:
            async with AsyncClient(home=str(home), timeout=5) as c:
                try:
                    return await scrape(c)
                except C2CQError:
                    continue  # not answering yet

    after = asyncio.run(asyncio.wait_for(again(), 30))
    folded = {n: v for n, v in m.items() if n.endswith(("_total", "_bucket", "_count", "_sum"))
              and not n.startswith(("c2cq:weight_bytes_read", "c2cq:executor_tokens"))}  # slices' late stats may add
    assert {n: after.get(n) for n in folded} == folded
