"""PNG plots of a load run: TTFT and TPOT CDFs, SLO attainment and arrival rate over time,
switch latency histogram. Uses matplotlib's Agg canvas directly (no pyplot global state)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from c2cq.errors import ConfigError
from c2cq.loadgen.report import RequestRecord, meets_slo, tpot_s
from c2cq.loadgen.workload import DEFAULT_SLO_CLASSES, SloClass

_DPI = 110


def _figure(nrows: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(7.0, 3.2 * nrows + 0.8), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, 1, i + 1) for i in range(nrows)]
    return fig, axes


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)


def _cdf(ax, series: dict[str, list[float]], targets_ms: dict[str, float], what: str) -> None:
    drawn = False
    for label, values in series.items():
        if not values:
            continue
        x = np.sort(np.asarray(values, dtype=np.float64)) * 1000.0
        ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label=f"{label} (n={x.size})")
        drawn = True
    for name, t in targets_ms.items():
        ax.axvline(t, linestyle="--", linewidth=0.8, color="grey")
        ax.annotate(f" {name} target", (t, 0.35), rotation=90, fontsize=7, color="grey")
    if drawn:
        ax.legend(fontsize=8, loc="best")
    else:
        _empty(ax, what)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3)


def _by_class(records: Iterable[RequestRecord], value) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"all": []}
    for r in records:
        v = value(r)
        if v is not None:
            out["all"].append(v)
            out.setdefault(r.slo_class, []).append(v)
    return out


def plot_ttft_cdf(
    records: Sequence[RequestRecord], classes: dict[str, SloClass], path: Path
) -> Path:
    fig, (ax,) = _figure()
    series = _by_class((r for r in records if r.finished), lambda r: r.ttft_s)
    _cdf(ax, series, {c.name: c.ttft_ms for c in classes.values()}, "finished requests")
    ax.set_title("Time to first token (CDF)")
    ax.set_xlabel("TTFT (ms)")
    fig.savefig(path)
    return path


def plot_tpot_cdf(
    records: Sequence[RequestRecord], classes: dict[str, SloClass], path: Path
) -> Path:
    fig, (ax,) = _figure()
    series = _by_class(records, tpot_s)
    _cdf(ax, series, {c.name: c.tpot_ms for c in classes.values()}, "requests with 2+ tokens")
    ax.set_title("Time per output token (CDF)")
    ax.set_xlabel("TPOT (ms)")
    fig.savefig(path)
    return path


def plot_slo_over_time(
    records: Sequence[RequestRecord], classes: dict[str, SloClass], path: Path, window_s: float
) -> Path:
    """Arrival rate and SLO attainment per window of planned send time."""
    fig, (ax_rate, ax_slo) = _figure(2)
    if records:
        t = np.asarray([r.planned_offset_s for r in records], dtype=np.float64)
        t0 = float(t.min())
        nbins = max(1, math.ceil((float(t.max()) - t0) / window_s + 1e-9))
        idx = np.minimum(((t - t0) // window_s).astype(np.int64), nbins - 1)
        centers = t0 + (np.arange(nbins) + 0.5) * window_s
        ax_rate.bar(centers, np.bincount(idx, minlength=nbins) / window_s, width=window_s * 0.9)
        met = np.asarray([meets_slo(r, classes) for r in records], dtype=np.float64)
        names = np.asarray([r.slo_class for r in records])
        for label in ["all", *sorted(set(names.tolist()))]:
            mask = np.ones(len(records), bool) if label == "all" else names == label
            n = np.bincount(idx[mask], minlength=nbins)
            k = np.bincount(idx[mask], weights=met[mask], minlength=nbins)
            with np.errstate(invalid="ignore", divide="ignore"):
                pct = np.where(n > 0, 100.0 * k / n, np.nan)
            ax_slo.plot(centers, pct, marker=".", label=label)
        ax_slo.legend(fontsize=8, loc="lower left")
    else:
        _empty(ax_rate, "requests")
        _empty(ax_slo, "requests")
    ax_rate.set_title(f"Arrival rate ({window_s:g}-s windows)")
    ax_rate.set_ylabel("arrivals (req/s)")
    ax_slo.set_title("SLO attainment by planned send time")
    ax_slo.set_ylabel("requests meeting SLO (%)")
    ax_slo.set_ylim(-2, 102)
    for ax in (ax_rate, ax_slo):
        ax.set_xlabel("time since start (s)")
        ax.grid(alpha=0.3)
    fig.savefig(path)
    return path


def plot_switch_latency(records: Sequence[RequestRecord], path: Path) -> Path:
    fig, (ax,) = _figure()
    lat = [r.switch_latency_s * 1000.0 for r in records
           if r.switched and r.switch_latency_s is not None]
    if lat:
        ax.hist(lat, bins=min(50, max(5, int(math.sqrt(len(lat))))))
    else:
        _empty(ax, "model switches")
    ax.set_title(f"Model switch (cold start) latency, n={len(lat)}")
    ax.set_xlabel("switch latency (ms)")
    ax.set_ylabel("switches (count)")
    ax.grid(alpha=0.3)
    fig.savefig(path)
    return path


def write_plots(
    records: Sequence[RequestRecord],
    out_dir: str | Path,
    *,
    slo_classes: Iterable[SloClass] = DEFAULT_SLO_CLASSES,
    window_s: float | None = None,
) -> dict[str, Path]:
    """Write every plot as PNG into ``out_dir``; window_s defaults to 1/60 of the span (>= 1 s)."""
    if window_s is not None and not (math.isfinite(window_s) and window_s > 0):
        raise ConfigError(f"window_s must be finite and > 0, got {window_s}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = {c.name: c for c in slo_classes}
    if window_s is None:
        span = max((r.planned_offset_s for r in records), default=0.0) - min(
            (r.planned_offset_s for r in records), default=0.0)
        window_s = max(1.0, span / 60.0)
    return {
        "ttft_cdf": plot_ttft_cdf(records, classes, out / "ttft_cdf.png"),
        "tpot_cdf": plot_tpot_cdf(records, classes, out / "tpot_cdf.png"),
        "slo_over_time": plot_slo_over_time(records, classes, out / "slo_over_time.png", window_s),
        "switch_latency": plot_switch_latency(records, out / "switch_latency.png"),
    }
