"""Shared fixtures for the load generator tests."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "traces"


@pytest.fixture
def traces_dir() -> Path:
    """/work/shared/traces (the sample traces of SOURCES.md); skip when absent."""
    if not (TRACES / "SOURCES.md").is_file():
        pytest.skip(f"sample traces not found at {TRACES}")
    return TRACES


def cv_standard_error(raw: tuple[float, float, float, float], n: int) -> float:
    """Standard error of the sample CV (std/mean) of n i.i.d. draws, by the delta method.

    ``raw`` holds the raw moments E[X^r], r = 1..4. With m the mean, v the variance and
    g(m, v) = sqrt(v)/m: Var ≈ (g_v² (μ4 − v²) + g_m² v + 2 g_m g_v μ3) / n, using
    Var(m̂) = v/n, Var(v̂) ≈ (μ4 − v²)/n and Cov(m̂, v̂) ≈ μ3/n.
    """
    r1, r2, r3, r4 = raw
    v = r2 - r1**2
    mu3 = r3 - 3 * r1 * r2 + 2 * r1**3
    mu4 = r4 - 4 * r1 * r3 + 6 * r1**2 * r2 - 3 * r1**4
    sd = math.sqrt(v)
    g_v, g_m = 1 / (2 * sd * r1), -sd / r1**2
    return math.sqrt((g_v**2 * (mu4 - v**2) + g_m**2 * v + 2 * g_m * g_v * mu3) / n)


def gamma_raw_moments(shape: float, scale: float) -> tuple[float, float, float, float]:
    """E[X^r] = scale^r · Γ(shape + r)/Γ(shape) = scale^r · shape (shape+1)…(shape+r−1)."""
    out, acc = [], 1.0
    for r in range(4):
        acc *= (shape + r) * scale
        out.append(acc)
    return tuple(out)


def weibull_raw_moments(shape: float, scale: float) -> tuple[float, float, float, float]:
    """E[X^r] = scale^r · Γ(1 + r/shape)."""
    return tuple(scale**r * math.gamma(1 + r / shape) for r in range(1, 5))


@pytest.fixture
def stats():
    """The moment helpers above, for tests (conftest functions are not importable)."""

    class _Stats:
        cv_se = staticmethod(cv_standard_error)
        gamma = staticmethod(gamma_raw_moments)
        weibull = staticmethod(weibull_raw_moments)

    return _Stats
