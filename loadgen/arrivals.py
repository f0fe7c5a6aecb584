"""Open-loop send schedules: absolute offsets (seconds) computed before a run, seeded.

A renewal process with unit-mean gaps (exponential, Gamma or Weibull of a given coefficient of
variation) is drawn in "operational time" and mapped to wall time through the inverse of the
cumulative rate Λ(t) = ∫₀ᵗ rate (time rescaling). For a constant rate that is a plain
division; for a varying rate it keeps the gap shape locally while following the rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from c2cq.errors import ConfigError

_CHUNK = 4096
_WEIBULL_SHAPE_RANGE = (1e-2, 1e3)  # CV from ~3e3 down to ~1.3e-3


class Pattern(StrEnum):
    """Inter-arrival distribution."""

    POISSON = "poisson"
    GAMMA = "gamma"
    WEIBULL = "weibull"


def gamma_shape_for_cv(cv: float) -> float:
    """Gamma shape k with CV = 1/sqrt(k)."""
    _check_cv(cv)
    return 1.0 / (cv * cv)


def weibull_cv(shape: float) -> float:
    """CV of a Weibull distribution of shape k: sqrt(Γ(1+2/k)/Γ(1+1/k)² − 1)."""
    log_ratio = math.lgamma(1.0 + 2.0 / shape) - 2.0 * math.lgamma(1.0 + 1.0 / shape)
    return math.sqrt(math.expm1(log_ratio))


def weibull_shape_for_cv(cv: float) -> float:
    """Weibull shape k whose CV equals ``cv`` (bisection on log k; CV falls as k grows)."""
    _check_cv(cv)
    lo, hi = (math.log(x) for x in _WEIBULL_SHAPE_RANGE)
    if not weibull_cv(math.exp(hi)) <= cv <= weibull_cv(math.exp(lo)):
        raise ConfigError(f"Weibull CV {cv} out of the supported range")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if weibull_cv(math.exp(mid)) > cv:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return math.exp(0.5 * (lo + hi))


def unit_gaps(rng: np.random.Generator, pattern: Pattern | str, cv: float, n: int) -> np.ndarray:
    """``n`` inter-arrival gaps with mean 1 and the given CV."""
    try:
        pattern = Pattern(pattern)
    except ValueError:
        raise ConfigError(f"unknown arrival pattern {pattern!r}") from None
    if pattern is Pattern.POISSON:
        if not math.isclose(cv, 1.0):
            raise ConfigError(f"a Poisson process has CV 1, not {cv}")
        return rng.exponential(1.0, n)
    if pattern is Pattern.GAMMA:
        k = gamma_shape_for_cv(cv)
        return rng.gamma(k, 1.0 / k, n)
    k = weibull_shape_for_cv(cv)
    return rng.weibull(k, n) / math.gamma(1.0 + 1.0 / k)


@dataclass(frozen=True)
class PiecewiseRate:
    """A rate (requests/s) constant on [starts[i], starts[i+1]); the last one holds forever."""

    starts: tuple[float, ...]
    rates: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.starts or len(self.starts) != len(self.rates):
            raise ConfigError("PiecewiseRate needs as many starts as rates, at least one")
        if self.starts[0] != 0.0:
            raise ConfigError("PiecewiseRate must start at 0 s")
        if any(b <= a for a, b in zip(self.starts, self.starts[1:])):
            raise ConfigError("PiecewiseRate starts must increase strictly")
        if any(not math.isfinite(r) or r < 0 for r in self.rates):
            raise ConfigError("PiecewiseRate rates must be finite and >= 0")

    @classmethod
    def from_function(
        cls, rate: Callable[[float], float], duration_s: float, step_s: float
    ) -> PiecewiseRate:
        """Approximate ``rate(t)`` by its value at each step's midpoint, over ``duration_s``."""
        if duration_s <= 0 or step_s <= 0:
            raise ConfigError("duration_s and step_s must be > 0")
        n = math.ceil(duration_s / step_s)
        starts = tuple(i * step_s for i in range(n))
        return cls(starts, tuple(float(rate((i + 0.5) * step_s)) for i in range(n)))

    def _cumulative(self) -> np.ndarray:
        widths = np.diff(np.asarray(self.starts, dtype=np.float64))
        return np.concatenate([[0.0], np.cumsum(widths * np.asarray(self.rates[:-1]))])

    def cumulative(self, t: float) -> float:
        """Λ(t): the expected number of arrivals in [0, t]."""
        i = int(np.searchsorted(self.starts, t, side="right")) - 1
        return float(self._cumulative()[i] + (t - self.starts[i]) * self.rates[i])

    def inverse(self, s: np.ndarray) -> np.ndarray:
        """Λ⁻¹(s) for operational times ``s`` > 0; inf where Λ never reaches s."""
        cum = self._cumulative()
        rates = np.asarray(self.rates, dtype=np.float64)
        # cum[i] < s <= cum[i+1]: a segment with cum[i+1] > cum[i] has a positive rate, so
        # only the last (open-ended) segment can be zero, and then s is never reached.
        i = np.clip(np.searchsorted(cum, s, side="left") - 1, 0, len(rates) - 1)
        r = rates[i]
        with np.errstate(divide="ignore"):
            dt = np.where(r > 0, (s - cum[i]) / np.where(r > 0, r, 1.0), np.inf)
        return np.asarray(self.starts, dtype=np.float64)[i] + dt


