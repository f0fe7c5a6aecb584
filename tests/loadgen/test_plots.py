"""Plots are written as real PNGs (the lead inspects the pictures themselves)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from c2cq.errors import ConfigError
from c2cq.loadgen import arrivals as A
from c2cq.loadgen import plots as P
from c2cq.loadgen import report as R

PNG = b"\x89PNG\r\n\x1a\n"
NAMES = {"ttft_cdf", "tpot_cdf", "slo_over_time", "switch_latency"}


def _records(n: int) -> list[R.RequestRecord]:
    """A bursty run (Gamma arrivals, CV 3) where TTFT grows with the recent arrival count."""
    rng = np.random.default_rng(1)
    planned = A.schedule(4.0, pattern="gamma", cv=3.0, count=n, seed=2)
    out = []
    for i, t in enumerate(planned):
        t = float(t)
        if i % 17 == 0:
            out.append(R.RequestRecord(t, t, "m", "batch", "rejected", error_code="capacity"))
            continue
        load = np.count_nonzero((planned > t - 5.0) & (planned <= t))
        ttft = float(rng.gamma(2.0, 0.02 * load))
        gaps = rng.gamma(3.0, 0.01 + 0.001 * load, int(rng.integers(1, 30)))
        times = tuple(float(x) for x in ttft + np.concatenate([[0.0], np.cumsum(gaps)]))
        switched = i % 6 == 0
        out.append(R.RequestRecord(
            t, t + 0.001, f"m{i % 4}", "interactive" if i % 2 else "batch", "finished",
            ttft_s=ttft, token_times_s=times, n_tokens=len(times), e2e_s=times[-1],
            switched=switched, switch_latency_s=float(rng.uniform(0.1, 0.6)) if switched else None,
        ))
    return out


def test_write_plots_produces_pngs(tmp_path):
    full = P.write_plots(_records(800), tmp_path / "full", window_s=10.0)
    empty = P.write_plots([], tmp_path / "empty")
    assert set(full) == set(empty) == NAMES
    for name in NAMES:
        data = full[name].read_bytes()
        assert data.startswith(PNG) and empty[name].read_bytes().startswith(PNG)
        # Titled and labelled: a bare 7x4-inch canvas is ~2.4 KB, one empty axes ~10 KB.
        assert len(data) > 10_000 and len(empty[name].read_bytes()) > 10_000
        assert data != empty[name].read_bytes()  # the data was drawn
    keep = os.environ.get("C2CQ_KEEP_PLOTS")  # set it to a folder to look at the pictures
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for p in full.values():
            (Path(keep) / p.name).write_bytes(p.read_bytes())


def test_bad_window_is_rejected(tmp_path):
    with pytest.raises(ConfigError):
        P.write_plots([], tmp_path, window_s=0.0)
