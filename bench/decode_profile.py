"""Where a CPU decode step's time goes: the engine alone (no processes, no client), SmolLM2-135M.

B sequences of ``--prompt-tokens`` random prompt tokens are prefilled, then decode steps are timed in
thread CPU time (``time.thread_time``: on a shared machine, time the process spends descheduled is not
counted, which wall time would). Prints the median step, then per component (each wrapped and timed:
the linears through hybrid_linear, paged attention, RMSNorm, the KV write, sampling, the batch's
metadata; the rest is rope, residual adds, activations and Python), then the step again with every
linear replaced by a cached result of its shape (what is not GEMM) and the difference (the GEMMs in the
step, to set against kernels/bench or a GEMM timed alone).

Checkpoints: the Hugging Face folders that bench/decode_throughput.py builds (``--dir``, same default), read
through the catalog's model file as a slice maps them (converted once beside them: q/k/v and gate/up
then fuse into one product each, as served).

``--packed``: every linear weight packed first (services/executor/packing.py), as a slice serves it once packed.

    .venv/bin/python bench/decode_profile.py [--dtypes fp32,bf16] [--batches 1,8] [--steps 30] [--packed]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the executors (before torch loads)

import torch  # noqa: E402

from c2cq.services.catalog.convert import convert_hf  # noqa: E402
from c2cq.services.catalog.layout import read_layout  # noqa: E402
from c2cq.services.executor.model import attention, engine, kv_cache, layers, model, weights  # noqa: E402
from c2cq.services.executor.model.engine import Engine  # noqa: E402
from c2cq.services.executor.model.sampler import SamplingParams  # noqa: E402
from c2cq.services.executor.packing import Packer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from decode_throughput import checkpoint  # noqa: E402

SPENT: collections.Counter = collections.Counter()
# (module or class, attribute, label): every place the attribute is looked up from
WRAPPED = [(weights, "hybrid_linear", "linears"), (layers, "paged_attention", "paged attention"),
           (layers, "rms_norm", "rms_norm"), (model, "rms_norm", "rms_norm"),
           (kv_cache.KVCache, "write", "kv write"), (engine, "sample_rows", "sampling"),
           (engine.FlatBatch, "build", "batch metadata")]


def timed(f, label: str):
    def run(*args, **kwargs):
        t0 = time.thread_time()
        try:
            return f(*args, **kwargs)
        finally:
            SPENT[label] += time.thread_time() - t0
    return run


def served_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors as a slice maps them: from the catalog's ``.c2cqm`` file (forward order,
    back to back, so that q/k/v and gate/up fuse into one product each, as served), converted once."""
    path = folder / "profile.c2cqm"
    if not path.exists() or path.stat().st_mtime < (folder / "model.safetensors").stat().st_mtime:
        convert_hf(folder, path, progress=False)
    return read_layout(path).tensors()


def engine_for(folder: Path, batch: int, prompt: int, packed: bool) -> Engine:
    eng = Engine(json.loads((folder / "config.json").read_text()), served_tensors(folder), None,
                 kv_blocks=batch * 64 + 64, block_size=16)
    if packed:
        packer = Packer(1 << 40)
        packer.serve(eng, eng.model, folder.name)
        while packer.work(float("inf")):
            pass
    g = torch.Generator().manual_seed(batch)
    for i in range(batch):
        eng.add(f"r{i}", torch.randint(100, eng.config.vocab_size, (prompt,), generator=g).tolist(),
                SamplingParams(max_tokens=900, ignore_eos=True))
    for _ in range(4):  # prefill, then a few decode steps (oneDNN sets up each shape the first time)
        eng.step(4096)
    return eng


def step_ms(eng: Engine, steps: int) -> float:
    ts = []
    for _ in range(steps):
        t0 = time.thread_time()
        eng.step(4096)
        ts.append(time.thread_time() - t0)
    return statistics.median(ts) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "c2cq-bench-decode")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--packed", action="store_true", help="pack every linear weight first")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.dir.mkdir(parents=True, exist_ok=True)
    for d in args.dtypes.split(","):
        folder = checkpoint(args.dir, d)
        for b in (int(x) for x in args.batches.split(",")):
            eng = engine_for(folder, b, args.prompt_tokens, args.packed)
            plain = step_ms(eng, args.steps)
            saved = [(owner, name, getattr(owner, name)) for owner, name, _ in WRAPPED]
            for (owner, name, label), (_, _, f) in zip(WRAPPED, saved, strict=True):
                setattr(owner, name, timed(f, label))
            SPENT.clear()
            t0 = time.thread_time()
            for _ in range(args.steps):
                eng.step(4096)
            wrapped = (time.thread_time() - t0) / args.steps * 1e3
            parts = {k: v / args.steps * 1e3 for k, v in SPENT.most_common()}
            for owner, name, f in saved:
                setattr(owner, name, f)
            real, shapes = weights.hybrid_linear, {}

            def no_gemm(x, w, bias=None, real=real, shapes=shapes):
                key = (tuple(x.shape), w.n)
                if key not in shapes:
                    shapes[key] = real(x, w, bias)
                return shapes[key]

            weights.hybrid_linear = no_gemm
            rest = step_ms(eng, args.steps)
            weights.hybrid_linear = real
            print(f"{d} batch {b}: step {plain:.1f} ms (thread CPU time, median of {args.steps}); timed per part "
                  f"(mean {wrapped:.1f} ms): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
                  + f", rest {wrapped - sum(parts.values()):.2f}; without the GEMMs {rest:.1f} ms, so GEMMs "
                  f"{plain - rest:.1f} ms", flush=True)
    print(f"SmolLM2-135M-Instruct, {args.prompt_tokens} prompt tokens, 1 thread; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
