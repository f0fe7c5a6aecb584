"""Trace readers reproduce the sample files' counts and totals; bad files name line and column.

Expected figures are computed here by other means (line counting, numpy.loadtxt, regular
expressions, numpy.datetime64) and checked against the facts SOURCES.md states.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from c2cq.loadgen import arrivals as A
from c2cq.loadgen import traces as T

Z = 5.0  # standard errors allowed in statistical checks


# --- Azure ----------------------------------------------------------------------------------


def test_azure_code_counts_and_totals(traces_dir):
    path = traces_dir / "azure_llm_2023_code.csv"
    rows = list(T.read_azure(path))
    text = path.read_text()
    lines = [ln for ln in text.split("\n") if ln.strip()]
    # SOURCES.md says 8,818 requests. That is the file's newline count minus the header: the
    # file has no final newline, so it holds one more data row (8,819), which is what counts.
    assert text.count("\n") - 1 == 8818
    assert len(lines) - 1 == 8819
    assert len(rows) == 8819
    ctx, gen = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(1, 2), dtype=np.int64).T
    assert sum(r.prompt_tokens for r in rows) == int(ctx.sum())
    assert sum(r.output_tokens for r in rows) == int(gen.sum())
    first = np.datetime64(lines[1].split(",")[0].replace(" ", "T"), "ns")
    last = np.datetime64(lines[-1].split(",")[0].replace(" ", "T"), "ns")
    assert rows[0].arrival_s == 0.0
    assert rows[-1].arrival_s == pytest.approx((last - first) / np.timedelta64(1, "s"), abs=1e-7)
    # SOURCES.md: 18:17:03.98 to 19:14:19.93, about 57 min.
    assert rows[-1].arrival_s == pytest.approx(57 * 60 + 15.95, abs=0.01)
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(rows, rows[1:]))


def test_azure_seven_digit_fraction_is_exact(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 23:59:59.9999999,1,2\n"
        "2023-11-17 00:00:00.0000001,3,4\n"
        "2023-11-17 00:00:01,5,6\n"
    )
    rows = list(T.read_azure(p))
    assert [r.arrival_s for r in rows] == [0.0, 2e-7, 1.0000001]


def test_azure_zoned_timestamps(tmp_path):
    # The 2024 week-long files add a zone; one hour east of UTC is one hour earlier.
    p = tmp_path / "z.csv"
    p.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.5+00:00,1,2\n"
        "2024-05-10 01:00:01+01:00,3,4\n"
        "2024-05-10T00:00:02Z,5,6\n"
    )
    assert [r.arrival_s for r in T.read_azure(p)] == [0.0, 0.5, 1.5]


# --- Mooncake -------------------------------------------------------------------------------


def test_mooncake_counts_and_totals(traces_dir):
    path = traces_dir / "mooncake_conversation_first30min.jsonl"
    rows = list(T.read_mooncake(path))
    text = path.read_text()
    assert len(rows) == text.count("\n") == 5719  # SOURCES.md: the first 5,719 lines
    inputs = [int(x) for x in re.findall(r'"input_length":\s*(\d+)', text)]
    outputs = [int(x) for x in re.findall(r'"output_length":\s*(\d+)', text)]
    stamps = [int(x) for x in re.findall(r'"timestamp":\s*(\d+)', text)]
    assert sum(r.prompt_tokens for r in rows) == sum(inputs)
    assert sum(r.output_tokens for r in rows) == sum(outputs)
    assert rows[-1].arrival_s == max(stamps) / 1000.0 < 1800.0  # every timestamp < 1,800,000 ms
    assert all(r.hash_ids[0] == 0 for r in rows)  # SOURCES.md: every request starts at block 0
    # One hash id per 512-token block of the prompt.
    assert all(len(r.hash_ids) == math.ceil(r.prompt_tokens / 512) for r in rows)


# --- ServeGen -------------------------------------------------------------------------------

SERVEGEN = {  # SOURCES.md: clients and aggregate mean rps on day 0
    "servegen_language_m-mid_day0.csv": (109, 1336),
    "servegen_language_m-small_day0.csv": (43, 985),
    "servegen_multimodal_mm-image_day0.csv": (35, 9.5),
}


@pytest.mark.parametrize("name", sorted(SERVEGEN))
def test_servegen_windows_counts_and_rates(traces_dir, name):
    clients, mean_rps = SERVEGEN[name]
    path = traces_dir / name
    windows = list(T.read_servegen_windows(path))
    assert len(windows) == clients * 144  # the first 144 rows of each client
    assert len({w.client_id for w in windows}) == clients
    cols = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2), dtype=np.float64)
    assert len(cols) == len(windows)
    assert sum(w.rate_rps for w in windows) == pytest.approx(cols[:, 2].sum(), rel=1e-12)
    # Aggregate rate over the day: the sum over windows / 144; SOURCES rounds to 3 digits.
    assert sum(w.rate_rps for w in windows) / 144 == pytest.approx(mean_rps, rel=0.006)
    assert {w.start_s for w in windows} == {600.0 * i for i in range(144)}


def test_servegen_arrivals_follow_each_window(traces_dir):
    path = traces_dir / "servegen_multimodal_mm-image_day0.csv"
    windows = [w for w in T.read_servegen_windows(path) if w.rate_rps > 0]
    arrivals = list(T.read_servegen(path, seed=3))
    assert arrivals == list(T.read_servegen(path, seed=3))  # seeded: identical
    assert {r.model for r in arrivals} == {f"client-{w.client_id}" for w in windows}
    per_window: dict[tuple[str, float], int] = {}
    for r in arrivals:
        key = (r.model, r.arrival_s // 600.0 * 600.0)
        per_window[key] = per_window.get(key, 0) + 1
    for w in windows:
        n = per_window.get((f"client-{w.client_id}", w.start_s), 0)
        expected = w.rate_rps * 600.0
        assert math.floor(expected) <= n <= math.ceil(expected)  # stochastic rounding only


def test_servegen_gaps_have_the_fitted_cv(traces_dir, stats):
    # The busiest Gamma windows of m-small: the sample CV of the drawn gaps must match the
    # fitted law's CV (1/sqrt(shape)) within 5 standard errors of a sample CV.
    windows = sorted(
        (w for w in T.read_servegen_windows(traces_dir / "servegen_language_m-small_day0.csv")
         if w.pattern == "Gamma" and w.rate_rps * 600 > 20_000),
        key=lambda w: -w.rate_rps,
    )[:5]
    assert windows
    for w in windows:
        t = np.array([r.arrival_s for r in T.servegen_arrivals([w], seed=1)])
        gaps = np.diff(t)
        cv = 1 / math.sqrt(w.shape)
        assert cv == pytest.approx(w.cv, rel=1e-6)  # the file's cv column agrees
        se = stats.cv_se(stats.gamma(w.shape, w.scale), len(gaps))
        assert abs(gaps.std() / gaps.mean() - cv) <= Z * se


# --- BurstGPT (not shipped: synthetic files in its schema) ----------------------------------

BURST = (
    "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    "5,ChatGPT,472,18,490,Conversation log\n"
    "45,GPT-4,1087,0,1087,API log\n"
    "118.5,ChatGPT,417,276,693,Conversation log\n"
)


def test_burstgpt_reads_by_name_and_flags_failures(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text(BURST)
    rows = list(T.read_burstgpt(p))
    assert [r.arrival_s for r in rows] == [5.0, 45.0, 118.5]
    assert [r.model for r in rows] == ["ChatGPT", "GPT-4", "ChatGPT"]
    assert [r.failed for r in rows] == [False, True, False]
    assert [r.tag for r in rows] == ["Conversation log", "API log", "Conversation log"]
    assert [(r.prompt_tokens, r.output_tokens) for r in rows] == [(472, 18), (1087, 0), (417, 276)]


def test_burstgpt_later_schema_and_column_order(tmp_path):
    p = tmp_path / "b2.csv"
    p.write_text(
        "Session ID,Model,Timestamp,Elapsed time,Log Type,Total tokens,Response tokens,"
        "Request tokens\n"
        "s1,GPT-4,7,1.5,Conversation log,30,10,20\n"
    )
    (r,) = list(T.read_burstgpt(p))
    assert (r.arrival_s, r.model, r.prompt_tokens, r.output_tokens) == (7.0, "GPT-4", 20, 10)


# --- windowing ------------------------------------------------------------------------------


def test_window_selects_and_rescales_time():
    reqs = [T.TraceRequest(float(t), 1, 1) for t in range(10)]
    out = list(T.window(reqs, start_s=2.0, duration_s=5.0, speed=2.0))
    assert [r.arrival_s for r in out] == [0.0, 0.5, 1.0, 1.5, 2.0]  # t = 2..6, (t − 2) / 2
    assert [r.arrival_s for r in T.window(reqs, start_s=8.0)] == [0.0, 1.0]


def test_window_rejects_bad_speed():
    with pytest.raises(Exception, match="speed"):
        list(T.window([], speed=0.0))


# --- bad files ------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("reader", "text", "line", "column"),
    [
        (T.read_azure, "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9,1\n", 1, "GeneratedTokens"),
        (T.read_azure, "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                       "2023-11-16 18:17:03.9,1,2\n2023-11-16 18:17:04.0,x,2\n",
         3, "ContextTokens"),
        (T.read_azure, "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                       "2023-11-16 18:17:03.9,1,2\nyesterday,1,2\n", 3, "TIMESTAMP"),
        (T.read_azure, "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                       "2023-11-16 18:17:03.9,1,-2\n", 2, "GeneratedTokens"),
        (T.read_azure, "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                       "2023-11-16 18:17:03.9,1\n", 2, None),
        (T.read_azure, "", 1, None),
        (T.read_burstgpt, BURST.replace("118.5", "soon"), 4, "Timestamp"),
        (T.read_burstgpt, BURST.replace("1087,0", "1087,1.5"), 3, "Response tokens"),
        (T.read_mooncake, '{"timestamp": 0, "input_length": 5, "output_length": 1, '
                          '"hash_ids": [0]}\n{"timestamp": 1,\n', 2, None),
        (T.read_mooncake, '{"timestamp": 0, "input_length": 5, "hash_ids": [0]}\n',
         1, "output_length"),
        (T.read_mooncake, '\n\n{"timestamp": 0, "input_length": 5, "output_length": 1, '
                          '"hash_ids": [0, -1]}\n', 3, "hash_ids"),
        (T.read_servegen_windows, "client_id,timestamp_s,rate_rps,cv,pattern,pattern_arg1,"
                                  "pattern_arg2\n0,0,1.5,1,Pareto,1,1\n", 2, "pattern"),
        (T.read_servegen_windows, "client_id,timestamp_s,rate_rps,cv,pattern,pattern_arg1,"
                                  "pattern_arg2\n0,0,nan,1,Gamma,1,1\n", 2, "rate_rps"),
    ],
)
def test_bad_file_names_file_line_and_column(tmp_path, reader, text, line, column):
    p = _write(tmp_path, "bad.txt", text)
    with pytest.raises(T.TraceError) as info:
        list(reader(p))
    e = info.value
    assert (e.path, e.line, e.column) == (str(p), line, column)
    assert f"{p}:{line}" in str(e)
    if column:
        assert repr(column) in str(e)


def test_missing_file_is_a_trace_error(tmp_path):
    with pytest.raises(T.TraceError, match="cannot open"):
        list(T.read_mooncake(tmp_path / "nope.jsonl"))


def test_readers_stream(traces_dir):
    it = T.read_azure(traces_dir / "azure_llm_2023_code.csv")
    first = next(it)  # a generator: the first row comes without reading the rest
    assert first.arrival_s == 0.0 and first.prompt_tokens == 4808
    it.close()


def test_window_arrivals_pattern_names_are_case_insensitive():
    rng = np.random.default_rng(0)
    a = A.window_arrivals(rng, rate_rps=1.0, window_s=10.0, pattern="weibull", shape=1, scale=1)
    assert len(a) == 10
