"""Report figures against numpy on synthetic records, and SLO logic on hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from c2cq.loadgen import report as R
from c2cq.loadgen.workload import SloClass

CLASSES = (SloClass("interactive", 1000.0, 100.0), SloClass("batch", 10000.0, 500.0))


def _finished(ttft, gaps, *, planned=0.0, lag=0.0, cls="interactive", **kw) -> R.RequestRecord:
    times = tuple(float(x) for x in ttft + np.concatenate([[0.0], np.cumsum(gaps)]))
    return R.RequestRecord(
        planned_offset_s=planned, sent_offset_s=planned + lag, model="m", slo_class=cls,
        status="finished", ttft_s=float(ttft), token_times_s=times, n_tokens=len(times),
        e2e_s=times[-1], **kw,
    )


@pytest.fixture
def synthetic():
    rng = np.random.default_rng(0)
    records, ttfts, tpots, itls, e2es, lags = [], [], [], [], [], []
    for i in range(400):
        n = int(rng.integers(1, 40))
        ttft = float(rng.gamma(2.0, 0.3))
        gaps = rng.gamma(3.0, 0.02, n - 1)
        lag = float(rng.exponential(0.002))
        rec = _finished(ttft, gaps, planned=i * 0.1, lag=lag,
                        cls="interactive" if i % 3 else "batch",
                        switched=bool(i % 5 == 0),
                        switch_latency_s=float(rng.uniform(0.05, 0.5)) if i % 5 == 0 else None)
        records.append(rec)
        ttfts.append(ttft)
        itls.extend(gaps)
        e2es.append(ttft + gaps.sum())
        lags.append(lag)
        if n >= 2:
            tpots.append(gaps.sum() / (n - 1))
    return records, dict(ttft=ttfts, tpot=tpots, itl=itls, e2e=e2es, lag=lags)


def _check(summary: R.Summary, values) -> None:
    v = np.asarray(values)
    assert summary.count == v.size
    # Different summation orders of the same float64 values: agree to ~1e-12 relative.
    assert summary.mean == pytest.approx(v.mean(), rel=1e-12)
    assert summary.max == pytest.approx(v.max(), rel=1e-12)
    for q in (50, 90, 99):
        assert getattr(summary, f"p{q}") == pytest.approx(np.percentile(v, q), rel=1e-12)


def test_latency_percentiles_match_numpy(synthetic):
    records, expected = synthetic
    rep = R.Report.from_records(records, CLASSES)
    _check(rep.ttft_s, expected["ttft"])
    _check(rep.tpot_s, expected["tpot"])
    _check(rep.itl_s, expected["itl"])
    _check(rep.e2e_s, expected["e2e"])
    _check(rep.send_lag_s, expected["lag"])
    sw = [r.switch_latency_s for r in records if r.switched]
    assert rep.switches == len(sw) == 80
    _check(rep.switch_latency_s, sw)


def test_slo_attainment_goodput_and_codes():
    recs = [
        _finished(1.0, [0.1, 0.1]),  # ttft at the limit, tpot at the limit: meets
        _finished(1.001, [0.01]),  # ttft over: misses
        _finished(0.2, [0.05, 0.3]),  # tpot (0.35/2 = 0.175) over: misses
        _finished(0.5, []),  # one token, no TPOT: meets
        _finished(9.0, [0.4, 0.5], cls="batch"),  # batch: 9 s ≤ 10 s, 0.45 ≤ 0.5: meets
        _finished(0.1, [0.6], cls="batch"),  # batch tpot 0.6 > 0.5: misses
        _finished(0.5, [0.3], cls="custom", ttft_ms=600.0, tpot_ms=400.0),  # own targets: meets
        R.RequestRecord(1.0, 1.0, "m", "interactive", "rejected", error_code="capacity"),
        R.RequestRecord(1.0, 1.0, "m", "interactive", "rejected", error_code="capacity"),
        R.RequestRecord(2.0, 2.5, "m", "batch", "error", error_code="peer_dead"),
        R.RequestRecord(2.0, 2.0, "m", "batch", "rejected"),
    ]
    rep = R.Report.from_records(recs, CLASSES, duration_s=4.0)
    assert (rep.requests, rep.finished, rep.rejected, rep.errors) == (11, 7, 3, 1)
    assert rep.slo["interactive"] == R.Attainment(6, 2)
    assert rep.slo["batch"] == R.Attainment(4, 1)
    assert rep.slo["custom"] == R.Attainment(1, 1)
    assert rep.slo_overall == R.Attainment(11, 4)
    assert rep.goodput_rps == pytest.approx(4 / 4.0)
    assert rep.throughput_rps == pytest.approx(7 / 4.0)
    assert rep.rejected_by_code == {"capacity": 2, "unknown": 1}
    assert rep.errors_by_code == {"peer_dead": 1}
    assert rep.send_lag_s.max == pytest.approx(0.5)
    assert rep.switches == 0 and rep.switch_unknown == 11


def test_default_duration_spans_first_plan_to_last_end():
    recs = [_finished(0.5, [0.1], planned=2.0, lag=0.5), _finished(0.2, [0.1], planned=1.0)]
    rep = R.Report.from_records(recs, CLASSES)
    assert rep.duration_s == pytest.approx((2.5 + 0.6) - 1.0)


def test_json_round_trip_and_empty_summaries():
    rep = R.Report.from_records(
        [R.RequestRecord(0.0, 0.0, "m", "batch", "rejected", error_code="bad_model")], CLASSES)
    d = json.loads(rep.to_json())
    assert d["ttft_s"] == {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None,
                           "max": None}
    assert d["slo"]["batch"] == {"requests": 1, "met": 0, "attainment": 0.0}
    assert d["rejected_by_code"] == {"bad_model": 1}
    assert d["goodput_rps"] is None  # zero-length run: no rate
    empty = R.Report.from_records([], CLASSES)
    assert json.loads(empty.to_json())["slo_overall"]["attainment"] is None


def test_table_is_aligned_and_in_ms(synthetic):
    records, expected = synthetic
    text = R.Report.from_records(records, CLASSES).table()
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("latency (ms)"))
    block = lines[start:start + 7]
    assert len({len(ln) for ln in block}) == 1  # right-aligned columns: equal widths
    ttft_row = next(ln for ln in block if ln.startswith("TTFT")).split()
    assert ttft_row[3] == f"{np.percentile(expected['ttft'], 50) * 1000:.1f}"
    assert any(ln.startswith("overall") and ln.endswith("%") for ln in lines)


def test_bad_records_raise():
    with pytest.raises(R.ReportError):
        R.RequestRecord(0.0, 0.0, "m", "interactive", "lost")
    with pytest.raises(R.ReportError):
        R.RequestRecord(0.0, 0.0, "m", "interactive", "finished", ttft_s=-1.0)
    with pytest.raises(R.ReportError):
        R.Report.from_records([_finished(0.1, [], cls="nope")], CLASSES)
