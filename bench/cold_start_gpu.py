"""Cold start on a GPU: c2cq's switch to the first token against loading the checkpoint into the GPU first.

Measured in one process on one GPU, through the executor backend itself (CudaBackend: switch, add,
step), not through `c2cq up`: the scheduler and ZeroMQ hops add the same few milliseconds to both
sides and would only blur the comparison. Per model size (0.5B–8B, generated bf16 weights):

  c2cq            switch to the model (its shared-memory file registered with the GPU beforehand, as an
                  executor keeps its catalog's mappings) and serve the first token at α = 0: every
                  weight streamed from pinned host memory by HybridGEMM, nothing loaded first
  c2cq+resid      the same with the plan at α = 1: background residency copies rows into HBM meanwhile
  c2cq+register   the same as c2cq, registering the mapping (cuMemHostRegister) inside the switch
  load (warm)     safetensors.torch.load_file(device="cuda") with the file in the page cache, build the
                  engine on those tensors (all in HBM, plain GEMMs), serve the first token
  load (cold)     the same after dropping the file's pages from the page cache (posix_fadvise); at the
                  first prompt length only (the disk read dominates it)
  load (pinned)   an ideal loader: one async copy per tensor from the registered mapping into HBM, then
                  serve; its time is close to bytes / link bandwidth, the floor of any load-first design

Times run from the switch (or the load) to the first token in hand, median of ``--repeat``, after a
warm-up that compiled and tuned every kernel for these shapes: the executor is long-running and its
kernels are ready, the model is what is cold. Ratios are load time / c2cq time (target ≥ 7.1x, the
C2CServe paper's headline on GH200; aim 10x). On a PCIe host the first token at α = 0 still reads
every weight once over the link, so c2cq cannot beat ``load (pinned)`` by much there: its gain is
against the loads real systems do (pageable copies, checkpoint parsing, disk).

    python bench/cold_start_gpu.py [--sizes qwen2-0.5b llama-8b] [--prompt 16 512] [--repeat 3] [--json PATH]

Writes cold_start_gpu.json and cold_start_gpu.txt under $OUT when it is set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import msgspec
import torch

from c2cq import log
from c2cq.kernels.linear import SplitWeight
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.client import SamplingParams
from c2cq.schemas.executor import AssignRequest
from c2cq.schemas.refs import ShmRef
from c2cq.services.catalog import layout
from c2cq.services.catalog.fs import drop_page_cache
from c2cq.services.catalog.modelwrite import write_model_file
from c2cq.services.catalog.describe import describe_file
from c2cq.services.catalog.validate import check_checkpoint, expected_tensors
from c2cq.services.executor.cpu import BLOCK_SIZE, kv_bytes_per_token
from c2cq.services.executor.cuda import CudaBackend
from c2cq.services.executor.model import Engine, SamplingParams as EngineSampling

GiB = 1 << 30
DEVICE = "cuda:0"
_LLAMA = dict(architectures=["LlamaForCausalLM"], rms_norm_eps=1e-5, hidden_act="silu", max_position_embeddings=8192)
_QWEN2 = dict(architectures=["Qwen2ForCausalLM"], rms_norm_eps=1e-6, hidden_act="silu", max_position_embeddings=8192)
SIZES: dict[str, dict[str, Any]] = {  # the public models' shapes, random weights
    "qwen2-0.5b": dict(_QWEN2, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
    "qwen2-1.5b": dict(_QWEN2, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
    "llama-3.2-3b": dict(_LLAMA, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         tie_word_embeddings=True, rope_theta=5e5),
    "llama-3.1-8b": dict(_LLAMA, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
                         rope_theta=5e5),
}
PARK = dict(_LLAMA, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, tie_word_embeddings=False, rope_theta=1e4)
POOL_ELEMS = 64 << 20  # random bf16 values cycled through every weight (values do not change timings)


# -- model files ---------------------------------------------------------------------------------------
def _random_pool(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(POOL_ELEMS, generator=g) * 0.02).to(torch.bfloat16)


def _tensor_bytes(specs: list[tuple[str, str, tuple[int, ...]]], pool: torch.Tensor) -> Iterator[memoryview]:
    raw = pool.view(torch.uint8).numpy()
    at = 0
    for name, _, shape in specs:
        n = math.prod(shape) * 2
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            yield memoryview(torch.ones(shape, dtype=torch.bfloat16).view(torch.uint8).numpy().reshape(-1))
            continue
        out = bytearray(n)
        done = 0
        while done < n:  # the pool, cycled from where the last tensor stopped
            take = min(n - done, raw.size - at)
            out[done:done + take] = raw[at:at + take].tobytes()
            done, at = done + take, (at + take) % raw.size
        yield memoryview(out)


def write_model(dst: Path, config: dict[str, Any], seed: int = 0) -> None:
    """A bf16 c2cq model file of ``config`` (the catalog's writer; weights cycled from a random pool)."""
    config = dict(config, torch_dtype="bfloat16")
    required, _ = expected_tensors(config)
    specs = [(n, "bf16", required[n]) for n in layout.forward_order(required)]
    check_checkpoint(config, {n: (d, s) for n, d, s in specs}, source="generated")
    write_model_file(dst, specs, _tensor_bytes(specs, _random_pool(seed)), {"config": config}, progress=False,
                     source=f"bench:cold_start:seed={seed}")


def write_safetensors(dst: Path, tensors: dict[str, torch.Tensor]) -> None:
    """The same tensors as a .safetensors file, streamed from the mapping (no copy of the whole model)."""
    header: dict[str, Any] = {}
    at = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [at, at + n]}
        at += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = dst.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for t in tensors.values():
            f.write(memoryview(t.contiguous().view(torch.uint8).numpy().reshape(-1)))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, dst)


