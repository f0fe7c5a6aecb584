"""What a load run measured: latency percentiles, SLO attainment, goodput, cold starts, lag.

Pure: a :class:`Report` is computed from a list of :class:`RequestRecord` (one per planned
request, whatever became of it). Times are seconds; the table shows milliseconds.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import numpy as np

from c2cq.errors import C2CQError
from c2cq.loadgen.workload import DEFAULT_SLO_CLASSES, SloClass

PERCENTILES = (50, 90, 99)


class ReportError(C2CQError):
    """A request record is inconsistent (unknown status, SLO class or negative time)."""

    code = "bad_record"


class Status(StrEnum):
    FINISHED = "finished"
    REJECTED = "rejected"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What happened to one planned request. Offsets are seconds from the run's start;
    ``token_times_s`` are each token's arrival in seconds after sending (the first is the
    TTFT). ``ttft_ms``/``tpot_ms`` override the SLO class's targets when given."""

    planned_offset_s: float
    sent_offset_s: float
    model: str
    slo_class: str
    status: Status | str
    error_code: str | None = None
    ttft_s: float | None = None
    token_times_s: tuple[float, ...] = ()
    n_tokens: int = 0
    e2e_s: float | None = None
    switched: bool | None = None
    switch_latency_s: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None

    def __post_init__(self) -> None:
        try:
            Status(self.status)
        except ValueError:
            raise ReportError(f"unknown status {self.status!r}") from None
        for name in ("ttft_s", "e2e_s", "switch_latency_s"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ReportError(f"{name} must be finite and >= 0, got {v}")
        if self.n_tokens < 0:
            raise ReportError(f"n_tokens must be >= 0, got {self.n_tokens}")

    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED

    @property
    def end_offset_s(self) -> float:
        """When the request ended (its last token for a finished one, else its send time)."""
        return self.sent_offset_s + ((self.e2e_s or 0.0) if self.finished else 0.0)


def tpot_s(r: RequestRecord) -> float | None:
    """Mean time per output token after the first: (e2e − ttft) / (n − 1); None if n < 2."""
    if not r.finished or r.n_tokens < 2 or r.ttft_s is None or r.e2e_s is None:
        return None
    return (r.e2e_s - r.ttft_s) / (r.n_tokens - 1)


def targets(r: RequestRecord, classes: Mapping[str, SloClass]) -> tuple[float, float]:
    """(ttft_ms, tpot_ms) of a record: its own, else its class's."""
    cls = classes.get(r.slo_class)
    if cls is None and (r.ttft_ms is None or r.tpot_ms is None):
        raise ReportError(f"record has unknown SLO class {r.slo_class!r} and no targets")
    ttft = r.ttft_ms if r.ttft_ms is not None else cls.ttft_ms
    tpot = r.tpot_ms if r.tpot_ms is not None else cls.tpot_ms
    return ttft, tpot


def meets_slo(r: RequestRecord, classes: Mapping[str, SloClass]) -> bool:
    """Finished, ttft <= target and tpot <= target (a single-token reply has no TPOT)."""
    ttft_ms, tpot_ms = targets(r, classes)
    if not r.finished or r.ttft_s is None or r.ttft_s > ttft_ms / 1000.0:
        return False
    tpot = tpot_s(r)
    return tpot is None or tpot <= tpot_ms / 1000.0


@dataclass(frozen=True)
class Summary:
    """Count, mean, percentiles (numpy's linear interpolation) and max; None when empty."""

    count: int
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        a = np.asarray(list(values), dtype=np.float64)
        if a.size == 0:
            return cls(0)
        p = np.percentile(a, PERCENTILES)
        return cls(int(a.size), float(a.mean()), *(float(x) for x in p), float(a.max()))


@dataclass(frozen=True)
class Attainment:
    requests: int
    met: int

    @property
    def ratio(self) -> float | None:
        return self.met / self.requests if self.requests else None


@dataclass(frozen=True)
class Report:
    """Every figure of one run. Latencies are in seconds."""

    requests: int
    finished: int
    rejected: int
    errors: int
    duration_s: float
    ttft_s: Summary
    tpot_s: Summary
    itl_s: Summary
    e2e_s: Summary
    send_lag_s: Summary
    slo: dict[str, Attainment]
    slo_overall: Attainment
    goodput_rps: float | None
    throughput_rps: float | None
    output_tokens_per_s: float | None
    switches: int
    switch_unknown: int
    switch_latency_s: Summary
    rejected_by_code: dict[str, int] = field(default_factory=dict)
    errors_by_code: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_records(
        cls,
        records: Sequence[RequestRecord],
        slo_classes: Iterable[SloClass] = DEFAULT_SLO_CLASSES,
        duration_s: float | None = None,
    ) -> Report:
        """Compute the report. ``duration_s`` defaults to first planned send → last end."""
        classes = {c.name: c for c in slo_classes}
        done = [r for r in records if r.finished]
        if duration_s is None:
            duration_s = (
                max(r.end_offset_s for r in records) - min(r.planned_offset_s for r in records)
                if records else 0.0
            )
        per_class: dict[str, list[int]] = {}
        for r in records:
            met = meets_slo(r, classes)
            tally = per_class.setdefault(r.slo_class, [0, 0])
            tally[0] += 1
            tally[1] += met
        met_total = sum(m for _, m in per_class.values())

        def rate(n: float) -> float | None:
            return n / duration_s if duration_s > 0 else None

        itl = [g for r in done for g in np.diff(np.asarray(r.token_times_s, dtype=np.float64))]
        switched = [r for r in records if r.switched]
        return cls(
            requests=len(records),
            finished=len(done),
            rejected=sum(r.status == Status.REJECTED for r in records),
            errors=sum(r.status == Status.ERROR for r in records),
            duration_s=float(duration_s),
            ttft_s=Summary.of(r.ttft_s for r in done if r.ttft_s is not None),
            tpot_s=Summary.of(t for r in done if (t := tpot_s(r)) is not None),
            itl_s=Summary.of(itl),
            e2e_s=Summary.of(r.e2e_s for r in done if r.e2e_s is not None),
            send_lag_s=Summary.of(r.sent_offset_s - r.planned_offset_s for r in records),
            slo={k: Attainment(n, m) for k, (n, m) in sorted(per_class.items())},
            slo_overall=Attainment(len(records), met_total),
            goodput_rps=rate(met_total),
            throughput_rps=rate(len(done)),
            output_tokens_per_s=rate(sum(r.n_tokens for r in done)),
            switches=len(switched),
            switch_unknown=sum(r.switched is None for r in records),
            switch_latency_s=Summary.of(
                r.switch_latency_s for r in switched if r.switch_latency_s is not None
            ),
            rejected_by_code=_by_code(records, Status.REJECTED),
            errors_by_code=_by_code(records, Status.ERROR),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["slo"] = {k: _attainment_dict(a) for k, a in self.slo.items()}
        d["slo_overall"] = _attainment_dict(self.slo_overall)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def table(self) -> str:
        """A plain-text, column-aligned summary for a terminal."""
        lat = [["latency (ms)", "count", "mean", "p50", "p90", "p99", "max"]]
        for name, s in (("TTFT", self.ttft_s), ("TPOT", self.tpot_s), ("ITL", self.itl_s),
                        ("E2E", self.e2e_s), ("send lag", self.send_lag_s),
                        ("switch", self.switch_latency_s)):
            lat.append([name, str(s.count)] + [_ms(getattr(s, k)) for k in
                                               ("mean", "p50", "p90", "p99", "max")])
        slo = [["SLO class", "requests", "met", "attainment"]]
        for name, a in [*self.slo.items(), ("overall", self.slo_overall)]:
            slo.append([name, str(a.requests), str(a.met), _pct(a.ratio)])
        lines = [
            f"requests {self.requests}  finished {self.finished}  rejected {self.rejected}  "
            f"errors {self.errors}  over {self.duration_s:.1f} s",
            f"goodput {_num(self.goodput_rps)} req/s  throughput {_num(self.throughput_rps)} "
            f"req/s  output {_num(self.output_tokens_per_s)} tok/s  switches {self.switches}"
            + (f" ({self.switch_unknown} unknown)" if self.switch_unknown else ""),
            "",
            *_align(lat),
            "",
            *_align(slo),
        ]
        for title, counts in (("rejected", self.rejected_by_code), ("errors", self.errors_by_code)):
            if counts:
                lines += ["", *_align([[f"{title} by code", "count"],
                                       *([k, str(v)] for k, v in sorted(counts.items()))])]
        return "\n".join(lines)


def _by_code(records: Iterable[RequestRecord], status: Status) -> dict[str, int]:
    return dict(sorted(Counter(r.error_code or "unknown" for r in records
                               if r.status == status).items()))


def _attainment_dict(a: Attainment) -> dict:
    return {"requests": a.requests, "met": a.met, "attainment": a.ratio}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _align(rows: list[list[str]]) -> list[str]:
    """First column left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        .rstrip()
        for r in rows
    ]
