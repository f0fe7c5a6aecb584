"""`c2cq loadgen` flags → arrivals and workload (the pure part), --help and --dry-run."""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest

from c2cq.cli import main
from c2cq.errors import ConfigError
from c2cq.loadgen import arrivals as A
from c2cq.loadgen import cli as LC
from c2cq.loadgen import traces as T
from c2cq.loadgen.workload import Workload

AZURE = "azure_llm_2023_code.csv"


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--home", default=None)
    LC.register(p.add_subparsers(dest="cmd"))
    return p.parse_args(["loadgen", *argv])


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["loadgen", "--help"])
    assert ei.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--trace", "--trace-format", "azure", "burstgpt", "servegen", "mooncake", "--rate",
                 "--rate-steps", "--pattern", "gamma", "weibull", "--cv", "--start", "--duration", "--speed",
                 "--num-requests", "--seed", "--zipf", "--models-from", "--slo", "--out", "--max-tokens-cap",
                 "--dry-run", "examples:"):
        assert flag in text, flag


# --- arrivals -------------------------------------------------------------------------------


def test_azure_window_start_duration_speed(traces_dir):
    path = traces_dir / AZURE
    full = [r.arrival_s for r in T.read_azure(path)]
    want = [(t - 180.0) / 4.0 for t in full if 180.0 <= t < 240.0]
    got = LC.source_requests(_args("--trace", str(path), "--trace-format", "azure",
                                   "--start", "180", "--duration", "60", "--speed", "4"))
    assert len(want) > 100
    assert [r.arrival_s for r in got] == pytest.approx(want, abs=1e-12)
    assert all(r.prompt_tokens is not None and r.output_tokens is not None for r in got)
    first = LC.source_requests(_args("--trace", str(path), "--trace-format", "azure", "--start", "180",
                                     "--duration", "60", "--speed", "4", "--num-requests", "10"))
    assert first == got[:10]


def _servegen_file(tmp_path):
    rows = ["client_id,timestamp_s,rate_rps,cv,pattern,pattern_arg1,pattern_arg2"]
    for client, (pattern, shape, scale) in enumerate([("Gamma", 0.5, 4.0), ("Weibull", 0.7, 1.5), ("", 0, 0)]):
        for w in range(6):
            rate = 0.0 if not pattern else 0.2 + 0.1 * w + client * 0.05
            rows.append(f"{client},{600 * w},{rate},1.2,{pattern},{shape},{scale}")
    path = tmp_path / "sg.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_servegen_reads_only_the_windows_it_needs_and_gets_the_same_arrivals(tmp_path):
    path = _servegen_file(tmp_path)
    # 900..2100 s straddles windows 600-1200 and 1800-2400: those are cut, not dropped.
    got = LC.source_requests(_args("--trace", str(path), "--trace-format", "servegen", "--start", "900",
                                   "--duration", "1200", "--speed", "2", "--seed", "7"))
    full = sorted(T.window(T.read_servegen(path, seed=7), start_s=900.0, duration_s=1200.0, speed=2.0),
                  key=lambda r: r.arrival_s)
    assert got == full and len(got) > 300
    assert {r.model for r in got} == {"client-0", "client-1"}
    assert min(r.arrival_s for r in got) < 150.0 and max(r.arrival_s for r in got) > 450.0


def test_synthetic_schedules():
    got = LC.source_requests(_args("--rate", "5", "--duration", "30", "--seed", "3"))
    assert [r.arrival_s for r in got] == A.schedule(5.0, duration_s=30.0, seed=3).tolist()
    bursty = LC.source_requests(_args("--rate", "5", "--pattern", "gamma", "--cv", "3", "--num-requests", "50"))
    assert [r.arrival_s for r in bursty] == A.schedule(5.0, pattern="gamma", cv=3.0, count=50).tolist()
    steps = LC.source_requests(_args("--rate-steps", "0:1,20:50", "--duration", "40", "--seed", "2"))
    t = np.array([r.arrival_s for r in steps])
    assert np.count_nonzero(t >= 20) > 10 * np.count_nonzero(t < 20) > 0


@pytest.mark.parametrize("argv, match", [
    ((), "--trace PATH"),
    (("--trace", "x.csv"), "--trace-format"),
    (("--trace", "x.csv", "--trace-format", "azure", "--rate", "2"), "not both"),
    (("--rate", "2", "--rate-steps", "0:1", "--duration", "5"), "not both"),
    (("--rate", "2"), "--duration"),
    (("--rate", "2", "--duration", "5", "--speed", "3"), "trace replay only"),
    (("--rate", "0", "--duration", "5"), "--rate"),
    (("--rate", "2", "--duration", "5", "--cv", "2"), "Poisson"),
    (("--rate-steps", "5:1", "--duration", "5"), "start at 0"),
    (("--rate-steps", "0-1", "--duration", "5"), "T:RATE"),
    (("--trace", "x.csv", "--trace-format", "azure", "--cv", "2"), "synthetic"),
    (("--trace", "x.csv", "--trace-format", "servegen"), "needs --duration"),
])
def test_bad_arrival_flags_are_config_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        LC.source_requests(_args(*argv))


