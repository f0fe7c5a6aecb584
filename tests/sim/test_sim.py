"""The simulator: virtual time, exactly-once endings, the roofline by hand, the baselines' load
before the first token, determinism. Durations here are modelled (virtual) seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from c2cq import cli
from c2cq.errors import ConfigError
from c2cq.loadgen import arrivals, workload
from c2cq.loadgen.workload import PlannedRequest, Workload, WorkloadConfig
from c2cq.services.catalog.sim_models import generate
from c2cq.services.sim.engine import Engine
from c2cq.services.sim.errors import SimError
from c2cq.services.sim.executor import SimExecutor
from c2cq.services.sim.metrics import Recorder
from c2cq.services.sim.profiles import build_cluster, load_profile, parse_layout
from c2cq.services.sim.run import POLICIES, Scenario, run_policy

TRACES = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces"

# round numbers: one whole GPU as one slice, compute far from binding
ROUND = """
[gpu.t]
hbm_bytes = 1e12
hbm_bps = 1e12
flops = 1e15
link_bps = 1e11
[mig.7g]
compute = 1.0
memory = 1.0
[slice]
max_batch = 8
weight_share = 0.8
[loader]
efficiency = 0.5
engine_start_s = 2.0
keep_alive_s = 60.0
[c2cq]
switch_fixed_s = 0.5
eager_copy = 1.0
"""


def small_scenario(rate: float = 6.0, seconds: float = 20.0, seed: int = 0, slices: int = 6,
                   gpu: str = "gh200-96") -> Scenario:
    prof = load_profile()
    specs = build_cluster(prof, gpu, parse_layout("3g,2g,2g", prof), slices)
    models = {m.name: m for m in generate(40)}
    offsets = arrivals.schedule(rate, duration_s=seconds, seed=seed)
    cfg = WorkloadConfig(catalog=tuple(models), models="zipf", lengths=((300, 20), (900, 40), (60, 8)), seed=seed)
    return Scenario(plan=Workload(workload.from_schedule(offsets), cfg).plan(), specs=specs, models=models,
                    profile=prof)


def one_request(tmp_path: Path, prompt: int = 100, tokens: int = 10) -> Scenario:
    f = tmp_path / "round.toml"
    f.write_text(ROUND)
    prof = load_profile(f)
    specs = build_cluster(prof, "t", parse_layout("7g", prof), 1)
    info = generate(1)[0]
    req = PlannedRequest(index=0, offset_s=1.0, model=info.name, prompt_tokens=prompt, prompt_ids=None,
                         max_tokens=tokens, slo_class="x", ttft_ms=60_000.0, tpot_ms=60_000.0)
    return Scenario(plan=[req], specs=specs, models={info.name: info}, profile=prof)


def test_the_engine_refuses_to_schedule_in_the_past_and_runs_in_time_order():
    e = Engine()
    seen: list[float] = []
    for t in (3.0, 1.0, 2.0, 1.0):
        e.at(t, lambda t=t: seen.append(e.now))
    e.run()
    assert seen == [1.0, 1.0, 2.0, 3.0]
    with pytest.raises(SimError):
        e.at(2.5, lambda: None)


def test_the_scheduler_core_never_sees_time_go_backwards():
    times: list[float] = []
    run_policy("c2cq", small_scenario(), observe=lambda e: times.append(e.at))
    assert len(times) > 500
    assert all(a <= b for a, b in zip(times, times[1:]))


def with_and_without(sc: Scenario, monkeypatch, shortcut: str) -> tuple[tuple[dict, list], tuple[dict, list]]:
    """The c2cq run of ``sc`` as the simulator is, then with ``SimExecutor.<shortcut>`` off: the
    summary and the events the core was fed, of each."""
    fast_log: list = []
    fast, _, _ = run_policy("c2cq", sc, observe=fast_log.append)
    monkeypatch.setattr(SimExecutor, shortcut, False)
    slow_log: list = []
    slow, _, _ = run_policy("c2cq", sc, observe=slow_log.append)
    return (fast, fast_log), (slow, slow_log)


@pytest.mark.parametrize("gpu", ["gh200-96", "h100-sxm"])
def test_runs_of_alike_decode_steps_as_one_event_change_nothing_the_scheduler_sees(gpu, monkeypatch):
    """The shortcut (services/sim/shortcuts.py ``_run_of_steps``) against one event per step: the
    same events reach the core at the same times, and the same figures come out."""
    (fast, fast_log), (slow, slow_log) = with_and_without(small_scenario(rate=8.0, seconds=30.0, seed=4, gpu=gpu),
                                                          monkeypatch, "runs")
    assert fast.pop("sim")["events"] < slow.pop("sim")["events"]  # the shortcut was taken
    assert fast == slow
    assert fast_log == slow_log


@pytest.mark.parametrize("policy", POLICIES)
def test_every_submitted_request_ends_exactly_once(policy):
    sc = small_scenario()
    out, rec, _ = run_policy(policy, sc)
    assert sorted(rec.out) == [r.index for r in sc.plan]
    assert all(o.status in ("finished", "rejected", "error") for o in rec.out.values())
    assert rec.ended == len(sc.plan) == out["requests"]
    assert out["finished"] > 0
    for o in rec.out.values():
        if o.status == "finished":
            assert o.tokens == o.req.max_tokens and o.first_token_at is not None
            assert o.req.offset_s <= o.first_token_at <= o.end_at


def test_a_request_cannot_end_twice(tmp_path):
    sc = one_request(tmp_path)
    rec = Recorder(1)
    rec.arrive(sc.plan[0])
    rec.end(0, 1.0, "finished", tokens=1)
    with pytest.raises(SimError):
        rec.end(0, 2.0, "error")


def embedding_bytes(info) -> float:
    return info.vocab_size * info.hidden_size * info.bytes / info.parameters


def test_a_single_request_on_an_idle_slice_follows_the_roofline(tmp_path):
    sc = one_request(tmp_path, prompt=100, tokens=10)
    info = next(iter(sc.models.values()))
    b, link, hbm, emb = info.bytes, 1e11, 1e12, embedding_bytes(info)
    # c2cq: the switch sets up (0.5 s) and copies the embedding table over the link; the first step
    # streams the whole model (α = 0) while the residency copy (the whole model to go) takes half
    # the link: both end at b / (link / 2), prefill's compute hidden under it; then α = 1 and the
    # rest read HBM
    _, rec, _ = run_policy("c2cq", sc)
    o = rec.out[0]
    switch = 0.5 + emb / link + 2 * b / link
    assert o.status == "finished" and o.tokens == 10
    assert o.first_token_at - 1.0 == pytest.approx(switch, rel=1e-9)
    assert (o.end_at - o.first_token_at) / 9 == pytest.approx(b / hbm, rel=1e-9)
    assert o.switch_s == pytest.approx(switch, rel=1e-9)
    # load-then-serve: the whole checkpoint at the loader's 0.5 of the link, the engine's 2 s
    # start-up, then a step from HBM
    _, rec, _ = run_policy("load-then-serve", sc)
    o = rec.out[0]
    assert o.first_token_at - 1.0 == pytest.approx(b / (0.5 * link) + 2.0 + b / hbm, rel=1e-9)
    assert (o.end_at - o.first_token_at) / 9 == pytest.approx(b / hbm, rel=1e-9)


def test_the_host_link_carries_each_byte_once(tmp_path):
    """c2cq's link bytes: the embedding table, then the first step's reads and residency copy (the
    whole model each): nothing more once resident. load-then-serve: the checkpoint once."""
    sc = one_request(tmp_path, prompt=100, tokens=10)
    info = next(iter(sc.models.values()))
    out, _, _ = run_policy("c2cq", sc)
    moved = out["link_utilisation"]["mean"] * 1e11 * out["makespan_s"]
    assert moved == pytest.approx(embedding_bytes(info) + 2 * info.bytes, rel=1e-3)  # utilisation has 6 digits
    out, _, _ = run_policy("load-then-serve", sc)
    assert out["link_utilisation"]["mean"] * 1e11 * out["makespan_s"] == pytest.approx(info.bytes, rel=1e-3)


def test_load_then_serve_waits_for_the_full_load_and_c2cq_does_not(tmp_path):
    sc = one_request(tmp_path, prompt=400, tokens=4)
    load_s = next(iter(sc.models.values())).bytes / (0.5 * 1e11) + 2.0  # the copy, then the engine start-up
    ttft = {p: run_policy(p, sc)[1].out[0].first_token_at - 1.0 for p in ("c2cq", "load-then-serve", "time-share")}
    assert ttft["load-then-serve"] >= load_s and ttft["time-share"] >= load_s
    assert ttft["c2cq"] < load_s


def sim_json(tmp_path: Path, name: str, seed: int) -> str:
    out = tmp_path / name
    rc = cli.main(["sim", "--rate", "5", "--duration", "15", "--models", "30", "--slices", "6", "--seed", str(seed),
                   "--prompt-tokens", "400", "--output-tokens", "24", "--out", str(out)])
    assert rc == 0
    return out.read_text()


def test_the_same_seed_gives_identical_json_and_another_seed_does_not(tmp_path, capsys):
    a, b, c = sim_json(tmp_path, "a.json", 1), sim_json(tmp_path, "b.json", 1), sim_json(tmp_path, "c.json", 2)
    assert a == b
    da, dc = json.loads(a), json.loads(c)
    assert da["results"] != dc["results"]
    assert set(da["results"]) == set(POLICIES)
    assert "c2cq" in capsys.readouterr().out  # the table


def test_a_bad_profile_or_layout_is_a_config_error(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text(ROUND.replace("link_bps = 1e11", "link_bps = -1"))
    with pytest.raises(ConfigError, match="link_bps"):
        load_profile(f)
    prof = load_profile()
    with pytest.raises(ConfigError, match="more than one GPU"):
        parse_layout("7g,1g", prof)
    with pytest.raises(ConfigError, match="unknown GPU"):
        build_cluster(prof, "nope", ("1g",), 1)


def test_slices_of_one_gpu_share_its_link_group():
    prof = load_profile()
    specs = build_cluster(prof, "gh200-96", parse_layout("3g,2g,2g", prof), 5)
    assert [s.group for s in specs] == ["gpu000"] * 3 + ["gpu001"] * 2
    assert all(s.device.startswith(s.group + "/") for s in specs)
    assert specs[0].profile.hbm_bytes == 48e9 and specs[1].profile.hbm_bytes == 24e9
    assert "gpu.gh200-96.link_bps" in prof.sources


@pytest.mark.skipif(not (TRACES / "azure_llm_2023_code.csv").exists(), reason="../shared/traces is not here")
def test_an_azure_trace_window_runs_through_every_policy(tmp_path):
    out = tmp_path / "azure.json"
    rc = cli.main(["sim", "--trace", str(TRACES / "azure_llm_2023_code.csv"), "--trace-format", "azure",
                   "--start", "180", "--duration", "30", "--models", "50", "--slices", "6", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())["results"]
    assert all(r["requests"] == res["c2cq"]["requests"] > 20 for r in res.values())


def test_a_run_of_tokens_at_once_is_the_tokens_one_by_one():
    from c2cq.services.executor.sim import _token, _tokens

    for seed, start, n, vocab in ((0, 0, 5, 49152), (2**64 - 1, 12345, 23, 7), (2**64 - 1, 7, 48, 151936),
                                  (0x9E3779B97F4A7C15, 1000, 300, 128256)):
        assert _tokens(seed, start, n, vocab) == [_token(seed, i, vocab) for i in range(start, start + n)]
