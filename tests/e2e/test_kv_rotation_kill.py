"""Fault test on real CPU slices rotating KV: kill -9 an executor while requests' KV is in its host
pool. Every accepted request finishes exactly once with all its tokens, in order, and its greedy
tokens (fp32) are those of a slice with an unbounded pool: rotated KV that came back, and requests
migrated token-only off the dead slice, changed nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal

from c2cq.catalog_client import call
from c2cq.client import AsyncClient
from c2cq.eventlog import EventLog
from c2cq.rundir import RunDir
from c2cq.schemas.catalog import DescribeModel
from c2cq.schemas.client import SamplingParams as WireSampling
from c2cq.schemas.executor import AssignRequest, StepStats, TokensProduced
from c2cq.services.catalog.cli_add import add_generated
from c2cq.services.executor import cpu
from c2cq.services.scheduler.events import ExecutorSaid, SchedulerEvent
from c2cq.services.scheduler.journal import log_path
from c2cq.testing import Instance, wait_for

MODEL = "kv-tiny"
CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 136,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97,
          "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "rope_theta": 10000.0,
          "max_position_embeddings": 256}
REQUESTS, PROMPT, NEW = 16, 24, 64  # 88 tokens each (6 blocks) against device pools of 8 blocks
PROMPTS = [[(7 * i + j) % 96 + 1 for j in range(PROMPT)] for i in range(REQUESTS)]


def services(home) -> dict[str, dict]:
    doc = json.loads((home / "run" / "state.json").read_text())
    return {s["name"]: s for s in doc["services"]}


def expected_tokens(home) -> list[list[int]]:
    """The same requests on an in-process slice whose pool holds them all (default KV size, block)."""
    info = call(RunDir.from_env(str(home)), DescribeModel(name=MODEL)).info
    b = cpu.CpuBackend(threads=1, cores=())
    b.switch(info)
    for i, p in enumerate(PROMPTS):
        b.add(AssignRequest(request_id=f"e{i}", model=MODEL, prompt_token_ids=tuple(p), max_tokens=NEW,
                            sampling=WireSampling(ignore_eos=True)))
    got: dict[str, list[int]] = {f"e{i}": [] for i in range(REQUESTS)}
    while b.has_work():
        for o in b.step(512).outputs:
            assert o.error is None, o.error
            got[o.request_id].extend(o.token_ids)
    return [got[f"e{i}"] for i in range(REQUESTS)]


class Rotating:
    """Reads the scheduler's event log as it grows: which executor last said it holds KV on host."""

    def __init__(self, home) -> None:
        self.log = EventLog(log_path(RunDir.from_env(str(home))), SchedulerEvent)
        self.after = 0
        self.host_used: dict[str, int] = {}
        self.pools: dict[str, tuple[int, tuple]] = {}  # executor -> (event id, its last StepStats' four pool figures)
        self.attempts: dict[str, set[str]] = {}  # request -> the executor-side ids that produced its tokens

    def poll(self) -> str | None:
        for rid, e in self.log.replay(self.after):
            self.after = rid
            if isinstance(e, ExecutorSaid) and isinstance(e.msg, StepStats) and e.msg.kv_host_used is not None:
                m = e.msg
                self.host_used[e.executor_id] = m.kv_host_used
                self.pools[e.executor_id] = rid, (m.kv_device_used, m.kv_device_free, m.kv_host_used, m.kv_host_free)
            elif isinstance(e, ExecutorSaid) and isinstance(e.msg, TokensProduced):
                self.attempts.setdefault(e.msg.request_id.split("~")[0], set()).add(e.msg.request_id)
        return next((x for x, n in self.host_used.items() if n > 0), None)


def test_kill_an_executor_mid_rotation_loses_no_request(home):
    inst = Instance(home, slices=2, backend="cpu")
    inst.up("--threads", "1", "--kv-policy", "rotate", "--kv-blocks", "8", "--kv-host-blocks", "64")
    watch = None
    try:
        add_generated(RunDir.from_env(str(home)), CONFIG, MODEL, progress=False)
        expected = expected_tokens(home)
        watch = Rotating(home)

        async def run():
            async with AsyncClient(home=str(home), timeout=120) as c:
                streams = [await c.submit(MODEL, prompt_token_ids=p, max_tokens=NEW, ignore_eos=True,
                                          request_id=f"r{i:02d}") for i, p in enumerate(PROMPTS)]

                async def consume(s):
                    seqs, tokens = [], []
                    async for b in s:
                        seqs.append((b.seq, len(b.token_ids)))
                        tokens.extend(b.token_ids)
                    return seqs, tokens, s.finished

                tasks = [asyncio.create_task(consume(s)) for s in streams]
                victim = await asyncio.to_thread(wait_for, watch.poll, 60, "an executor with KV on host")
                pid = services(home)[victim]["pid"]
                os.kill(pid, signal.SIGKILL)
                killed_at = watch.after
                results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
                return victim, pid, killed_at, results

        victim, pid, killed_at, results = asyncio.run(run())
        watch.poll()
        for i, (seqs, tokens, finished) in enumerate(results):
            assert finished is not None and finished.finish_reason == "length", (i, finished)
            pos = 0
            for seq, n in seqs:
                assert seq == pos, (i, seqs)
                pos += n
            assert pos == NEW == finished.usage.completion_tokens
            assert tokens == expected[i], i
        # the kill hit requests in flight: some were re-dispatched (token-only) after it
        assert any(len(ids) > 1 for ids in watch.attempts.values()), watch.attempts
        assert services(home)[victim]["pid"] != pid  # and the supervisor restarted the slice
        # idle again, every slice that stepped after the kill says both its pools are full
        full = (0, 8, 0, 64)

        def settled():
            watch.poll()
            after = {x: p for x, (at, p) in watch.pools.items() if at > killed_at}
            return after and all(p == full for p in after.values())

        wait_for(settled, 30, "the slices' last StepStats with both KV pools full")
    finally:
        if watch is not None:
            watch.log.close()
        inst.teardown()