def test_missing_trace_file_is_a_trace_error(tmp_path):
    with pytest.raises(T.TraceError, match="cannot open"):
        LC.source_requests(_args("--trace", str(tmp_path / "none.csv"), "--trace-format", "azure"))


# --- workload -------------------------------------------------------------------------------


def test_parse_slo_and_pairs():
    classes, weights = LC.parse_slo(["fast:200:20:3", "slow:5000:400"])
    assert [(c.name, c.ttft_ms, c.tpot_ms) for c in classes] == [("fast", 200.0, 20.0), ("slow", 5000.0, 400.0)]
    assert weights == (3.0, 1.0)
    assert LC.parse_slo([])[1] is None
    for bad in ("fast:200", "fast:x:20", ":1:2"):
        with pytest.raises(ConfigError):
            LC.parse_slo([bad])
    with pytest.raises(ConfigError):
        LC.parse_slo(["x:0:20"])  # SloClass checks the targets
    assert LC.parse_pairs(["a=b", "c=d=e"], "--map") == {"a": "b", "c": "d=e"}
    with pytest.raises(ConfigError, match="--map"):
        LC.parse_pairs(["nope"], "--map")


def test_rank_model_map_by_popularity_wraps_the_catalog():
    reqs = [T.TraceRequest(float(i), 1, 1, model=m) for i, m in enumerate("aabbbcdd" + "b" + "e")]
    assert LC.rank_model_map(reqs, ("x", "y", "z")) == {"b": "x", "a": "y", "d": "z", "c": "x", "e": "y"}
    with pytest.raises(ConfigError):
        LC.rank_model_map(reqs, ())


def test_workload_from_flags(tmp_path):
    path = _servegen_file(tmp_path)
    args = _args("--trace", str(path), "--trace-format", "servegen", "--duration", "1200",
                 "--models-from", "rank", "--map", "client-1=m9", "--prompt-tokens", "40",
                 "--output-tokens", "300", "--max-tokens-cap", "64", "--slo", "only:500:50")
    reqs = LC.source_requests(args)
    cfg = LC.workload_config(args, reqs, ("m0", "m1"))
    plan = Workload(reqs, cfg).plan()
    by_client = {r.model for r in reqs}
    assert by_client == {"client-0", "client-1"}
    # client-1 has the higher rates: rank 1 → m0, but --map wins and sends it to m9; client-0 → m1.
    assert sum(r.model == "client-1" for r in reqs) > sum(r.model == "client-0" for r in reqs)
    assert {p.model for p in plan} == {"m1", "m9"}
    assert {(p.prompt_tokens, p.max_tokens, p.slo_class) for p in plan} == {(40, 64, "only")}


def test_lengths_come_from_a_lengths_trace(traces_dir):
    args = _args("--rate", "10", "--num-requests", "200", "--lengths-trace", str(traces_dir / AZURE))
    reqs = LC.source_requests(args)
    plan = Workload(reqs, LC.workload_config(args, reqs, ("m",))).plan()
    pool = {(r.prompt_tokens, r.output_tokens) for r in T.read_azure(traces_dir / AZURE)}
    assert all((p.prompt_tokens, p.max_tokens) in pool for p in plan)
    assert len({p.prompt_tokens for p in plan}) > 50


def test_choose_catalog_and_prompt_vocab():
    assert LC.choose_catalog(["a", "b", "c"], None) == ("a", "b", "c")
    assert LC.choose_catalog(["a", "b", "c"], "c, a") == ("c", "a")
    with pytest.raises(ConfigError, match="not in the catalog"):
        LC.choose_catalog(["a"], "a,zz")
    assert LC.prompt_vocab(["a", "b", "a"], {"a": 50000, "b": 32768, "c": 1000}) == 32768
    assert LC.prompt_vocab(["unknown"], {"a": 5}) == LC.DEFAULT_VOCAB


# --- the command without an instance --------------------------------------------------------


def test_dry_run_plans_from_the_catalog_and_a_real_run_needs_an_instance(home, capsys):
    assert main(["--home", str(home), "models", "add-sim", "--count", "3"]) == 0
    capsys.readouterr()
    assert main(["--home", str(home), "loadgen", "--rate", "4", "--duration", "25", "--dry-run"]) == 0
    err = capsys.readouterr().err
    n = len(A.schedule(4.0, duration_s=25.0))
    assert f"plan: {n} requests" in err and "3 models (top: sim-000" in err
    assert main(["--home", str(home), "loadgen", "--rate", "4", "--duration", "25"]) == 1
    err = capsys.readouterr().err
    assert "no c2cq instance runs" in err and "`c2cq up`" in err, err


def test_the_runner_and_command_do_not_import_torch():
    code = (
        "import sys\n"
        "import c2cq.loadgen.runner, c2cq.loadgen.cli, c2cq.client, c2cq.catalog_client\n"
        "import c2cq.rundir, c2cq.supervisor.manager, c2cq.schemas.catalog, tqdm, uvloop\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
