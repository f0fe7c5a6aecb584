"""PNG plots of a load run: TTFT and TPOT CDFs, arrivals by outcome and SLO attainment over
time, cold-start (model switch) latency against warm TTFT. Uses matplotlib's Agg canvas
directly (no pyplot global state)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from c2cq.errors import ConfigError
from c2cq.loadgen.report import RequestRecord, Status, meets_slo, tpot_s
from c2cq.loadgen.workload import DEFAULT_SLO_CLASSES, SloClass

_DPI = 110


def _figure(nrows: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(7.0, 3.2 * nrows + 0.8), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, 1, i + 1) for i in range(nrows)]
    return fig, axes


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)


def _log_if_wide(ax, values_ms: Iterable[float]) -> None:
    """A log x axis when positive values span more than two decades (latency tails)."""
    v = np.asarray(list(values_ms), dtype=np.float64)
    if v.size and v.min() > 0 and v.max() / v.min() > 100.0:
        ax.set_xscale("log")


def _cdf(ax, series: dict[str, list[float]], targets_ms: dict[str, float], what: str) -> None:
    drawn = False
    _log_if_wide(ax, [x * 1000.0 for x in series.get("all", [])])
    for label, values in series.items():
        if not values:
            continue
        x = np.sort(np.asarray(values, dtype=np.float64)) * 1000.0
        ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label=f"{label} (n={x.size})")
        drawn = True
    for name, t in targets_ms.items():
        ax.axvline(t, linestyle="--", linewidth=0.8, color="grey")
        ax.annotate(f" {name} target", (t, 0.35), rotation=90, fontsize=7, color="grey")
    if targets_ms:  # room right of the furthest target line for its label
        right = max(targets_ms.values()) * (1.6 if ax.get_xscale() == "log" else 1.06)
        ax.set_xlim(right=max(ax.get_xlim()[1], right))
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
    ax.set_title("Time to first token of finished requests (CDF)")
    ax.set_xlabel("TTFT (ms)")
    fig.savefig(path)
    return path


def plot_tpot_cdf(
    records: Sequence[RequestRecord], classes: dict[str, SloClass], path: Path
) -> Path:
    fig, (ax,) = _figure()
    series = _by_class(records, tpot_s)
    _cdf(ax, series, {c.name: c.tpot_ms for c in classes.values()}, "requests with 2+ tokens")
    ax.set_title("Time per output token of finished requests (CDF)")
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
        t0 = min(0.0, float(t.min()))  # bins from the run's start
        nbins = max(1, math.ceil((float(t.max()) - t0) / window_s + 1e-9))
        idx = np.minimum(((t - t0) // window_s).astype(np.int64), nbins - 1)
        centers = t0 + (np.arange(nbins) + 0.5) * window_s
        bottom = np.zeros(nbins)
        for status, color in ((Status.FINISHED, "tab:blue"), (Status.REJECTED, "tab:orange"),
                              (Status.ERROR, "tab:red")):
            mask = np.asarray([r.status == status for r in records])
            if mask.any():
                rate = np.bincount(idx[mask], minlength=nbins) / window_s
                ax_rate.bar(centers, rate, width=window_s * 0.9, bottom=bottom, color=color,
                            label=f"{status.value} ({int(mask.sum())})")
                bottom += rate
        ax_rate.legend(fontsize=8, loc="upper left")
        met = np.asarray([meets_slo(r, classes) for r in records], dtype=np.float64)
        names = np.asarray([r.slo_class for r in records])
        for label in ["all", *sorted(set(names.tolist()))]:
            mask = np.ones(len(records), bool) if label == "all" else names == label
            n = np.bincount(idx[mask], minlength=nbins)
            k = np.bincount(idx[mask], weights=met[mask], minlength=nbins)
            with np.errstate(invalid="ignore", divide="ignore"):
                pct = np.where(n > 0, 100.0 * k / n, np.nan)
            ax_slo.plot(centers, pct, marker=".", label=label)
        ax_slo.legend(fontsize=8, loc="best")
    else:
        _empty(ax_rate, "requests")
        _empty(ax_slo, "requests")
    ax_rate.set_title(f"Arrival rate by outcome ({window_s:g}-s windows of planned send time)")
    ax_rate.set_ylabel("arrivals (req/s)")
    ax_slo.set_title("SLO attainment by planned send time")
    ax_slo.set_ylabel("requests meeting SLO (%)")
    ax_slo.set_ylim(-2, 102)
    for ax in (ax_rate, ax_slo):
        ax.set_xlabel("time since start (s)")
        ax.grid(alpha=0.3)
    ax_slo.set_xlim(ax_rate.get_xlim())
    fig.savefig(path)
    return path


def plot_switch_latency(records: Sequence[RequestRecord], path: Path) -> Path:
    """CDF of the switch (cold-start) latency of requests that needed a model switch, against
    the TTFT of those that found their model in place (the warm reference)."""
    fig, (ax,) = _figure()
    cold = [r.switch_latency_s for r in records
            if r.finished and r.switched and r.switch_latency_s is not None]
    warm = [r.ttft_s for r in records if r.finished and r.switched is False and r.ttft_s is not None]
    if cold or warm:
        _log_if_wide(ax, [x * 1000.0 for x in cold + warm])
        for label, values in (("model switch: switch latency", cold), ("no switch: TTFT", warm)):
            if values:
                x = np.sort(np.asarray(values, dtype=np.float64)) * 1000.0
                ax.step(x, np.arange(1, x.size + 1) / x.size, where="post",
                        label=f"{label} (n={x.size})")
        ax.legend(fontsize=8, loc="lower right")
    else:
        _empty(ax, "finished requests with switch information")
    ax.set_ylim(0, 1.0)
    ax.set_title(f"Cold starts: switch latency (n={len(cold)}) vs TTFT without a switch (CDF)")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests")
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
