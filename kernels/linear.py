"""The one entry point every linear layer goes through: Y = X·Wᵀ (+ bias) with W split by α.

A weight of N output rows is split along N into two parts: the first ``hbm.shape[0]`` rows are
resident in device memory (HBM), the remaining rows are read from host memory. On a CPU slice
both parts are host memory; on a GPU the Triton HybridGEMM reads both in one launch.

Dispatch (DESIGN.md, kernel selection): CUDA ``x`` → plain ``torch`` GEMM when the whole weight is
in HBM (α = 1), otherwise HybridGEMM (α = 0 streams everything from host memory); CPU ``x`` → torch,
or oneDNN's packed copy of the weight where the CPU backend made one (``SplitWeight.packed``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from c2cq.kernels.hybrid_gemm import ShapeError, hybrid_gemm


@dataclass(frozen=True, slots=True)
class SplitWeight:
    """A linear weight (N × K) split along N: rows [0, n_hbm) in ``hbm``, the rest in ``host``."""

    hbm: torch.Tensor  # (n_hbm, K), device memory; may have 0 rows
    host: torch.Tensor  # (N - n_hbm, K), host memory; may have 0 rows
    packed: "PackedWeight | None" = None  # CPU: a private blocked copy of the whole weight, read instead

    @classmethod
    def host_only(cls, w: torch.Tensor) -> "SplitWeight":
        return cls(hbm=w[:0], host=w)

    @property
    def n(self) -> int:
        return self.hbm.shape[0] + self.host.shape[0]

    @property
    def k(self) -> int:
        return self.host.shape[1] if self.host.shape[0] else self.hbm.shape[1]

    @property
    def alpha(self) -> float:
        return self.hbm.shape[0] / self.n if self.n else 1.0


@dataclass(frozen=True, slots=True)
class PackedWeight:
    """oneDNN's blocked layout of a whole N × K weight, in row parts (``pack_rows``, one part at a time)."""

    parts: tuple[torch.Tensor, ...]  # opaque mkldnn tensors, rows in order
    rows: tuple[int, ...]  # rows of each part
    nbytes: int  # the bytes they hold (the plain weight's, twice them where widened: ``packed_dtype``)
    dtype: torch.dtype = torch.float32  # what the parts hold, the product's dtype: ``packed_dtype`` of the weight's
    gemv: torch.Tensor | None = None  # the weight transposed (K × N, contiguous) that single rows read (``gemv_copy``)


