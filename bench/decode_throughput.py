"""Decode throughput: c2cq (``up --backend cpu``, requests sent concurrently through the client) against
transformers ``generate`` on the same checkpoint, same threads, same prompts and lengths.

Per dtype (fp32, bf16) and batch size (1, 8, 32): B requests of ``--prompt-tokens`` prompt tokens each
(distinct prompts, one length: ``generate`` needs no padding) and ``--new`` new tokens (ignore_eos), sent at
once; transformers runs the same B prompts as one batch, greedy, ``min_new_tokens = max_new_tokens``.

- tok/s: B · new / wall time (submit of the first → end of the last request; ``generate`` call).
- ms/step: a decode step. c2cq: median over requests of (end − first token) / (new − 1), at the client.
  transformers: (generate of ``new`` tokens − generate of 1 token) / (new − 1).
- floor: the weight bytes a step reads (every linear weight once, the tied lm_head as the embedding) over
  the bandwidth of a large copy measured in this run, in this process, with the same threads.
- ratios: c2cq / transformers tok/s (targets: ≥ 2 at batch 8, ≥ 1.2 at batch 1); c2cq step / floor
  (target: ≤ 2 at batch 8).

The c2cq executor and this process each use ``--threads`` threads; runs alternate c2cq and transformers
per case, so other load on the machine hits both alike. ``--quick``: batches 1 and 8, 32 new tokens,
one repetition.

The executor packs the served model's weights (its private oneDNN copies, services/executor/packing.py)
in the background of serving, from the plain shared pages; ``--packed-mb 0``: never (the plain path
throughout). ``--steady``: per dtype, right after the switch, one batch of 8 is timed while packing is
under way (the first-requests phase, printed as ``first``), then the run waits for the executor's log to
say the model is packed before the cases are measured (the steady state).

    .venv/bin/python bench/decode_throughput.py [--quick] [--threads 1] [--dtypes fp32,bf16] [--batches 1,8,32] \
        [--steady] [--packed-mb MIB]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the executors (before torch loads)

import torch  # noqa: E402

from c2cq.client import AsyncClient  # noqa: E402
from c2cq.rundir import RunDir  # noqa: E402
from c2cq.services.catalog.cli_add import add_path  # noqa: E402
from c2cq.services.executor.cpu import measure_read_bandwidth  # noqa: E402
from c2cq.testing import Instance  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from switch_latency import build_smollm2  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def checkpoint(root: Path, dtype: str) -> Path:
    folder = root / f"smollm2-135m-{dtype}"
    if not (folder / "model.safetensors").exists():
        log(f"building {folder} (once)")
        tmp = root / f"{folder.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build_smollm2(tmp, DTYPES[dtype])
        tmp.rename(folder)
    return folder


def step_weight_bytes(model) -> int:
    """Bytes of every linear weight (lm_head included; a tied one is the embedding, read once)."""
    seen, total = set(), 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.dim() == 2 and "embed_tokens" not in name and p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def prompts(batch: int, n: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(batch)
    return torch.randint(100, vocab, (batch, n), generator=g).tolist()


def hf_run(model, ids: list[list[int]], new: int) -> tuple[float, float]:
    """(seconds of generate with ``new`` tokens, ms per decode step)."""
    x = torch.tensor(ids)
    kw = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(x))
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(x, max_new_tokens=1, min_new_tokens=1, **kw)
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(x, max_new_tokens=new, min_new_tokens=new, **kw)
        full = time.perf_counter() - t0
    return full, (full - one) / (new - 1) * 1e3


async def c2cq_run(client: AsyncClient, model: str, ids: list[list[int]], new: int) -> tuple[float, float]:
    """(seconds from the first submit to the last request's end, median ms per decode step)."""
    async def one(p: list[int]) -> float:
        s = await client.submit(model, prompt_token_ids=p, max_tokens=new, ignore_eos=True)
        n = sum(len(b.token_ids) for b in [b async for b in s])
        if n != new or s.finished.finish_reason != "length":
            raise RuntimeError(f"{model}: {n} tokens, {s.finished}")
        return (time.monotonic() - s.first_token_at) / (new - 1) * 1e3

    t0 = time.monotonic()
    steps = await asyncio.gather(*(one(p) for p in ids))
    return time.monotonic() - t0, statistics.median(steps)


async def wait_packed(rd: RunDir, model: str, timeout: float = 120.0) -> dict:
    """The executor's ``packed`` log record of ``model`` (the budget may stop short of all of it)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for f in rd.log_dir.glob("exec-*.log"):
            for line in f.read_text(errors="replace").splitlines():
                if '"packed"' in line and f'"{model}"' in line:
                    return json.loads(line)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{model}: not packed after {timeout:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "c2cq-bench-decode")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2, help="runs per case and side; the best is kept")
    ap.add_argument("--quick", action="store_true", help="batches 1,8; 32 new tokens; one run")
    ap.add_argument("--steady", action="store_true", help="time the first batch of 8 after the switch, then wait "
                                                         "until the model is packed before measuring")
    ap.add_argument("--packed-mb", type=int, default=None, help="the executor's packed-weight budget (MiB)")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.new, args.repeat = "1,8", 32, 1
    import transformers

    torch.set_num_threads(args.threads)
    dtypes, batches = args.dtypes.split(","), [int(b) for b in args.batches.split(",")]
    args.dir.mkdir(parents=True, exist_ok=True)
    folders = {d: checkpoint(args.dir, d) for d in dtypes}
    home = Path(tempfile.mkdtemp(prefix="home-", dir=args.dir))
    rd = RunDir.from_env(str(home))
    for d in dtypes:
        add_path(rd, folders[d], f"smollm2-{d}", progress=False)
    inst = Instance(home, slices=1, backend="cpu")
    inst.up("--threads", str(args.threads), *(("--packed-mb", str(args.packed_mb)) if args.packed_mb is not None else ()))
    rows = []
    try:
        async def run() -> None:
            async with AsyncClient(home=str(home), timeout=600) as client:
                for d in dtypes:
                    model = transformers.AutoModelForCausalLM.from_pretrained(folders[d], dtype=DTYPES[d]).eval()
                    wbytes = step_weight_bytes(model)
                    vocab = model.config.vocab_size
                    await c2cq_run(client, f"smollm2-{d}", prompts(1, args.prompt_tokens, vocab), 4)  # switch, warm
                    if args.steady:
                        wall, step = await c2cq_run(client, f"smollm2-{d}", prompts(8, args.prompt_tokens, vocab),
                                                    args.new)
                        rec = await wait_packed(rd, f"smollm2-{d}")
                        log(f"{d} first batch 8 after the switch: c2cq {8 * args.new / wall:.1f} tok/s "
                            f"({step:.1f} ms/step); then packed: share {rec['share']}, "
                            f"{rec['bytes'] / 1e6:.0f} MB blocked and {rec.get('gemv_bytes', 0) / 1e6:.0f} MB "
                            f"transposed for single rows in {rec['seconds']} s of packing")
                    # transformers runs in a thread: the client's loop keeps hearing the scheduler meanwhile
                    await asyncio.to_thread(hf_run, model, prompts(1, args.prompt_tokens, vocab), 4)
                    for b in batches:
                        ids = prompts(b, args.prompt_tokens, vocab)
                        ours, theirs = [], []
                        for _ in range(args.repeat):
                            ours.append(await c2cq_run(client, f"smollm2-{d}", ids, args.new))
                            theirs.append(await asyncio.to_thread(hf_run, model, ids, args.new))
                        bw = measure_read_bandwidth(256 * 2**20)
                        (wall, step), (hwall, hstep) = min(ours), min(theirs)
                        rows.append((d, b, b * args.new / wall, b * args.new / hwall, step, hstep,
                                     wbytes / bw * 1e3, wbytes, bw))
                        log(f"{d} batch {b}: c2cq {b * args.new / wall:.1f} tok/s ({step:.1f} ms/step), "
                            f"transformers {b * args.new / hwall:.1f} tok/s ({hstep:.1f} ms/step)")
                    del model

        asyncio.run(run())
    finally:
        inst.stop()
        shutil.rmtree(home, ignore_errors=True)

    print(f"SmolLM2-135M-Instruct, {args.prompt_tokens} prompt + {args.new} new tokens per request; 1 cpu slice x "
          f"{args.threads} thread(s) against transformers {transformers.__version__} with {args.threads}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; best of {args.repeat}")
    print(f"{'dtype':5} {'batch':>5} | {'c2cq tok/s':>10} {'HF tok/s':>8} {'ratio':>6} | {'c2cq ms/step':>12} "
          f"{'HF ms/step':>10} | {'weights MB':>10} {'copy GB/s':>9} {'floor ms':>8} {'step/floor':>10}")
    for d, b, tps, htps, step, hstep, floor, wbytes, bw in rows:
        print(f"{d:5} {b:5} | {tps:10.1f} {htps:8.1f} {tps / htps:5.2f}x | {step:12.1f} {hstep:10.1f} | "
              f"{wbytes / 1e6:10.0f} {bw / 1e9:9.1f} {floor:8.1f} {step / floor:9.2f}x")
    print("targets: batch 8 ratio >= 2 and step/floor <= 2; batch 1 ratio >= 1.2. copy GB/s: bytes copied / s of "
          "a 256 MiB tensor copy (c2cq.services.executor.cpu.measure_read_bandwidth), this process, same threads.")


if __name__ == "__main__":
    main()
