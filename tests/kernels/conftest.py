"""Kernel tests: Triton's CPU interpreter without a GPU, compiled kernels with one.

TRITON_INTERPRET must be set before the first ``import triton``, so this runs first.
"""

from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise RuntimeError("triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1")
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
# The device the tests' tensors live on: the kernel reads CPU tensors when interpreting.
DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


def tolerance(dtype: torch.dtype, k: int, x: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    """(rtol, atol) for Y = X·Wᵀ against a float64 reference.

    rtol: the output dtype's resolution (fp16 1e-3, bf16 1e-2, fp32 1e-6) covers rounding the
    result to that dtype (≤ eps/2 relative). atol covers the fp32 accumulator: K products of size
    ≤ max|x|·max|w| summed in fp32 err by ~√K·ε₃₂·Σ|terms| ≤ K^1.5·2⁻²³·max|x|·max|w| (taken ×2);
    it matters where cancellation makes |y| small.
    """
    rtol = torch.finfo(dtype).resolution
    scale = float(x.abs().max()) * float(w.abs().max()) if x.numel() and w.numel() else 0.0
    atol = 2.0 * k**1.5 * 2.0**-23 * scale + 1e-12
    return rtol, atol


def close(out: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> bool:
    """Every element within atol + rtol·|ref|; NaN (an unwritten, poisoned element) never passes."""
    o = out.detach().double().cpu()
    return bool(torch.isfinite(o).all()) and bool(((o - ref).abs() <= atol + rtol * ref.abs()).all())


def assert_close(out: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> None:
    o = out.detach().double().cpu()
    assert torch.isfinite(o).all(), f"{int((~torch.isfinite(o)).sum())} elements not written (NaN poison)"
    err = ((o - ref).abs() - rtol * ref.abs()).max().item()
    assert close(out, ref, rtol, atol), f"max excess error {err:.3g} over atol {atol:.3g} (rtol {rtol:g})"
