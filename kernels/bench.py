"""HybridGEMM benchmark: kernel time against the floor max(α|W|/B_hbm, (1−α)|W|/B_link).

Run ``python -m c2cq.kernels.bench [--quick] [--json PATH]`` on a CUDA host. It first measures the
ceilings on this device (HBM copy bandwidth, the link read by a Triton kernel from pinned host
memory as HybridGEMM reads it, cudaMemcpy H2D for reference, bf16/fp16 GEMM rate), then times
decode and prefill shapes of 0.5B–8B models at α ∈ {0, .25, .5, .75, 1} next to torch.matmul with
W all in HBM. Each timing replays a CUDA graph of launches over rotating weight copies (≥ 256 MB
together, so L2 never holds the weight) and takes the median. Not imported by library code.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass

import torch
import triton
import triton.language as tl

from c2cq.kernels.hybrid_gemm import hybrid_gemm
from c2cq.kernels.split import split_rows

GiB = 1 << 30
ROTATE_BYTES = 256 << 20
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
DECODE_M = (1, 16, 64)
PREFILL_M = (2048,)
# (model, layer, N, K): W is N × K (output rows × inputs).
SHAPES = [
    ("Qwen2-0.5B", "mlp.up", 4864, 896),
    ("Qwen2-0.5B", "mlp.down", 896, 4864),
    ("Qwen2-1.5B", "mlp.up", 8960, 1536),
    ("Llama-3.2-3B", "mlp.up", 8192, 3072),
    ("Llama-3-8B", "attn.qkv", 6144, 4096),
    ("Llama-3-8B", "mlp.up", 14336, 4096),
    ("Llama-3-8B", "mlp.down", 4096, 14336),
]
QUICK_SHAPES = [SHAPES[0], SHAPES[5], SHAPES[6]]


@dataclass(frozen=True, slots=True)
class Ceilings:
    b_hbm: float  # bytes/s, device-to-device copy, read + written
    b_link: float  # bytes/s, a Triton kernel reading pinned host memory
    b_memcpy_h2d: float  # bytes/s, cudaMemcpy from pinned host memory
    flops: float  # FLOP/s, torch.matmul 8192³ in the benchmark dtype


@dataclass(frozen=True, slots=True)
class Row:
    model: str
    layer: str
    m: int
    n: int
    k: int
    alpha: float
    split: int
    kernel_us: float
    floor_us: float
    bound: str  # "memory" or "compute"
    ratio: float  # floor / kernel time
    eff_gbs: float  # |W| / kernel time
    torch_us: float  # torch.matmul, W all in HBM


@triton.jit
def _copy_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=mask, cache_modifier=".cg"), mask=mask)


def _median_ms(fn, reps: int = 20) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=max(reps, 20), return_mode="median")


def measure_ceilings(dtype: torch.dtype) -> Ceilings:
    """The two bandwidth ceilings and the GEMM rate, measured on this device."""
    n = GiB // 4
    a = torch.randn(n, device="cuda")
    b = torch.empty_like(a)
    b_hbm = 2 * n * 4 / (_median_ms(lambda: b.copy_(a)) * 1e-3)
    del a, b
    n_host = (512 << 20) // 4
    src = torch.randn(n_host).pin_memory()
    dst = torch.empty(n_host, device="cuda")
    best = 0.0
    for block, warps in ((4096, 4), (8192, 8), (16384, 8)):
        grid = (triton.cdiv(n_host, block),)
        ms = _median_ms(lambda: _copy_kernel[grid](src, dst, n_host, BLOCK=block, num_warps=warps))
        best = max(best, n_host * 4 / (ms * 1e-3))
    if not torch.equal(dst.cpu(), src):
        raise RuntimeError("link copy kernel produced wrong data")
    memcpy = n_host * 4 / (_median_ms(lambda: dst.copy_(src, non_blocking=True)) * 1e-3)
    del src, dst
    s = 8192
    x = torch.randn(s, s, device="cuda", dtype=dtype)
    y = torch.randn(s, s, device="cuda", dtype=dtype)
    flops = 2 * s**3 / (_median_ms(lambda: x @ y) * 1e-3)
    return Ceilings(b_hbm=b_hbm, b_link=best, b_memcpy_h2d=memcpy, flops=flops)


def _graph_time_us(calls, replays: int = 15) -> float:
    """Median time of one call, from CUDA-graph replays of all ``calls`` in sequence."""
    for c in calls:  # compile + autotune outside the capture
        c()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in calls:
            c()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return statistics.median(times)


class _Pools:
    """One HBM and one pinned host pool, filled once with random data; weights are views of them."""

    def __init__(self, nbytes: int, dtype: torch.dtype) -> None:
        elems = nbytes // torch.tensor([], dtype=dtype).element_size()
        self.hbm = torch.randn(elems, device="cuda", dtype=dtype)
        self.host = torch.empty(elems, dtype=dtype).pin_memory()
        self.host.copy_(torch.randn(elems, device="cuda", dtype=dtype).cpu())

    def weights(self, n: int, k: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        size = n * k
        if size * count > self.hbm.numel():
            raise ValueError("pool too small")
        return [
            (self.hbm[i * size : (i + 1) * size].view(n, k), self.host[i * size : (i + 1) * size].view(n, k))
            for i in range(count)
        ]


def bench_shape(pools: _Pools, ceil: Ceilings, model: str, layer: str, n: int, k: int, m: int, dtype) -> list[Row]:
    """Rows for every α of one (shape, M)."""
    elem = torch.tensor([], dtype=dtype).element_size()
    w_bytes = n * k * elem
    count = max(2, math.ceil(ROTATE_BYTES / w_bytes))
    ws = pools.weights(n, k, count)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    outs = [torch.empty(m, n, device="cuda", dtype=dtype) for _ in ws]
    torch_us = _graph_time_us([lambda i=i: torch.matmul(x, ws[i][0].T, out=outs[i]) for i in range(count)])
    rows = []
    compute_s = 2 * m * n * k / ceil.flops
    for alpha in ALPHAS:
        split = split_rows(n, alpha)
        calls = [
            lambda i=i: hybrid_gemm(x, ws[i][0][:split], ws[i][1][split:], out=outs[i]) for i in range(count)
        ]
        us = _graph_time_us(calls)
        hbm_bytes = split * k * elem
        mem_s = max(hbm_bytes / ceil.b_hbm, (w_bytes - hbm_bytes) / ceil.b_link)
        floor_s = max(mem_s, compute_s)
        rows.append(
            Row(
                model=model, layer=layer, m=m, n=n, k=k, alpha=alpha, split=split,
                kernel_us=us, floor_us=floor_s * 1e6, bound="memory" if mem_s >= compute_s else "compute",
                ratio=floor_s * 1e6 / us, eff_gbs=w_bytes / (us * 1e-6) / 1e9, torch_us=torch_us,
            )  # fmt: skip
        )
    # Correctness spot check at a mixed α on the last rotation.
    split = split_rows(n, 0.5)
    y = hybrid_gemm(x, ws[-1][0][:split], ws[-1][1][split:])
    w_full = torch.cat([ws[-1][0][:split], ws[-1][1][split:].cuda()])
    ref = torch.matmul(x.float(), w_full.float().T)
    rel = float((y.float() - ref).norm() / ref.norm())
    if not rel < 1e-2:
        raise RuntimeError(f"{model} {layer} M={m}: relative error {rel:.3g}")
    return rows


def format_table(ceil: Ceilings, rows: list[Row], device: str) -> str:
    lines = [
        f"device: {device}",
        f"B_hbm (D2D copy, R+W) {ceil.b_hbm / 1e9:.0f} GB/s | B_link (Triton read of pinned host) "
        f"{ceil.b_link / 1e9:.1f} GB/s | cudaMemcpy H2D {ceil.b_memcpy_h2d / 1e9:.1f} GB/s | "
        f"GEMM {ceil.flops / 1e12:.0f} TFLOP/s",
        f"{'model':<13}{'layer':<10}{'M':>5}{'N':>7}{'K':>7}{'alpha':>6}{'kernel_us':>11}{'floor_us':>10}"
        f"{'bound':>8}{'floor/t':>8}{'GB/s':>8}{'torch_us':>10}{'t/torch':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r.model:<13}{r.layer:<10}{r.m:>5}{r.n:>7}{r.k:>7}{r.alpha:>6.2f}{r.kernel_us:>11.1f}"
            f"{r.floor_us:>10.1f}{r.bound:>8}{r.ratio:>8.2f}{r.eff_gbs:>8.0f}{r.torch_us:>10.1f}"
            f"{r.kernel_us / r.torch_us:>8.2f}"
        )
    decode = [r for r in rows if r.bound == "memory" and r.m <= 64]
    if decode:
        worst = min(decode, key=lambda r: r.ratio)
        lines.append(f"decode: worst floor/time {worst.ratio:.2f} ({worst.model} {worst.layer} M={worst.m} "
                     f"alpha={worst.alpha}); target ≥ 0.85")  # fmt: skip
    full = [r for r in rows if r.alpha == 1.0]
    if full:
        lines.append(f"alpha=1: kernel/torch median {statistics.median(r.kernel_us / r.torch_us for r in full):.2f}, "
                     f"max {max(r.kernel_us / r.torch_us for r in full):.2f}; target ≤ 1.10")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write ceilings and rows as JSON")
    parser.add_argument("--quick", action="store_true", help="three shapes only")
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    parser.add_argument("--m", type=int, nargs="*", help="override the M values")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("c2cq.kernels.bench: no CUDA device here; HybridGEMM is benchmarked on a GPU only.", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    device = torch.cuda.get_device_name()
    ceil = measure_ceilings(dtype)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    ms = args.m or [*DECODE_M, *PREFILL_M]
    w_max = max(n * k for _, _, n, k in shapes) * torch.tensor([], dtype=dtype).element_size()
    pools = _Pools(max(ROTATE_BYTES + w_max, 2 * w_max) + (16 << 20), dtype)
    rows: list[Row] = []
    for model, layer, n, k in shapes:
        for m in ms:
            rows.extend(bench_shape(pools, ceil, model, layer, n, k, m, dtype))
            progress = format_table(ceil, rows[-len(ALPHAS) :], device).splitlines()[3 : 3 + len(ALPHAS)]
            print("\n".join(progress), file=sys.stderr, flush=True)
    print(format_table(ceil, rows, device))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "dtype": args.dtype, "ceilings": asdict(ceil),
                       "rows": [asdict(r) for r in rows]}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
