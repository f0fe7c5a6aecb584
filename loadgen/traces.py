"""Streaming readers of public LLM request traces, by column name, in each source's own units.

Every reader yields :class:`TraceRequest` in file order; times are seconds on the trace's own
clock (Azure: since its first row; BurstGPT: its ``Timestamp``; Mooncake: ``timestamp`` ms / 1000;
ServeGen: drawn inside each 600-s window). A malformed file raises :class:`TraceError` naming the
file, line and column. Schemas: /work/shared/traces/SOURCES.md.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from c2cq.errors import C2CQError, ConfigError
from c2cq.loadgen.arrivals import window_arrivals

SERVEGEN_WINDOW_S = 600.0
_NS_PER_S = 10**9


class TraceError(C2CQError):
    """A trace file is missing, unreadable or malformed at a given line and column."""

    code = "bad_trace"

    def __init__(self, path: str | Path, line: int, column: str | None, message: str) -> None:
        where = f"{path}:{line}" + (f" column {column!r}" if column else "")
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.column, self.message = str(path), line, column, message


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace. Lengths are None where the source does not give them."""

    arrival_s: float
    prompt_tokens: int | None
    output_tokens: int | None
    model: str | None = None
    hash_ids: tuple[int, ...] = ()
    failed: bool = False
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class ServeGenWindow:
    """One client's fitted arrival process over one 600-s window."""

    client_id: int
    start_s: float
    rate_rps: float
    cv: float
    pattern: str
    shape: float
    scale: float


# --- CSV plumbing ---------------------------------------------------------------------------


