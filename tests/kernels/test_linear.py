"""hybrid_linear's dispatch and hybrid_moe against the float64 references."""

from __future__ import annotations

import pytest
import torch

from c2cq.kernels.hybrid_gemm import ShapeError
from c2cq.kernels.linear import SplitWeight, hybrid_linear, hybrid_moe
from c2cq.kernels.reference import gemm_reference, moe_reference

from .conftest import assert_close, tolerance


def _split(w: torch.Tensor, rows: int, hbm_device: str, host_pinned: bool) -> SplitWeight:
    host = w[rows:].clone()
    return SplitWeight(hbm=w[:rows].to(hbm_device), host=host.pin_memory() if host_pinned else host)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows", [0, 29, 77])
def test_cpu_path_with_batch_dims(dtype, rows):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(2, 3, 40, generator=g).to(dtype)
    w = torch.randn(77, 40, generator=g).to(dtype)
    bias = torch.randn(77, generator=g).to(dtype)
    y = hybrid_linear(x, _split(w, rows, "cpu", False), bias)
    assert y.shape == (2, 3, 77) and y.dtype == dtype
    ref = gemm_reference(x.reshape(-1, 40), w, bias).reshape(2, 3, 77)
    # torch's CPU bf16 GEMM rounds inputs the same way; the output rounding sets rtol as for the kernel.
    assert_close(y, ref, *tolerance(dtype, 40, x, w))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows", [0, 29, 77])
@pytest.mark.parametrize("block_rows", [16, None], ids=["blocks-of-16", "one-block"])
def test_cpu_half_precision_widened_for_many_rows(dtype, rows, block_rows, monkeypatch):
    """From CPU_WIDEN_MIN_ROWS rows on, half-precision weights are widened to fp32 for the product, a
    block of weight rows at a time (blocks of 16 cross the HBM/host boundary at 29): the result keeps
    x's dtype and shape and the same accuracy bound against the float64 reference."""
    from c2cq.kernels import linear

    monkeypatch.setattr(linear, "cpu_has_native", lambda dtype: False)  # as on a CPU without bf16 instructions
    if block_rows:
        monkeypatch.setattr(linear, "CPU_WIDEN_BLOCK_BYTES", block_rows * 4 * 40)
    g = torch.Generator().manual_seed(100 + rows)
    x = torch.randn(2, linear.CPU_WIDEN_MIN_ROWS + 3, 40, generator=g).to(dtype)
    w = torch.randn(77, 40, generator=g).to(dtype)
    bias = torch.randn(77, generator=g).to(dtype)
    y = hybrid_linear(x, _split(w, rows, "cpu", False), bias)
    assert y.dtype == dtype and y.shape == (2, linear.CPU_WIDEN_MIN_ROWS + 3, 77)
    flat = x.reshape(-1, 40)
    assert_close(y.reshape(-1, 77), gemm_reference(flat, w, bias), *tolerance(dtype, 40, flat, w))


def test_k_mismatch_is_a_shape_error():
    w = SplitWeight.host_only(torch.randn(8, 5))
    with pytest.raises(ShapeError):
        hybrid_linear(torch.randn(2, 4), w)
    with pytest.raises(ValueError):  # ShapeError stays a ValueError for existing callers
        hybrid_linear(torch.randn(2, 4), w)


def _moe_case(t, k, n, experts, top_k, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=g).to(dtype)
    ws = [torch.randn(n, k, generator=g).to(dtype) for _ in range(experts)]
    logits = torch.randn(t, experts, generator=g)
    gates, ids = torch.topk(torch.softmax(logits, -1), top_k, dim=-1)
    return x, ws, ids, gates


def test_moe_cpu_matches_reference():
    x, ws, ids, gates = _moe_case(t=13, k=48, n=40, experts=6, top_k=2, dtype=torch.float32, seed=1)
    experts = [_split(w, r, "cpu", False) for w, r in zip(ws, [0, 10, 40, 20, 5, 33])]
    y = hybrid_moe(x, experts, ids, gates)
    assert_close(y, moe_reference(x, ws, ids, gates), *tolerance(torch.float32, 48, x, ws[0]))




def test_moe_reads_only_routed_experts():
    x, ws, _, _ = _moe_case(t=4, k=16, n=8, experts=5, top_k=1, dtype=torch.float32, seed=2)
    ids = torch.tensor([[1], [3], [1], [3]])
    gates = torch.ones(4, 1)
    experts = [SplitWeight.host_only(w) for w in ws]
    for e in (0, 2, 4):  # unrouted experts hold NaN: touching them would poison the result
        experts[e] = SplitWeight.host_only(torch.full_like(ws[e], float("nan")))
    y = hybrid_moe(x, experts, ids, gates)
    assert_close(y, moe_reference(x, ws, ids, gates), *tolerance(torch.float32, 16, x, ws[0]))


def test_moe_rejects_bad_routing():
    x, ws, ids, gates = _moe_case(t=3, k=8, n=4, experts=2, top_k=1, dtype=torch.float32, seed=3)
    experts = [SplitWeight.host_only(w) for w in ws]
    with pytest.raises(ShapeError):
        hybrid_moe(x, experts, ids + 5, gates)
    with pytest.raises(ShapeError):
        hybrid_moe(x, experts, ids[:2], gates[:2])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows", [0, 1000, 4864])
def test_cuda_dispatch(dtype, rows):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(2, 5, 896, generator=g).to(dtype)
    w = torch.randn(4864, 896, generator=g).to(dtype)
    bias = torch.randn(4864, generator=g).to(dtype)
    y = hybrid_linear(x.cuda(), _split(w, rows, "cuda", True), bias.cuda())
    assert y.shape == (2, 5, 4864) and y.is_cuda
    ref = gemm_reference(x.reshape(-1, 896), w, bias).reshape(2, 5, 4864)
    assert_close(y, ref, *tolerance(dtype, 896, x, w))


@pytest.mark.gpu
def test_moe_cuda_matches_reference():
    x, ws, ids, gates = _moe_case(t=40, k=512, n=768, experts=8, top_k=2, dtype=torch.bfloat16, seed=4)
    experts = [_split(w, r, "cuda", True) for w, r in zip(ws, [0, 64, 768, 300, 17, 700, 0, 512])]
    y = hybrid_moe(x.cuda(), experts, ids.cuda(), gates.cuda())
    # Each expert's output is rounded to bf16 before the gated sum, so the rounding error is
    # relative to Σ_j g_j·|y_j| (not to |Σ_j g_j·y_j|, which may cancel): rtol applies to that bound.
    rtol, atol = tolerance(torch.bfloat16, 512, x, ws[0])
    ref = moe_reference(x, ws, ids, gates)
    bound = _gated_abs(x, ws, ids, gates)
    err = (y.double().cpu() - ref).abs()
    assert torch.isfinite(y).all() and bool((err <= atol + rtol * bound).all())


def _gated_abs(x, ws, ids, gates):
    """Σ_j g[t, j]·|x[t]·W_{ids[t, j]}ᵀ| in float64."""
    out = torch.zeros(x.shape[0], ws[0].shape[0], dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            out[t] += float(gates[t, j]) * (ws[int(ids[t, j])].double() @ x[t].double()).abs()
    return out