def fs_type(path: Path) -> str:
    best, kind = "", "?"
    real = str(Path(path).resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")) \
                and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


# -- the two sides --------------------------------------------------------------------------------------
def first_token_c2cq(b: CudaBackend, info, prompt: list[int], *, register: bool, alpha: float) -> tuple[float, int]:
    """Seconds from the switch to the first token, and the token."""
    b.set_alpha(alpha)
    if register:
        b.unpin(info)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    b.switch(info)
    b.add(AssignRequest(request_id="cold", model=info.name, prompt_token_ids=tuple(prompt), max_tokens=1,
                        sampling=SamplingParams(ignore_eos=True)))
    while True:
        for o in b.step(len(prompt)).outputs:
            if o.error:
                raise RuntimeError(o.error)
            if o.token_ids:
                return time.perf_counter() - t0, o.token_ids[0]


def _hbm_linear(name: str, t: torch.Tensor) -> SplitWeight:
    return SplitWeight(hbm=t, host=t[t.shape[0]:])


def first_token_loaded(tensors: dict[str, torch.Tensor], config: dict, prompt: list[int], kv_blocks: int) -> int:
    engine = Engine(config, tensors, None, kv_blocks=kv_blocks, block_size=BLOCK_SIZE, make_linear=_hbm_linear)
    engine.add("cold", prompt, EngineSampling(max_tokens=1, ignore_eos=True))
    while True:
        for o in engine.step(len(prompt)):
            return o.new_token_ids[0]


def first_token_safetensors(path: Path, config: dict, prompt: list[int], kv_blocks: int) -> tuple[float, int]:
    from safetensors.torch import load_file

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    tensors = load_file(path, device=DEVICE)
    token = first_token_loaded(tensors, config, prompt, kv_blocks)
    return time.perf_counter() - t0, token


def first_token_pinned_copy(b: CudaBackend, info, config: dict, prompt: list[int], kv_blocks: int) -> tuple[float, int]:
    pf = b._pinned[info.shm.path]
    host = pf.tensors()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    tensors = {n: t.to(DEVICE, non_blocking=True) for n, t in host.items()}
    token = first_token_loaded(tensors, config, prompt, kv_blocks)
    return time.perf_counter() - t0, token


# -- driver -------------------------------------------------------------------------------------------------
def published(name: str, path: Path) -> ModelInfo:
    return msgspec.structs.replace(describe_file(name, path), shm=ShmRef(path=str(path), size=path.stat().st_size))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def model_bytes(cfg: dict) -> int:
    required, _ = expected_tensors(dict(cfg, torch_dtype="bfloat16"))
    return 2 * sum(math.prod(s) for s in required.values())


def run_size(name: str, cfg: dict, args, b: CudaBackend, park, shm_dir: Path, disk_dir: Path) -> list[dict]:
    need = model_bytes(cfg) * 1.05
    for where in (shm_dir, disk_dir):
        free = shutil.disk_usage(where).free
        if free < need:
            print(f"# {name}: SKIPPED, {where} has {free / GiB:.1f} GiB free, the model needs {need / GiB:.1f}",
                  file=sys.stderr, flush=True)
            return []
    t0 = time.perf_counter()
    mfile = shm_dir / f"{name}.c2cqm"
    write_model(mfile, cfg)
    info = published(name, mfile)
    st = disk_dir / f"{name}.safetensors"
    from c2cq.services.catalog.shm import map_shared

    mf = map_shared(mfile)
    write_safetensors(st, mf.tensors())
    mf.close()
    made_s = time.perf_counter() - t0
    print(f"# {name}: {info.parameters / 1e9:.2f}B parameters, {info.bytes / GiB:.2f} GiB, files written in "
          f"{made_s:.0f} s (safetensors on {fs_type(st)})", file=sys.stderr, flush=True)
    kv_blocks = max(1, args.kv_bytes // (BLOCK_SIZE * kv_bytes_per_token(cfg, 2)))
    b.pin(info)
    read_only = b._pinned[info.shm.path].read_only  # registered read-only, or through the writable fallback
    g = torch.Generator().manual_seed(1)
    rows = []
    for plen in args.prompt:
        prompt = torch.randint(0, cfg["vocab_size"], (plen,), generator=g).tolist()
        # warm-up: compile and tune every kernel for these shapes (α = 0, a first residency chunk, α = 1)
        first_token_c2cq(b, info, prompt, register=False, alpha=0.0)
        first_token_c2cq(b, info, prompt, register=False, alpha=1.0)
        b.switch(park)
        first_token_safetensors(st, cfg, prompt, kv_blocks)
        torch.cuda.empty_cache()
        r: dict[str, list[float]] = {k: [] for k in ("c2cq", "c2cq_resid", "c2cq_register", "register",
                                                     "load_warm", "load_cold", "load_pinned")}
        tokens = {}
        for _ in range(args.repeat):
            for key, kw in (("c2cq", dict(register=False, alpha=0.0)), ("c2cq_resid", dict(register=False, alpha=1.0)),
                            ("c2cq_register", dict(register=True, alpha=0.0))):
                b.switch(park)
                torch.cuda.empty_cache()
                s, tokens[key] = first_token_c2cq(b, info, prompt, **kw)
                r[key].append(s)
                if key == "c2cq_register":
                    r["register"].append(b.last_switch.pin_s)
            b.set_alpha(0.0)
            b.switch(park)  # the loads below get the GPU to themselves
            torch.cuda.empty_cache()
            s, tokens["load_warm"] = first_token_safetensors(st, cfg, prompt, kv_blocks)
            r["load_warm"].append(s)
            torch.cuda.empty_cache()
            if plen == args.prompt[0] and drop_page_cache(st):  # disk-bound: once per size is enough
                s, tokens["load_cold"] = first_token_safetensors(st, cfg, prompt, kv_blocks)
                r["load_cold"].append(s)
                torch.cuda.empty_cache()
            b.pin(info)
            s, tokens["load_pinned"] = first_token_pinned_copy(b, info, cfg, prompt, kv_blocks)
            r["load_pinned"].append(s)
            torch.cuda.empty_cache()
        med = {k: median(v) for k, v in r.items()}
        row = dict(model=name, parameters=info.parameters, bytes=info.bytes, prompt=plen, read_only=read_only,
                   link_gbps=b.link_bandwidth_bps / 1e9, floor_s=info.bytes / b.link_bandwidth_bps,
                   **{f"{k}_s": v for k, v in med.items()}, samples=r,
                   same_first_token=len(set(tokens.values())) == 1, tokens=tokens)
        for base in ("load_warm", "load_cold", "load_pinned"):
            row[f"{base}_over_c2cq"] = med[base] / med["c2cq"]
            row[f"{base}_over_c2cq_register"] = med[base] / med["c2cq_register"]
        rows.append(row)
        print(format_rows([row], header=False), file=sys.stderr, flush=True)
    b.switch(park)
    b.unpin(info)
    mfile.unlink()
    st.unlink()
    return rows


def format_rows(rows: list[dict], header: bool = True) -> str:
    cols = ("model", "prompt", "GiB", "floor", "c2cq", "+resid", "+reg", "reg", "load warm", "cold", "pinned",
            "warm/c2cq", "cold/c2cq", "pinned/c2cq", "warm/+reg")
    lines = [" ".join(f"{c:>12}" for c in cols)] if header else []
    for r in rows:
        vals = (r["model"], r["prompt"], f"{r['bytes'] / GiB:.2f}", *(f"{r[k] * 1e3:.0f} ms" for k in (
            "floor_s", "c2cq_s", "c2cq_resid_s", "c2cq_register_s", "register_s", "load_warm_s", "load_cold_s",
            "load_pinned_s")), *(f"{r[k]:.2f}x" for k in ("load_warm_over_c2cq", "load_cold_over_c2cq",
                                                           "load_pinned_over_c2cq", "load_warm_over_c2cq_register")))
        lines.append(" ".join(f"{v:>12}" for v in vals))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--prompt", nargs="*", type=int, default=[16, 512], help="prompt lengths (tokens)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--kv-bytes", type=int, default=1 * GiB, help="KV cache of both sides")
    p.add_argument("--shm-dir", default=f"/dev/shm/c2cq-cold-{os.getpid()}")
    p.add_argument("--disk-dir", default="/var/tmp/c2cq-cold", help="where the safetensors checkpoints go (a disk)")
    p.add_argument("--json", default=None, help="default: $OUT/cold_start_gpu.json when OUT is set")
    args = p.parse_args(argv)
    log.configure("cold-start-bench", level="warning")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a time limit still runs the clean-up below
    if not torch.cuda.is_available():
        print("cold_start_gpu: no CUDA device here; this benchmark runs on a GPU host.", file=sys.stderr)
        return 2
    shm_dir, disk_dir = Path(args.shm_dir), Path(args.disk_dir)
    shm_dir.mkdir(parents=True, exist_ok=True)
    disk_dir.mkdir(parents=True, exist_ok=True)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    json_path = Path(args.json) if args.json else (out / "cold_start_gpu.json" if out else None)
    b = CudaBackend(DEVICE, kv_bytes=args.kv_bytes, alpha=0.0, switch_alpha=0.0)
    device = torch.cuda.get_device_name()
    head = (f"# bench/cold_start_gpu.py on {device}, torch {torch.__version__}, link (pinned H2D copy) "
            f"{b.link_bandwidth_bps / 1e9:.1f} GB/s, in-process CudaBackend; median of {args.repeat}; "
            f"times to the first token; ratios = load / c2cq (target >= 7.1x, aim 10x)")
    print(head, file=sys.stderr, flush=True)
    rows: list[dict] = []
    try:
        write_model(shm_dir / "park.c2cqm", PARK)
        park = published("park", shm_dir / "park.c2cqm")
        for name in args.sizes:
            rows.extend(run_size(name, SIZES[name], args, b, park, shm_dir, disk_dir))
            if json_path:  # after every size: a later size running out of time keeps the earlier ones
                json_path.write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=1))
    finally:
        b.close()
        shutil.rmtree(shm_dir, ignore_errors=True)
        for name in args.sizes:
            (disk_dir / f"{name}.safetensors").unlink(missing_ok=True)
    table = head + "\n" + format_rows(rows)
    print(table)
    if out:
        (out / "cold_start_gpu.txt").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
