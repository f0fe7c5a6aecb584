"""HybridGEMM: Y = X·Wᵀ (+ bias) where W's rows come from two buffers in one launch.

W (N × K) is split along N at ``split``: rows [0, split) are read from the HBM part, rows
[split, N) from the host part (pinned host memory, read by the kernel over the link). The split is
a runtime argument (``do_not_specialize``), so changing α never recompiles.

Tile boundary: each W row picks its source by a per-row pointer select, so the split may fall
anywhere, also inside a BLOCK_N tile, and autotuning over BLOCK_N stays correct. Programs are
ordered so that tiles read from the host interleave with tiles read from HBM: both memories are
busy from the first wave on, which is what the floor max(α|W|/B_hbm, (1−α)|W|/B_link) assumes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from c2cq.errors import C2CQError
from c2cq.kernels import configs as _configs
from c2cq.kernels.configs import TileConfig


class ShapeError(C2CQError, ValueError):
    """Operands of a HybridGEMM do not fit together (shape, dtype, device, layout or split)."""

    code = "bad_shape"


_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit(do_not_specialize=["split", "tune_regime"])
def _hybrid_gemm_kernel(
    x_ptr, hbm_ptr, host_ptr, bias_ptr, out_ptr,
    M, N, K, split,
    stride_xm, stride_xk, stride_hbm_n, stride_host_n, stride_om, stride_on,
    m_bucket, tune_regime,  # autotune keys only
    HAS_BIAS: tl.constexpr, CAST_FP32: tl.constexpr, EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped ordering along M (L2 reuse of W tiles for prefill).
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    q = (pid % num_pid_in_group) // group_size_m
    # Interleave: of num_pid_n slots, n_host go to host tiles, spread evenly (Bresenham).
    n_hbm_tiles = split // BLOCK_N
    n_host_tiles = num_pid_n - n_hbm_tiles
    before = (q * n_host_tiles) // num_pid_n
    is_host_slot = ((q + 1) * n_host_tiles) // num_pid_n > before
    pid_n = tl.where(is_host_slot, n_hbm_tiles + before, q - before)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # Each row picks its source; rows past N are masked (their address is never dereferenced).
    w_rows = tl.where(offs_n < split, hbm_ptr + offs_n * stride_hbm_n, host_ptr + (offs_n - split) * stride_host_n)
    w_ptrs = w_rows[None, :] + offs_k[:, None]  # (BLOCK_K, BLOCK_N); W rows are contiguous in K
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
            w = tl.load(w_ptrs, mask=mask_n[None, :], other=0.0, eviction_policy="evict_first")
        else:
            k_ok = offs_k < K - k0
            x = tl.load(x_ptrs, mask=mask_m[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=mask_n[None, :] & k_ok[:, None], other=0.0, eviction_policy="evict_first")
        if CAST_FP32:  # the interpreter's bf16 tl.dot is wrong: multiply in fp32 there
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


_kernel = triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})(_hybrid_gemm_kernel)
_autotuned = triton.autotune(
    configs=_configs.all_configs(),
    key=["m_bucket", "N", "K", "tune_regime"],
    prune_configs_by={"early_config_prune": _configs.prune},
    do_bench=_configs.tuning_bench,
)(_kernel)


def _check(x: torch.Tensor, hbm: torch.Tensor, host: torch.Tensor, bias: torch.Tensor | None, n: int, split: int) -> None:
    if x.dim() != 2:
        raise ShapeError(f"hybrid_gemm: x must be 2-D (M × K), got shape {tuple(x.shape)}")
    if x.dtype not in _SUPPORTED:
        raise ShapeError(f"hybrid_gemm: dtype {x.dtype} not supported (fp16, bf16, fp32)")
    k = x.shape[1]
    for name, part in (("hbm", hbm), ("host", host)):
        if part.dim() != 2 or part.shape[1] != k:
            raise ShapeError(f"hybrid_gemm: {name} part must be (rows × K={k}), got {tuple(part.shape)}")
        if part.dtype != x.dtype:
            raise ShapeError(f"hybrid_gemm: {name} part is {part.dtype}, x is {x.dtype}")
        if part.shape[0] and part.stride(1) != 1:
            raise ShapeError(f"hybrid_gemm: {name} part rows must be contiguous in K")
    if not 0 <= split <= n:
        raise ShapeError(f"hybrid_gemm: split {split} outside [0, N={n}]")
    if hbm.shape[0] < split or host.shape[0] < n - split:
        raise ShapeError(
            f"hybrid_gemm: split {split} of N={n} needs ≥{split} hbm rows and ≥{n - split} host rows, "
            f"got {hbm.shape[0]} and {host.shape[0]}"
        )
    if bias is not None and (bias.shape != (n,) or bias.dtype != x.dtype):
        raise ShapeError(f"hybrid_gemm: bias must be ({n},) {x.dtype}, got {tuple(bias.shape)} {bias.dtype}")


def hybrid_gemm(
    x: torch.Tensor,
    hbm: torch.Tensor,
    host: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    n: int | None = None,
    split: int | None = None,
    out: torch.Tensor | None = None,
    config: TileConfig | None = None,
) -> torch.Tensor:
    """Y (M × N) = X·Wᵀ (+ bias); W rows [0, split) from ``hbm``, rows [split, N) from ``host``.

    ``split`` defaults to ``hbm.shape[0]`` and ``n`` to ``split + host.shape[0]``. ``out`` (M × N,
    x's dtype) is written in place when given. ``config`` forces one tile shape (no autotuning).
    For M > 64 (prefill) a host part not on x's device is first staged into HBM by one copy.
    """
    split = hbm.shape[0] if split is None else int(split)
    n = split + host.shape[0] if n is None else int(n)
    _check(x, hbm, host, bias, n, split)
    m, k = x.shape
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    elif out.shape != (m, n) or out.dtype != x.dtype or out.device != x.device:
        raise ShapeError(f"hybrid_gemm: out must be ({m}, {n}) {x.dtype} on {x.device}")
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.copy_(bias.expand(m, n) if bias is not None else torch.zeros_like(out))
    if m > _configs.DECODE_MAX_M and host.shape[0] and host.device != x.device:
        # Compute-bound: each of the ⌈M/BLOCK_M⌉ row tiles would re-read the host rows over the link,
        # so the copy engine stages them into HBM once and the kernel reads both parts from there.
        host = host[: n - split].to(x.device, non_blocking=True)
    # An empty part still needs a valid pointer and a stride that does not change specialization.
    hbm_arg = hbm if hbm.shape[0] else host
    host_arg = host if host.shape[0] else hbm
    interpret = _configs.interpreting()
    args = (
        x, hbm_arg, host_arg, bias if bias is not None else out, out,
        m, n, k, split,
        x.stride(0), x.stride(1), hbm_arg.stride(0), host_arg.stride(0), out.stride(0), out.stride(1),
        _configs.m_bucket(m), _configs.host_share_bucket(n, split),
    )  # fmt: skip
    flags = {
        "HAS_BIAS": bias is not None,
        "CAST_FP32": interpret and x.dtype == torch.bfloat16,
        "DOT_PRECISION": "ieee" if x.dtype == torch.float32 or interpret else "tf32",
    }
    if config is None:
        _autotuned[_grid(m, n)](*args, **flags)
    else:
        grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n),)
        _kernel[grid](*args, **flags, **config.meta(), num_warps=config.num_warps, num_stages=config.num_stages)
    return out


def _grid(m: int, n: int):
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
