"""HybridGEMM against the float64 reference: odd shapes, every dtype, α ∈ {0, middle, 1}."""

from __future__ import annotations

import pytest
import torch

from c2cq.kernels.configs import TileConfig
from c2cq.kernels.hybrid_gemm import ShapeError, hybrid_gemm
from c2cq.kernels.reference import gemm_reference

from .conftest import DEVICE, assert_close, close, tolerance

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# Large tiles on small shapes keep the interpreter fast (~2 ms per program × K-step).
BIG_TILE = TileConfig(64, 64, 64, num_warps=4, num_stages=1)


def _operands(m, n, k, split, dtype, seed, device=DEVICE, host_device=None):
    """W plus two separate buffers holding its rows, each padded with decoy rows.

    hbm_buf[:split] = W[:split] and host_buf[:n-split] = W[split:]; every other row is other random
    data, so a row read from the wrong buffer or at the wrong offset gives a wrong result.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    hbm_buf = torch.randn(n + 16, k, generator=g).to(dtype)
    host_buf = torch.randn(n + 16, k, generator=g).to(dtype)
    hbm_buf[:split] = w[:split]
    host_buf[: n - split] = w[split:]
    host_device = host_device or device
    return x.to(device), w, bias.to(device), hbm_buf.to(device), host_buf.to(host_device)


def _poisoned(m, n, dtype, device=DEVICE):
    return torch.full((m, n), float("nan"), dtype=dtype, device=device)


SHAPES = [(1, 67, 96), (5, 130, 80), (37, 203, 150), (64, 64, 64)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_matches_reference(dtype, m, n, k, alpha):
    split = round(alpha * n)  # 0.5·N is not a multiple of BLOCK_N here: a tile straddles the split
    x, w, bias, hbm_buf, host_buf = _operands(m, n, k, split, dtype, seed=m * 1000 + n + k)
    out = _poisoned(m, n, dtype)
    hybrid_gemm(x, hbm_buf[:split], host_buf[: n - split], bias, out=out, config=BIG_TILE)
    assert_close(out, gemm_reference(x, w, bias), *tolerance(dtype, k, x, w))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_no_bias_and_split_inside_tile(dtype):
    m, n, k, split = 9, 150, 100, 37  # split falls inside the first 64-row tile
    x, w, _, hbm_buf, host_buf = _operands(m, n, k, split, dtype, seed=7)
    out = _poisoned(m, n, dtype)
    hybrid_gemm(x, hbm_buf[:split], host_buf[: n - split], out=out, config=BIG_TILE)
    assert_close(out, gemm_reference(x, w), *tolerance(dtype, k, x, w))


@pytest.mark.parametrize("wrong", [-16, -1, 1, 64])
def test_wrong_split_is_caught(wrong):
    """A test of the test: the same buffers with a wrong split must fail the comparison."""
    dtype, m, n, k, split = torch.float16, 7, 150, 96, 70
    x, w, bias, hbm_buf, host_buf = _operands(m, n, k, split, dtype, seed=11)
    ref = gemm_reference(x, w, bias)
    tol = tolerance(dtype, k, x, w)
    right = hybrid_gemm(x, hbm_buf, host_buf, bias, n=n, split=split, config=BIG_TILE)
    assert close(right, ref, *tol)
    bad = hybrid_gemm(x, hbm_buf, host_buf, bias, n=n, split=split + wrong, config=BIG_TILE)
    assert not close(bad, ref, *tol)


def test_swapped_buffers_are_caught():
    """Another test of the test: reading the HBM rows from the host buffer must fail."""
    dtype, m, n, k, split = torch.float32, 3, 128, 64, 64
    x, w, bias, hbm_buf, host_buf = _operands(m, n, k, split, dtype, seed=12)
    bad = hybrid_gemm(x, host_buf, hbm_buf, bias, n=n, split=split, config=BIG_TILE)
    assert not close(bad, gemm_reference(x, w, bias), *tolerance(dtype, k, x, w))


def test_autotuned_path():
    m, n, k, split = 3, 100, 70, 40
    x, w, bias, hbm_buf, host_buf = _operands(m, n, k, split, torch.float16, seed=5)
    out = _poisoned(m, n, torch.float16)
    hybrid_gemm(x, hbm_buf[:split], host_buf[: n - split], bias, out=out)
    assert_close(out, gemm_reference(x, w, bias), *tolerance(torch.float16, k, x, w))


def test_strided_x():
    m, n, k, split = 6, 64, 64, 20
    x, w, _, hbm_buf, host_buf = _operands(m, n, k, split, torch.float32, seed=6)
    xt = x.T.contiguous().T  # column-major X
    out = hybrid_gemm(xt, hbm_buf[:split], host_buf[: n - split], config=BIG_TILE)
    assert_close(out, gemm_reference(x, w), *tolerance(torch.float32, k, x, w))


def test_empty_dimensions():
    x = torch.randn(0, 32, device=DEVICE)
    w = torch.randn(16, 32, device=DEVICE)
    assert hybrid_gemm(x, w[:8], w[8:]).shape == (0, 16)
    x1 = torch.randn(2, 0, device=DEVICE)
    bias = torch.randn(4, device=DEVICE)
    e = torch.empty(4, 0, device=DEVICE)
    assert torch.equal(hybrid_gemm(x1, e[:1], e[1:], bias), bias.expand(2, 4))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"x": torch.randn(2, 3, 8)},  # not 2-D
        {"x": torch.randn(2, 8, dtype=torch.float64)},  # dtype
        {"hbm": torch.randn(4, 7)},  # K mismatch
        {"host": torch.randn(4, 8, dtype=torch.float16)},  # dtype mismatch
        {"split": 5},  # more HBM rows than the hbm part has
        {"split": -1},
        {"n": 100},  # host part too short
        {"bias": torch.randn(3)},
        {"host": torch.randn(8, 4).T},  # rows not contiguous in K
    ],
)
def test_rejects_bad_operands(kwargs):
    args = {"x": torch.randn(2, 8), "hbm": torch.randn(4, 8), "host": torch.randn(4, 8)}
    args.update(kwargs)
    with pytest.raises(ShapeError):
        hybrid_gemm(args.pop("x"), args.pop("hbm"), args.pop("host"), **args)


# ---- compiled, at real sizes (skipped without CUDA) ----

GPU_SHAPES = [(1, 4864, 896), (16, 896, 4864), (33, 1000, 1030), (64, 4096, 4096), (1024, 2048, 1536)]
# Fixed tiles keep compile time short; test_gpu_autotuned covers the autotuner's choice.
GPU_DECODE_TILE = TileConfig(16, 64, 128, group_m=1, num_warps=4, num_stages=3)
GPU_PREFILL_TILE = TileConfig(128, 128, 64, group_m=8, num_warps=8, num_stages=3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n,k", GPU_SHAPES)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_gpu_real_sizes_pinned_host(dtype, m, n, k, alpha):
    split = round(alpha * n)
    x, w, bias, hbm_buf, host_buf = _operands(m, n, k, split, dtype, seed=m + n + k, host_device="cpu")
    host_buf = host_buf.pin_memory()
    out = _poisoned(m, n, dtype)
    tile = GPU_DECODE_TILE if m <= 64 else GPU_PREFILL_TILE
    hybrid_gemm(x, hbm_buf[:split], host_buf[: n - split], bias, out=out, config=tile)
    torch.cuda.synchronize()
    assert_close(out, gemm_reference(x, w, bias), *tolerance(dtype, k, x, w))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [16, 300])
def test_gpu_autotuned(m):
    n, k, split = 1000, 1030, 333
    x, w, bias, hbm_buf, host_buf = _operands(m, n, k, split, torch.float16, seed=m, host_device="cpu")
    out = _poisoned(m, n, torch.float16)
    hybrid_gemm(x, hbm_buf[:split], host_buf[: n - split].pin_memory(), bias, out=out)
    torch.cuda.synchronize()
    assert_close(out, gemm_reference(x, w, bias), *tolerance(torch.float16, k, x, w))


@pytest.mark.gpu
def test_gpu_host_registered_memory():
    """The catalog's path: ordinary host pages registered with cudaHostRegister."""
    m, n, k, split = 16, 512, 768, 128
    x, w, bias, hbm_buf, host_buf = _operands(m, n, k, split, torch.bfloat16, seed=3, host_device="cpu")
    host_buf = host_buf.contiguous()
    cudart = torch.cuda.cudart()
    nbytes = host_buf.numel() * host_buf.element_size()
    assert int(cudart.cudaHostRegister(host_buf.data_ptr(), nbytes, 0)) == 0
    try:
        out = _poisoned(m, n, torch.bfloat16)
        hybrid_gemm(x, hbm_buf[:split], host_buf[: n - split], bias, out=out, config=GPU_DECODE_TILE)
        torch.cuda.synchronize()
        assert_close(out, gemm_reference(x, w, bias), *tolerance(torch.bfloat16, k, x, w))
    finally:
        cudart.cudaHostUnregister(host_buf.data_ptr())


def _compiled_variants() -> int:
    from c2cq.kernels.hybrid_gemm import _hybrid_gemm_kernel

    return sum(len(entry[0]) for entry in _hybrid_gemm_kernel.device_caches.values())


@pytest.mark.gpu
def test_gpu_changing_split_does_not_recompile():
    m, n, k = 4, 1024, 512
    x, w, _, hbm_buf, host_buf = _operands(m, n, k, 0, torch.float16, seed=4, host_device="cpu")
    w_dev, w_host = w.to(DEVICE), w.pin_memory()
    cfg = TileConfig(16, 64, 128)
    hybrid_gemm(x, w_dev[:320], w_host[320:], config=cfg)
    before = _compiled_variants()
    for split in (17, 64, 333, 512, 1000):  # odd, 16-aligned and 1-off splits alike
        out = hybrid_gemm(x, w_dev[:split], w_host[split:], config=cfg)
        torch.cuda.synchronize()
        assert_close(out, gemm_reference(x, w), *tolerance(torch.float16, k, x, w))
    assert _compiled_variants() == before