RateSpec = float | PiecewiseRate


def schedule(
    rate: RateSpec,
    *,
    pattern: Pattern | str = Pattern.POISSON,
    cv: float = 1.0,
    duration_s: float | None = None,
    count: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Send offsets (s, increasing, float64) bounded by ``duration_s`` and/or ``count``.

    ``rate`` is requests/s, constant or a :class:`PiecewiseRate`. The process starts at 0 with
    its first gap (an ordinary renewal process). The same arguments give the same schedule.
    """
    if duration_s is None and count is None:
        raise ConfigError("a schedule needs duration_s or count")
    if duration_s is not None and duration_s < 0:
        raise ConfigError(f"duration_s must be >= 0, got {duration_s}")
    if count is not None and count < 0:
        raise ConfigError(f"count must be >= 0, got {count}")
    profile = rate if isinstance(rate, PiecewiseRate) else PiecewiseRate((0.0,), (float(rate),))
    # Operational-time bound: Λ(duration); a count bound needs Λ to grow without limit.
    s_max = math.inf if duration_s is None else profile.cumulative(duration_s)
    if count is not None and math.isinf(s_max) and profile.rates[-1] == 0.0:
        s_max = profile.cumulative(profile.starts[-1])
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    total, s_last = 0, 0.0
    while (count is None or total < count) and s_last < s_max:
        s = s_last + np.cumsum(unit_gaps(rng, pattern, cv, _CHUNK))
        s_last = float(s[-1])
        s = s[s <= s_max]
        if count is not None:
            s = s[: count - total]
        parts.append(s)
        total += len(s)
    s_all = np.concatenate(parts) if parts else np.empty(0)
    return profile.inverse(s_all)


def window_arrivals(
    rng: np.random.Generator,
    *,
    rate_rps: float,
    window_s: float,
    pattern: str,
    shape: float,
    scale: float,
) -> np.ndarray:
    """Arrivals in [0, window_s) from a fitted gap distribution, rescaled to hold rate × window.

    ServeGen's rule: the count is rate × window (rounded stochastically so the mean is exact);
    count + 1 gaps are drawn from Gamma(shape, scale) or Weibull(shape, scale) and scaled so
    they span the window, so the gap shape is kept and the count is exact.
    """
    expected = rate_rps * window_s
    if expected <= 0:
        return np.empty(0)
    n = int(expected) + int(rng.random() < expected - int(expected))
    if n == 0:
        return np.empty(0)
    kind = pattern.strip().lower()
    if kind == Pattern.GAMMA:
        gaps = rng.gamma(shape, scale, n + 1)
    elif kind == Pattern.WEIBULL:
        gaps = rng.weibull(shape, n + 1) * scale
    else:
        raise ConfigError(f"unknown arrival pattern {pattern!r}")
    t = np.cumsum(gaps)
    return t[:n] * (window_s / t[n])


def empirical_cv(offsets: Sequence[float] | np.ndarray) -> float:
    """CV (std/mean, population std) of the gaps between consecutive offsets and from 0."""
    gaps = np.diff(np.concatenate([[0.0], np.asarray(offsets, dtype=np.float64)]))
    return float(gaps.std() / gaps.mean())


def _check_cv(cv: float) -> None:
    if not (math.isfinite(cv) and cv > 0):
        raise ConfigError(f"CV must be finite and > 0, got {cv}")
