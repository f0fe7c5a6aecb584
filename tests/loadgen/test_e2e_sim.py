"""Issue 6's must-show: `c2cq loadgen` replays the Azure code trace, sped up, against a running
`c2cq up --backend sim --slices 4` and writes the table, the JSON and the PNG plots; every
sent request is accounted for (sent == finished + rejected + errors)."""

from __future__ import annotations

import argparse
import asyncio
import json

from c2cq.client import AsyncClient
from c2cq.loadgen import cli as LC
from c2cq.loadgen import traces as T
from c2cq.loadgen.workload import Workload

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ("ttft_cdf.png", "tpot_cdf.png", "slo_over_time.png", "switch_latency.png")
START, DURATION, SPEED, CAP = 180.0, 30.0, 2.0, 32  # trace s 180-210 (about 200 requests) in 15 s


def _load(out):
    doc = json.loads((out / "report.json").read_text())
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    return doc, records


def _accepted_total(home) -> int:
    async def q():
        async with AsyncClient(home=str(home)) as c:
            return (await c.status()).requests_total

    return asyncio.run(q())


def test_azure_code_trace_against_sim_instance(sim_instance, traces_dir, tmp_path):
    trace = traces_dir / "azure_llm_2023_code.csv"
    out = tmp_path / "azure"
    p = sim_instance.cli("loadgen", "--trace", str(trace), "--trace-format", "azure", "--start", str(START),
                         "--duration", str(DURATION), "--speed", str(SPEED), "--max-tokens-cap", str(CAP),
                         "--seed", "5", "--out", str(out), "--no-progress", timeout=150)
    window = [r for r in T.read_azure(trace) if START <= r.arrival_s < START + DURATION]
    assert len(window) > 150

    doc, records = _load(out)
    run, c = doc["run"], doc["run"]["counts"]
    assert run["planned"] == c["sent"] == len(records) == doc["requests"] == len(window)
    assert c["sent"] == c["finished"] + c["rejected"] + c["errors"]
    assert (doc["finished"], doc["rejected"], doc["errors"]) == (c["finished"], c["rejected"], c["errors"])
    assert [sum(r["status"] == s for r in records) for s in ("finished", "rejected", "error")] == [
        c["finished"], c["rejected"], c["errors"]]
    assert not run["interrupted"] and run["catalog"] == [f"sim-{i:03d}" for i in range(6)]
    # The scheduler may turn requests away under load (admission against the SLO sent with
    # each one); nothing may fail once accepted.
    assert c["finished"] > 0 and c["errors"] == 0, (doc["errors_by_code"], run["error_examples"])
    assert set(doc["rejected_by_code"]) <= {"no_executor", "queue_full", "slo_unattainable"}, run["error_examples"]
    # The trace as asked: each planned offset is (t − start) / speed, in trace order; a finished
    # request got exactly its trace output length (capped) as tokens; lag is measured, >= 0.
    for rec, src in zip(records, window):
        assert abs(rec["planned_offset_s"] - (src.arrival_s - START) / SPEED) < 1e-9
        assert rec["sent_offset_s"] >= rec["planned_offset_s"]
        if rec["status"] == "finished":
            assert rec["n_tokens"] == min(max(src.output_tokens, 1), CAP) == len(rec["token_times_s"])
            assert 0 < rec["ttft_s"] <= rec["e2e_s"]
        else:
            assert rec["n_tokens"] == 0 and rec["ttft_s"] is None and rec["error_code"]
    assert doc["send_lag_s"]["count"] == len(window) and doc["ttft_s"]["count"] == c["finished"]
    assert doc["switch_latency_s"]["count"] == doc["switches"] > 0
    assert doc["switch_unknown"] == 0  # the server says of every finished request whether it switched
    assert set(doc["slo"]) == {"interactive", "batch"}
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    assert "SLO class" in p.stdout and f"requests {len(window)}" in p.stdout  # the terminal table

    # Rejections are counted by code against the real scheduler: the prompts of 8190 tokens
    # (+ 8 output) overflow the sim models' 8192-token context. No SLO is sent, so nothing
    # else is turned away.
    lengths = tmp_path / "lengths.csv"
    lengths.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                       "2023-11-16 18:00:00.0000000,100,8\n2023-11-16 18:00:01.0000000,8190,8\n")
    out2 = tmp_path / "mixed"
    argv = ["--rate", "20", "--num-requests", "60", "--lengths-trace", str(lengths),
            "--models", "sim-000,sim-004", "--no-send-slo"]
    sim_instance.cli("loadgen", *argv, "--out", str(out2), "--no-progress", timeout=120)
    doc2, records2 = _load(out2)
    c2 = doc2["run"]["counts"]
    assert c2["sent"] == 60 == len(records2) == c2["finished"] + c2["rejected"] + c2["errors"]
    args = _args(*argv)
    reqs = LC.source_requests(args)
    plan = Workload(reqs, LC.workload_config(args, reqs, ("sim-000", "sim-004"))).plan()
    too_long = [p.prompt_tokens == 8190 for p in plan]
    assert 0 < sum(too_long) < 60
    assert [r["error_code"] for r in records2] == ["prompt_too_long" if t else None for t in too_long]
    assert doc2["rejected_by_code"] == {"prompt_too_long": sum(too_long)} and c2["errors"] == 0
    assert [r["model"] for r in records2] == [p.model for p in plan]
    # The scheduler accepted exactly what was not rejected, over both runs.
    assert _accepted_total(sim_instance.home) == c["finished"] + c2["finished"]


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--home", default=None)
    LC.register(p.add_subparsers(dest="cmd"))
    return p.parse_args(["loadgen", *argv])