def hybrid_linear(x: torch.Tensor, w: SplitWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Y = X·Wᵀ (+ bias) over the last dimension of ``x``; the output has ``w.n`` features."""
    if x.shape[-1] != w.k:
        raise ShapeError(f"hybrid_linear: x has K={x.shape[-1]}, weight has K={w.k}")
    if x.is_cuda:
        return _cuda_linear(x, w, bias)
    return _torch_linear(x, w, bias)


def _cuda_linear(x: torch.Tensor, w: SplitWeight, bias: torch.Tensor | None) -> torch.Tensor:
    if w.host.shape[0] == 0:
        return torch.nn.functional.linear(x, w.hbm, bias)
    lead = x.shape[:-1]
    y = hybrid_gemm(x.reshape(-1, w.k), w.hbm, w.host, bias)
    return y.reshape(*lead, w.n)


# CPUs without bf16/fp16 matrix instructions run torch's half-precision GEMM at GEMV speed per row
# (measured here, 2560×960 bf16: 423 ms at M=512 against 66 ms through fp32). From this many rows on,
# the weight is widened to fp32 for the product (exact), accumulated in fp32 and rounded back — what a
# native half GEMM with fp32 accumulation computes, up to the last bit of rounding order. The weight is
# widened a block of rows at a time into one small buffer that stays in cache, never whole: widening a
# 151936×896 embedding whole writes and reads 545 MB (673 ms at M=16, one thread, this machine) where
# blocks take 133 ms, and the native bf16 product 470 ms. At 4 rows blocks already win (MLP 4864×896:
# 2.8 against 3.6 ms); at 1 row the native GEMV does (1.0 against 2.4 ms).
# CPUs that have them (avx512_bf16 / amx, seen on an AMD EPYC with avx512_bf16: native bf16 against widened,
# 4864×896 at M=8: 0.85 against 3.4 ms; 49152×576 at M=32: 17 against 63 ms, one thread) keep the native
# product at every M: widening there only adds the fp32 copy.
CPU_WIDEN_MIN_ROWS = 4
CPU_WIDEN_BLOCK_BYTES = 1 << 20  # fp32 bytes of one widened block: the L2 cache of a server core
_NATIVE_FLAGS = {torch.bfloat16: ("avx512_bf16", "amx_bf16"), torch.float16: ("avx512_fp16", "amx_fp16")}


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_has_native(dtype: torch.dtype) -> bool:
    """Whether this CPU has matrix instructions for ``dtype`` (x86 flags; False where unknown)."""
    return any(flag in _cpu_flags() for flag in _NATIVE_FLAGS.get(dtype, ()))


def _widened_linear(x: torch.Tensor, w: SplitWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """hybrid_linear of half-precision ``x`` and ``w`` on a CPU, computed in fp32 block by block."""
    x2 = x.reshape(-1, w.k).float()
    out = torch.empty((x2.shape[0], w.n), dtype=torch.float32)
    rows = max(16, CPU_WIDEN_BLOCK_BYTES // (4 * max(w.k, 1)))
    buf = torch.empty((min(rows, w.n), w.k), dtype=torch.float32)
    col = 0
    for part in (w.hbm, w.host):
        for start in range(0, part.shape[0], rows):
            block = part[start:start + rows]
            wide = buf[:block.shape[0]]
            wide.copy_(block)
            torch.mm(x2, wide.t(), out=out[:, col:col + block.shape[0]])
            col += block.shape[0]
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype).reshape(*x.shape[:-1], w.n)


# fp32 on a CPU: torch's F.linear calls MKL's sgemm, oneDNN's inner product reads the same plain
# [N, K] weight (no copy, no reorder) faster at decode shapes. Measured here (AMD EPYC with avx512, one
# thread, weights cycled past the L3), every linear of one SmolLM2-135M step: 38 / 66 / 145 ms through
# sgemm against 27 / 45 / 76 ms through oneDNN at M = 1 / 8 / 32 (the 49152×576 lm_head at M=8: 13.3
# against 8.5 ms). Half precision already goes to oneDNN inside F.linear where the CPU has the
# instructions.
#
# oneDNN's own blocked weight layout (``_reorder_linear_weight`` with a batch hint of 8) is faster still,
# in fp32 and bf16 alike, at every M from 1 to 100 (one thread, this machine, ms plain → packed):
# fp32 49152×576 at M = 1 / 8 / 32: 10.6 → 9.8, 14.4 → 10.6, 26.3 → 21.3; 1536×576 at M=8: 0.28 → 0.17;
# bf16 49152×576: 8.2 → 4.9, 9.5 → 4.7, 15.9 → 11.8; 3072×576 at M=8: 0.30 → 0.19 (a hint of 1 is
# slower than 8 at M=1 too); at prefill shapes (M = 128 to 2048, 3072×576 and 576×1536) the two are within
# ±20% either way, seen in both directions. It is a private copy (the weights are the catalog's shared pages) and
# costs ~1 GB/s of weight to make (fp32 lm_head, 113 MB: 93-120 ms): the cpu backend makes one per
# slice in the background of serving, within a budget (services/executor/packing.py). The results
# equal the plain product's within rounding (fp32 at M ≥ 8 and bf16: bit for bit, seen here).
def _onednn_op(name: str):
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return getattr(torch.ops.mkldnn, name)
    except (AttributeError, RuntimeError):
        return None


_POINTWISE = _onednn_op("_linear_pointwise")
_REORDER = _onednn_op("_reorder_linear_weight")
PACK_BATCH_HINT = 8  # the M oneDNN blocks the weight for (above)


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _POINTWISE(x, weight, bias, "none", [], "")


_FP32_LINEAR = _onednn_linear if _POINTWISE is not None else torch.nn.functional.linear


# Half precision on a CPU without its instructions (AVX2 only: no avx512_bf16 / amx) runs through torch's
# generic kernels, ~9.5 GFLOP/s here (AMD EPYC Zen 3, one thread, 2560×960 at M = 1 / 8 / 48: 0.50 / 4.1 /
# 24.7 ms, against fp32's 0.45 / 1.8 / 4.3 ms), or _widened_linear's per-call fp32 copy of each block. A
# packed copy of such a weight is widened once, to fp32: twice the plain bytes, read at fp32's speed
# (the same products as _widened_linear's, which the parity tests hold to transformers in the dtype).
def packed_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """What a packed copy of a ``dtype`` weight holds: ``dtype`` itself (fp32; half precision where the
    CPU has its instructions), fp32 for half precision without them; None where nothing packs (no oneDNN
    weight packing in this torch, or another dtype)."""
    if _REORDER is None or _POINTWISE is None:
        return None
    if dtype == torch.float32 or (dtype in _NATIVE_FLAGS and cpu_has_native(dtype)):
        return dtype
    return torch.float32 if dtype in _NATIVE_FLAGS else None


def can_pack(dtype: torch.dtype) -> bool:
    """Whether this torch and CPU pack weights of ``dtype`` (``packed_dtype``)."""
    return packed_dtype(dtype) is not None


def pack_rows(w: torch.Tensor) -> torch.Tensor:
    """One part of a ``PackedWeight``: rows of a plain CPU weight (any view) in oneDNN's blocked layout,
    in ``packed_dtype(w.dtype)``."""
    with torch.no_grad():
        return _REORDER(w.to(packed_dtype(w.dtype)).contiguous(), PACK_BATCH_HINT)


def _packed_linear(x: torch.Tensor, p: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    if x2.dtype != p.dtype:  # a widened copy: fp32 in, the product rounded once to x's dtype
        x2 = x2.to(p.dtype)
        bias = None if bias is None else bias.to(p.dtype)
    if len(p.parts) == 1:
        y = _POINTWISE(x2, p.parts[0], bias, "none", [], "")
    else:
        y = torch.cat([_POINTWISE(x2, part, None, "none", [], "") for part in p.parts], dim=-1)
        if bias is not None:
            y += bias
    return y.to(x.dtype).reshape(*x.shape[:-1], y.shape[-1])


def _cpu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if x.dtype == torch.float32 and x.device.type == "cpu" and weight.dtype == torch.float32 and x.numel():
        return _FP32_LINEAR(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


# The fewest rows a packed copy is read for; a single row (a memory-bound GEMV) reads the plain weight
# where that is faster. Measured on AVX2 only (AMD EPYC Zen 3, one thread, weights cycled past the L3;
# ms plain → packed at M = 1 / 2 / 4): fp32 2560×960 0.66 → 0.74, 1.35 → 0.93, 1.75 → 1.34; 49152×576
# 8.7 → 9.3, 22.9 → 8.3, 24.0 → 13.6; bf16 against its widened copy (twice the bytes) 2560×960 0.63 →
# 1.04, 1.12 → 1.08, 1.97 → 1.14; 49152×576 8.0 → 8.5, 19.2 → 8.2, 37.0 → 11.3. With avx512 (Zen 4)
# oneDNN's fp32 blocked layout won at M = 1 too (above: 49152×576, 10.6 → 9.8).
def packed_min_rows(widened: bool) -> int:
    return 1 if not widened and "avx512f" in _cpu_flags() else 2


# A single row through a wide fp32 weight (a memory-bound GEMV) streams the weight faster transposed,
# K × N contiguous, through MKL's GEMV (torch.mm of the row by it) than through oneDNN's blocked layout.
# Measured (AMD EPYC Zen 4, avx512, one thread, weights cycled past the L3, GB/s of weight read, blocked →
# transposed): 49152×576 15.0 → 19.0, 3072×576 14.9 → 20.2, 6144×1024 12.8 → 20.5, 2048×1024 14.8 → 17.3,
# 1536×1536 13.6 → 16.6, 960×576 12.7 → 15.2, 1024×1024 14.8 → 15.9; where N < K or N is small it does
# not pay (576×1536 13.0 → 12.8, 1024×2048 14.5 → 14.1, 192×576 9.2 → 7.5). SmolLM2-135M fp32, batch 1:
# engine step (thread CPU time, four interleaved runs) 54-59 → 45-56 ms; served (bench/decode_throughput.py)
# 52.9 → 44.9 ms. It is a second private copy of those weights (SmolLM2 fp32: 391 of its 538 MB), made
# after the blocked copies, in the room the budget has free (services/executor/packing.py). Not measured
# on AVX2 hosts, where one row reads the plain weight.
GEMV_MIN_ROWS = 768


def gemv_copy(w: torch.Tensor) -> bool:
    """Whether a single row through the CPU weight ``w`` (N × K) reads a transposed copy (above)."""
    n, k = w.shape
    return w.dtype == torch.float32 and n >= GEMV_MIN_ROWS and n >= k and "avx512f" in _cpu_flags()


def transposed_cols(w: torch.Tensor, out: torch.Tensor, start: int, stop: int) -> None:
    """Rows [start, stop) of ``w`` into columns [start, stop) of its transposed copy ``out`` (K × N)."""
    with torch.no_grad():
        out[:, start:stop].copy_(w[start:stop].t())


def _gemv_linear(x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = torch.mm(x.reshape(1, wt.shape[0]), wt)
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], wt.shape[1])


def _torch_linear(x: torch.Tensor, w: SplitWeight, bias: torch.Tensor | None) -> torch.Tensor:
    rows = x.numel() // max(x.shape[-1], 1)
    if w.packed is not None and x.device.type == "cpu" and x.dtype == w.host.dtype and rows:
        if rows == 1 and w.packed.gemv is not None:
            return _gemv_linear(x, w.packed.gemv, bias)
        if rows >= packed_min_rows(w.packed.dtype != x.dtype):
            return _packed_linear(x, w.packed, bias)
    if (x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)
            and rows >= CPU_WIDEN_MIN_ROWS and not cpu_has_native(x.dtype)):
        return _widened_linear(x, w, bias)
    if w.hbm.shape[0] == 0:
        return _cpu_linear(x, w.host, bias)
    if w.host.shape[0] == 0:
        return _cpu_linear(x, w.hbm, bias)
    y = torch.cat([_cpu_linear(x, w.hbm), _cpu_linear(x, w.host)], dim=-1)
    return y if bias is None else y + bias


def hybrid_moe(
    x: torch.Tensor, expert_weights: list[SplitWeight], topk_ids: torch.Tensor, topk_weights: torch.Tensor
) -> torch.Tensor:
    """y[t] = Σ_j topk_weights[t, j] · x[t]·W_{topk_ids[t, j]}ᵀ; reads only the routed experts' weights.

    ``x`` is (T × K), ``topk_ids`` and ``topk_weights`` are (T × top_k). One HybridGEMM (or torch
    GEMM) per routed expert over the tokens routed to it; the result has x's dtype.
    """
    if x.dim() != 2 or topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != x.shape[0]:
        raise ShapeError(
            f"hybrid_moe: x (T × K) and topk (T × top_k) disagree: {tuple(x.shape)}, "
            f"{tuple(topk_ids.shape)}, {tuple(topk_weights.shape)}"
        )
    if not expert_weights:
        raise ShapeError("hybrid_moe: no experts")
    n = expert_weights[0].n
    if any(e.n != n for e in expert_weights):
        raise ShapeError("hybrid_moe: experts differ in N")
    ids = topk_ids.reshape(-1)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(expert_weights)):
        raise ShapeError(f"hybrid_moe: expert id outside [0, {len(expert_weights)})")
    top_k = topk_ids.shape[1]
    token_of = torch.arange(x.shape[0], device=x.device).repeat_interleave(top_k)
    gates = topk_weights.reshape(-1).to(torch.float32)
    y = torch.zeros((x.shape[0], n), dtype=torch.float32, device=x.device)
    order = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids, minlength=len(expert_weights)).tolist()
    start = 0
    for e, count in enumerate(counts):
        if count == 0:
            continue
        sel = order[start : start + count]
        start += count
        rows = token_of[sel]
        part = hybrid_linear(x.index_select(0, rows), expert_weights[e]).to(torch.float32)
        y.index_add_(0, rows, part * gates[sel, None])
    return y.to(x.dtype)