def _open(path: Path):
    try:
        return path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise TraceError(path, 0, None, f"cannot open: {e.strerror or e}") from e


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row, after checking the header names the columns."""
    with _open(path) as f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames
        except (csv.Error, UnicodeDecodeError) as e:
            raise TraceError(path, 1, None, f"unreadable header: {e}") from e
        if not header:
            raise TraceError(path, 1, None, "empty file: no header")
        names = [h.strip() for h in header]
        for col in required:
            if col not in names:
                raise TraceError(path, 1, col, f"missing column (header: {','.join(names)})")
        reader.fieldnames = names
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as e:
                raise TraceError(path, reader.line_num, None, f"unreadable row: {e}") from e
            if None in row or any(row[c] is None for c in required):
                raise TraceError(path, reader.line_num, None, "wrong number of fields")
            yield reader.line_num, row


def _int(path: Path, line: int, col: str, text: str, *, minimum: int = 0) -> int:
    try:
        v = int(text.strip())
    except ValueError:
        try:
            f = float(text.strip())
        except ValueError:
            raise TraceError(path, line, col, f"not an integer: {text!r}") from None
        if not f.is_integer():
            raise TraceError(path, line, col, f"not an integer: {text!r}") from None
        v = int(f)
    if v < minimum:
        raise TraceError(path, line, col, f"must be >= {minimum}, got {v}")
    return v


def _float(path: Path, line: int, col: str, text: str, *, minimum: float = 0.0) -> float:
    try:
        v = float(text.strip())
    except ValueError:
        raise TraceError(path, line, col, f"not a number: {text!r}") from None
    if not math.isfinite(v) or v < minimum:
        raise TraceError(path, line, col, f"must be finite and >= {minimum}, got {text!r}")
    return v


# --- Azure LLM inference 2023 ---------------------------------------------------------------


_AZURE_TIME = re.compile(
    r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)?"
)


def _azure_ns(path: Path, line: int, text: str) -> int:
    """``YYYY-MM-DD HH:MM:SS[.fffffff][zone]`` → integer ns since the epoch (no float error).

    The 2023 files have 7 fractional digits and no zone (read as UTC; only differences count).
    """
    m = _AZURE_TIME.fullmatch(text.strip())
    if m is None:
        raise TraceError(path, line, "TIMESTAMP", f"not a timestamp: {text!r}")
    main, frac, zone = m.groups()
    try:
        dt = datetime.fromisoformat(main + (zone or "+00:00").replace("Z", "+00:00"))
    except ValueError:
        raise TraceError(path, line, "TIMESTAMP", f"not a timestamp: {text!r}") from None
    return int(dt.timestamp()) * _NS_PER_S + int((frac or "").ljust(9, "0"))


def read_azure(path: str | Path) -> Iterator[TraceRequest]:
    """Azure LLM inference trace (TIMESTAMP, ContextTokens, GeneratedTokens); t − t_first."""
    path = Path(path)
    first: int | None = None
    for line, row in _csv_rows(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens")):
        ns = _azure_ns(path, line, row["TIMESTAMP"])
        first = ns if first is None else first
        if ns < first:
            raise TraceError(path, line, "TIMESTAMP", "earlier than the first row (unsorted)")
        yield TraceRequest(
            arrival_s=(ns - first) / _NS_PER_S,
            prompt_tokens=_int(path, line, "ContextTokens", row["ContextTokens"]),
            output_tokens=_int(path, line, "GeneratedTokens", row["GeneratedTokens"]),
        )


# --- BurstGPT -------------------------------------------------------------------------------


def read_burstgpt(path: str | Path) -> Iterator[TraceRequest]:
    """BurstGPT CSV; rows with zero response tokens are failures, kept with ``failed=True``."""
    path = Path(path)
    cols = ("Timestamp", "Model", "Request tokens", "Response tokens", "Log Type")
    for line, row in _csv_rows(path, cols):
        out = _int(path, line, "Response tokens", row["Response tokens"])
        model = row["Model"].strip()
        if not model:
            raise TraceError(path, line, "Model", "empty model name")
        yield TraceRequest(
            arrival_s=_float(path, line, "Timestamp", row["Timestamp"]),
            prompt_tokens=_int(path, line, "Request tokens", row["Request tokens"]),
            output_tokens=out,
            model=model,
            failed=out == 0,
            tag=row["Log Type"].strip() or None,
        )


# --- Mooncake -------------------------------------------------------------------------------


def read_mooncake(path: str | Path) -> Iterator[TraceRequest]:
    """Mooncake JSONL (timestamp ms, input_length, output_length, hash_ids per 512 tokens)."""
    path = Path(path)
    with _open(path) as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise TraceError(path, line, None, f"invalid JSON: {e.msg}") from e
            if not isinstance(obj, dict):
                raise TraceError(path, line, None, "not a JSON object")
            for key in ("timestamp", "input_length", "output_length", "hash_ids"):
                if key not in obj:
                    raise TraceError(path, line, key, "missing field")
            ts = obj["timestamp"]
            if isinstance(ts, bool) or not isinstance(ts, int | float) or ts < 0:
                raise TraceError(path, line, "timestamp", f"not a time in ms: {ts!r}")
            lengths = []
            for key in ("input_length", "output_length"):
                v = obj[key]
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise TraceError(path, line, key, f"not a token count: {v!r}")
                lengths.append(v)
            ids = obj["hash_ids"]
            if not isinstance(ids, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in ids
            ):
                raise TraceError(path, line, "hash_ids", "not a list of non-negative integers")
            yield TraceRequest(ts / 1000.0, lengths[0], lengths[1], hash_ids=tuple(ids))


# --- ServeGen -------------------------------------------------------------------------------


def read_servegen_windows(path: str | Path) -> Iterator[ServeGenWindow]:
    """ServeGen per-client windows (client_id, timestamp_s, rate_rps, cv, pattern, args)."""
    path = Path(path)
    cols = ("client_id", "timestamp_s", "rate_rps", "cv", "pattern", "pattern_arg1", "pattern_arg2")
    for line, row in _csv_rows(path, cols):
        rate = _float(path, line, "rate_rps", row["rate_rps"])
        pattern = row["pattern"].strip()
        shape = _float(path, line, "pattern_arg1", row["pattern_arg1"])
        scale = _float(path, line, "pattern_arg2", row["pattern_arg2"])
        if rate > 0:
            if pattern.lower() not in ("gamma", "weibull"):
                raise TraceError(path, line, "pattern", f"expected Gamma or Weibull: {pattern!r}")
            if shape <= 0 or scale <= 0:
                col = "pattern_arg1" if shape <= 0 else "pattern_arg2"
                raise TraceError(path, line, col, "shape and scale must be > 0 when active")
        yield ServeGenWindow(
            client_id=_int(path, line, "client_id", row["client_id"]),
            start_s=_float(path, line, "timestamp_s", row["timestamp_s"]),
            rate_rps=rate,
            cv=_float(path, line, "cv", row["cv"]),
            pattern=pattern,
            shape=shape,
            scale=scale,
        )


def servegen_arrivals(
    windows: Iterable[ServeGenWindow],
    *,
    seed: int = 0,
    model_prefix: str = "client-",
    window_s: float = SERVEGEN_WINDOW_S,
) -> Iterator[TraceRequest]:
    """Arrivals of every window; each client becomes model ``f"{model_prefix}{client_id}"``.

    Each window draws from its own generator seeded by (seed, client, window start), so a
    window's arrivals do not depend on which other windows were read. Lengths are None.
    """
    for w in windows:
        if w.rate_rps <= 0:
            continue
        rng = np.random.default_rng([seed, w.client_id, int(round(w.start_s * 1000))])
        times = window_arrivals(
            rng, rate_rps=w.rate_rps, window_s=window_s,
            pattern=w.pattern, shape=w.shape, scale=w.scale,
        )
        # Keep every arrival inside its window after rounding start + t.
        last = np.nextafter(w.start_s + window_s, -math.inf)
        model = f"{model_prefix}{w.client_id}"
        for t in np.minimum(w.start_s + times, last):
            yield TraceRequest(float(t), None, None, model=model)


def read_servegen(
    path: str | Path,
    *,
    seed: int = 0,
    model_prefix: str = "client-",
    window_s: float = SERVEGEN_WINDOW_S,
) -> Iterator[TraceRequest]:
    """:func:`servegen_arrivals` over :func:`read_servegen_windows`."""
    return servegen_arrivals(
        read_servegen_windows(path), seed=seed, model_prefix=model_prefix, window_s=window_s
    )


# --- time scaling and windowing -------------------------------------------------------------


def window(
    requests: Iterable[TraceRequest],
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    speed: float = 1.0,
) -> Iterator[TraceRequest]:
    """Requests with start_s <= t < start_s + duration_s, re-timed to (t − start_s) / speed.

    ``duration_s`` is in trace time; ``speed`` > 1 replays faster (higher rate).
    """
    if not (math.isfinite(speed) and speed > 0):
        raise ConfigError(f"speed must be finite and > 0, got {speed}")
    if start_s < 0 or (duration_s is not None and duration_s < 0):
        raise ConfigError("start_s and duration_s must be >= 0")
    end = math.inf if duration_s is None else start_s + duration_s
    for r in requests:
        if start_s <= r.arrival_s < end:
            yield _retimed(r, (r.arrival_s - start_s) / speed)


def _retimed(r: TraceRequest, t: float) -> TraceRequest:
    return TraceRequest(t, r.prompt_tokens, r.output_tokens, r.model, r.hash_ids, r.failed, r.tag)


READERS = {
    "azure": read_azure,
    "burstgpt": read_burstgpt,
    "mooncake": read_mooncake,
    "servegen": read_servegen,
}
