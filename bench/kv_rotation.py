"""KV rotation: rotate vs recompute vs block on one CPU slice whose KV pool is far smaller than the load.

One ``c2cq up --backend cpu`` per policy (``--slices 1 --kv-policy P --kv-blocks B``, rotate with a host
pool of ``--host-blocks``), one after another in this run, each fed the same open-loop plan: Poisson
arrivals (seeded) of requests with short prompts and long outputs (ignore_eos), every one with the
same TTFT and TPOT targets. The model is a small random-weight Llama (fp32) generated here, so a
step is cheap and the KV pool, not compute, is what runs out. The KV demand — what the requests in
the system asked for (prompt + tokens so far, resident or not), averaged over the run, over the
device pool — is printed per policy (the default load asks ~3x the pool).

Per policy, at the client: TTFT (submit → first token) and TPOT ((end − first token) / (new − 1));
attainment is the share of *submitted* requests that met the target (a rejected or failed request
meets neither); p99s over the requests that finished; tokens/s is every token received over the
first submit → last end. Rotations and bytes rotated are summed from the StepStats the executor sent
(read from the scheduler's event log after the run), and the last StepStats shows whether both KV
pools were back to full at idle.

    .venv/bin/python bench/kv_rotation.py [--duration 30] [--rate 0.8] [--kv-blocks 40] [--host-blocks 512] \
        [--ttft-ms 1500] [--tpot-ms 250] [--policies rotate,recompute,block]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from c2cq.client import AsyncClient
from c2cq.errors import C2CQError
from c2cq.loadgen import arrivals
from c2cq.rundir import RunDir
from c2cq.testing import Instance

MODEL = "kvbench-llama"
CONFIG = dict(architectures=["LlamaForCausalLM"], hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
              num_attention_heads=8, num_key_value_heads=4, vocab_size=8192, rms_norm_eps=1e-5,
              tie_word_embeddings=True, rope_theta=10000.0, max_position_embeddings=4096, hidden_act="silu")
BLOCK = 16  # tokens per KV block (the cpu backend's)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Req:
    at: float  # offset from the start of the run
    prompt: tuple[int, ...]
    new: int


@dataclass
class Result:
    submitted: float
    first: float | None = None
    end: float | None = None
    tokens: int = 0
    error: str | None = None


def plan(args: argparse.Namespace) -> list[Req]:
    rng = np.random.default_rng(args.seed)
    offsets = arrivals.schedule(args.rate, duration_s=args.duration, seed=args.seed)
    return [Req(float(t), tuple(int(x) for x in rng.integers(1, CONFIG["vocab_size"], int(rng.integers(*args.prompt)))),
                int(rng.integers(*args.new))) for t in offsets]


def kv_demand(reqs: list[Req], results: list[Result], pool: int) -> float:
    """The KV the requests in the system asked for, averaged over the run, over the device pool: each
    request from its submit to its end holds its prompt plus the tokens it has had so far (taken as
    growing evenly from its first token to its last), in blocks, held or not."""
    t0 = min(r.submitted for r in results)
    t1 = max((r.end for r in results if r.end), default=t0)
    if t1 <= t0:
        return 0.0
    total = 0.0
    for q, r in zip(reqs, results, strict=True):
        end = r.end if r.end is not None else t1
        first = r.first if r.first is not None else end
        # prompt blocks from submit to end, plus a ramp from 0 to the tokens received over first → end
        total += len(q.prompt) / BLOCK * (end - r.submitted) + r.tokens / BLOCK * (end - first) / 2
    return total / (t1 - t0) / pool


async def run_plan(home: Path, reqs: list[Req], args: argparse.Namespace) -> list[Result]:
    async with AsyncClient(home=str(home), timeout=600) as client:
        async def one(r: Req, res: Result) -> None:
            try:
                s = await client.submit(MODEL, prompt_token_ids=list(r.prompt), max_tokens=r.new, ignore_eos=True,
                                        slo={"ttft_ms": args.ttft_ms, "tpot_ms": args.tpot_ms})
                async for b in s:
                    res.tokens += len(b.token_ids)
                res.first, res.end = s.first_token_at, time.monotonic()
                if s.finished.finish_reason != "length":
                    res.error = str(s.finished.finish_reason)
            except C2CQError as e:
                res.error = f"{type(e).__name__}: {e}"

        for _ in range(2):  # warm-up: the switch, first steps
            await one(Req(0, tuple(range(1, 40)), 16), Result(time.monotonic()))
        t0 = time.monotonic()
        results, tasks = [], []
        for r in reqs:
            await asyncio.sleep(max(0.0, t0 + r.at - time.monotonic()))
            res = Result(time.monotonic())
            results.append(res)
            tasks.append(asyncio.create_task(one(r, res)))
        await asyncio.gather(*tasks)
        return results


def kv_figures(home: Path) -> tuple[int, int, tuple | None]:
    """(rotations, bytes rotated) summed over the run's StepStats, and the last one's four pool figures."""
    from c2cq.eventlog import EventLog
    from c2cq.schemas.executor import StepStats
    from c2cq.services.scheduler.events import SchedulerEvent
    from c2cq.services.scheduler.journal import log_path

    elog = EventLog(log_path(RunDir.from_env(str(home))), SchedulerEvent)
    rotations = moved = 0
    last = None
    try:
        for _, e in elog.replay():
            m = getattr(e, "msg", None)
            if isinstance(m, StepStats):
                rotations += m.kv_rotations
                moved += m.kv_bytes_rotated
                last = (m.kv_device_used, m.kv_device_free, m.kv_host_used, m.kv_host_free)
    finally:
        elog.close()
    return rotations, moved, last


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def summarise(policy: str, reqs: list[Req], results: list[Result], args: argparse.Namespace, kv: tuple) -> dict:
    done = [r for r in results if r.error is None and r.first is not None]
    ttft = [(r.first - r.submitted) * 1e3 for r in done]
    tpot = [(r.end - r.first) / max(1, r.tokens - 1) * 1e3 for r in done]
    n = len(results)
    span = max((r.end for r in results if r.end), default=0) - min(r.submitted for r in results)
    rotations, moved, last = kv
    return dict(policy=policy, n=n, failed=n - len(done),
                ttft_ok=100 * sum(t <= args.ttft_ms for t in ttft) / n,
                tpot_ok=100 * sum(t <= args.tpot_ms for t in tpot) / n,
                ttft_p50=pct(ttft, 50), ttft_p99=pct(ttft, 99), tpot_p50=pct(tpot, 50), tpot_p99=pct(tpot, 99),
                tok_s=sum(r.tokens for r in results) / span if span > 0 else 0.0,
                rotations=rotations, mib=moved / 2**20, idle=last, demand=kv_demand(reqs, results, args.kv_blocks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "c2cq-bench-kv")
    ap.add_argument("--policies", default="rotate,recompute,block")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per policy")
    ap.add_argument("--rate", type=float, default=1.3, help="requests per second (Poisson)")
    ap.add_argument("--prompt", type=int, nargs=2, default=(32, 97), metavar=("MIN", "MAX"))
    ap.add_argument("--new", type=int, nargs=2, default=(128, 321), metavar=("MIN", "MAX"))
    ap.add_argument("--kv-blocks", type=int, default=40, help="device KV pool, blocks of 16 tokens")
    ap.add_argument("--host-blocks", type=int, default=512, help="host KV pool of the rotate run")
    ap.add_argument("--ttft-ms", type=float, default=1500.0)
    ap.add_argument("--tpot-ms", type=float, default=250.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="keep each run's home (logs, event log) under --dir")
    args = ap.parse_args()
    from c2cq.services.catalog.cli_add import add_generated

    reqs = plan(args)
    args.dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for policy in args.policies.split(","):
        home = Path(tempfile.mkdtemp(prefix=f"home-{policy}-", dir=args.dir))
        inst = Instance(home, slices=1, backend="cpu")
        try:
            host = args.host_blocks if policy == "rotate" else 0
            inst.up("--threads", str(args.threads), "--kv-policy", policy, "--kv-blocks", str(args.kv_blocks),
                    "--kv-host-blocks", str(host))
            add_generated(RunDir.from_env(str(home)), CONFIG, MODEL, progress=False)
            log(f"{policy}: {len(reqs)} requests over {args.duration:.0f} s")
            t0 = time.monotonic()
            results = asyncio.run(run_plan(home, reqs, args))
            log(f"{policy}: done in {time.monotonic() - t0:.0f} s")
            inst.down()
            rows.append(summarise(policy, reqs, results, args, kv_figures(home)))
            errors = sorted({r.error for r in results if r.error})
            if errors:
                log(f"{policy}: failures: {errors[:5]}")
        finally:
            inst.stop()
            if not args.keep:
                shutil.rmtree(home, ignore_errors=True)
            else:
                log(f"{policy}: home kept at {home}")

    print(f"1 cpu slice x {args.threads} thread(s), random Llama {CONFIG['hidden_size']}x{CONFIG['num_hidden_layers']} "
          f"fp32; device KV pool {args.kv_blocks} blocks ({args.kv_blocks * BLOCK} tokens), host pool "
          f"{args.host_blocks} (rotate); {len(reqs)} requests, Poisson {args.rate}/s over {args.duration:.0f} s, "
          f"prompt {args.prompt[0]}-{args.prompt[1] - 1}, new {args.new[0]}-{args.new[1] - 1} tokens; "
          f"SLO TTFT {args.ttft_ms:.0f} ms, TPOT {args.tpot_ms:.0f} ms; {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'policy':9} {'fail':>4} | {'TTFT ok':>7} {'p50 ms':>8} {'p99 ms':>8} | {'TPOT ok':>7} {'p50 ms':>7} "
          f"{'p99 ms':>7} | {'tok/s':>6} | {'KV dem':>6} {'rotations':>9} {'MiB rot':>8} | idle pools "
          f"(dev used/free, host used/free)")
    for r in rows:
        print(f"{r['policy']:9} {r['failed']:4} | {r['ttft_ok']:6.1f}% {r['ttft_p50']:8.0f} {r['ttft_p99']:8.0f} | "
              f"{r['tpot_ok']:6.1f}% {r['tpot_p50']:7.1f} {r['tpot_p99']:7.1f} | {r['tok_s']:6.1f} | "
              f"{r['demand']:5.1f}x {r['rotations']:9} {r['mib']:8.1f} | {r['idle']}")
    print("KV dem: the KV the requests in the system asked for (prompt + tokens so far, held or waiting), "
          "averaged over the run, over the device pool")
    print("targets: rotate beats both on TTFT attainment by a clear margin; TPOT attainment within 5 points of the "
          "best; tok/s within 10%")


if __name__ == "__main__":
    main()
