"""Send schedules: deterministic, with the rate and CV asked for, following a varying rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from c2cq.errors import ConfigError
from c2cq.loadgen import arrivals as A

N = 100_000  # gaps per statistical check
Z = 5.0  # standard errors allowed: a false failure has probability < 1e-6 per check


def _weibull_cv(k: float) -> float:
    # Written out with math.gamma, independently of arrivals.weibull_cv (which uses lgamma).
    return math.sqrt(math.gamma(1 + 2 / k) / math.gamma(1 + 1 / k) ** 2 - 1)


def test_seeded_schedule_is_identical_across_runs():
    kw = dict(pattern="gamma", cv=2.5, count=5000)
    a = A.schedule(7.0, seed=42, **kw)
    b = A.schedule(7.0, seed=42, **kw)
    c = A.schedule(7.0, seed=43, **kw)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(np.diff(a) >= 0) and a[0] > 0


@pytest.mark.parametrize("k", [0.3, 0.7, 1.0, 2.0, 5.5])
def test_weibull_shape_round_trips(k):
    cv = _weibull_cv(k)
    assert A.weibull_shape_for_cv(cv) == pytest.approx(k, rel=1e-9)


def test_weibull_cv_one_is_exponential():
    assert A.weibull_shape_for_cv(1.0) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(
    ("pattern", "cv"),
    [("poisson", 1.0), ("gamma", 0.5), ("gamma", 3.0), ("weibull", 0.5), ("weibull", 2.0)],
)
def test_rate_and_cv_match_within_sampling_error(pattern, cv, stats):
    rate = 20.0
    t = A.schedule(rate, pattern=pattern, cv=cv, count=N, seed=7)
    assert len(t) == N
    gaps = np.diff(np.concatenate([[0.0], t]))
    mean = 1.0 / rate
    # The standard error of the mean gap of N i.i.d. gaps is CV · mean / sqrt(N).
    assert abs(gaps.mean() - mean) <= Z * cv * mean / math.sqrt(N)
    # The sample CV's standard error from the unit-mean gap law's first four moments.
    if pattern == "weibull":
        k = A.weibull_shape_for_cv(cv)
        raw = stats.weibull(k, 1 / math.gamma(1 + 1 / k))
    else:
        k = 1 / cv**2  # exponential is Gamma(1, 1)
        raw = stats.gamma(k, 1 / k)
    assert raw[1] - raw[0] ** 2 == pytest.approx(cv**2, rel=1e-9)  # the law has the asked CV
    assert abs(gaps.std() / gaps.mean() - cv) <= Z * stats.cv_se(raw, N)


def test_duration_bound_gives_rate_times_duration():
    rate, duration, cv = 50.0, 400.0, 2.0
    t = A.schedule(rate, pattern="gamma", cv=cv, duration_s=duration, seed=3)
    assert t[-1] <= duration
    # A renewal process count over a long horizon has variance ≈ CV² · rate · duration.
    assert abs(len(t) - rate * duration) <= Z * cv * math.sqrt(rate * duration)


def test_count_and_duration_both_bound():
    t = A.schedule(100.0, count=50, duration_s=1e6, seed=1)
    assert len(t) == 50
    t = A.schedule(100.0, count=10**9, duration_s=2.0, seed=1)
    assert t[-1] <= 2.0 and len(t) < 400


def test_piecewise_rate_follows_each_segment():
    profile = A.PiecewiseRate((0.0, 100.0, 200.0, 300.0), (5.0, 0.0, 20.0, 2.0))
    t = A.schedule(profile, duration_s=400.0, seed=11)
    counts = np.histogram(t, bins=[0, 100, 200, 300, 400])[0]
    assert counts[1] == 0  # nothing is sent while the rate is zero
    for n, rate in zip(counts, (5.0, 0.0, 20.0, 2.0)):
        expected = rate * 100.0
        assert abs(n - expected) <= Z * math.sqrt(max(expected, 1.0))  # Poisson: var = mean


def test_rate_function_by_time_rescaling():
    def rate(t: float) -> float:
        return 10.0 + 8.0 * math.sin(2 * math.pi * t / 200.0)

    profile = A.PiecewiseRate.from_function(rate, duration_s=400.0, step_s=1.0)
    t = A.schedule(profile, duration_s=400.0, seed=5)
    # The expected count in the half-periods of high and of low rate:
    # ∫ 10 ± 8 sin over 100 s = 1000 ± 8·200/π.
    hi = np.count_nonzero(t % 200.0 < 100.0)
    lo = len(t) - hi
    delta = 8.0 * 200.0 / math.pi
    for n, expected in ((hi, 2 * (1000 + delta)), (lo, 2 * (1000 - delta))):
        assert abs(n - expected) <= Z * math.sqrt(expected)


def test_cumulative_and_inverse_agree():
    profile = A.PiecewiseRate((0.0, 10.0, 25.0), (2.0, 0.0, 4.0))
    assert profile.cumulative(10.0) == pytest.approx(20.0)
    assert profile.cumulative(30.0) == pytest.approx(40.0)
    t = profile.inverse(np.array([1.0, 20.0, 20.5, 40.0]))
    assert t == pytest.approx([0.5, 10.0, 25.125, 30.0])


def test_rate_ending_at_zero_stops_a_count_bound():
    profile = A.PiecewiseRate((0.0, 10.0), (3.0, 0.0))
    t = A.schedule(profile, count=10**6, seed=2)
    assert len(t) < 100 and t[-1] <= 10.0


def test_window_arrivals_hold_rate_times_window():
    rng = np.random.default_rng(0)
    t = A.window_arrivals(rng, rate_rps=0.5, window_s=600.0, pattern="Gamma", shape=0.3, scale=2)
    assert len(t) == 300  # 0.5 × 600 is an integer, so no stochastic rounding
    assert np.all(np.diff(t) >= 0) and t[0] >= 0 and t[-1] < 600.0
    counts = {
        len(A.window_arrivals(np.random.default_rng(s), rate_rps=0.0125, window_s=600.0,
                              pattern="Weibull", shape=0.8, scale=1.0))
        for s in range(50)
    }
    assert counts <= {7, 8}  # 7.5 expected → floor or ceil


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rate=1.0, pattern="poisson", cv=2.0, count=1),
        dict(rate=1.0, pattern="gamma", cv=0.0, count=1),
        dict(rate=1.0, pattern="gamma", cv=1.0),
        dict(rate=1.0, pattern="nope", cv=1.0, count=1),
        dict(rate=1.0, count=-1),
    ],
)
def test_bad_parameters_raise_config_error(kwargs):
    rate = kwargs.pop("rate")
    with pytest.raises(ConfigError):
        A.schedule(rate, **kwargs)


def test_bad_piecewise_rate():
    with pytest.raises(ConfigError):
        A.PiecewiseRate((1.0,), (2.0,))
    with pytest.raises(ConfigError):
        A.PiecewiseRate((0.0, 5.0, 5.0), (1.0, 2.0, 3.0))
    with pytest.raises(ConfigError):
        A.PiecewiseRate((0.0,), (-1.0,))
