"""The simulator's KV model (services/sim/kv.py): a bounded device pool and a host pool, the engine's
block scheduling, and the real executor's rotation policy over them. Durations are modelled
(virtual) seconds."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from c2cq import cli
from c2cq.schemas.executor import AssignRequest
from c2cq.services.catalog.sim_models import sim_model
from c2cq.services.executor.rotation import KVPolicy
from c2cq.services.executor.sim import SliceProfile
from c2cq.services.sim.kv import KVBackend, KVSetup, block_bytes
from c2cq.services.sim.run import run_policy

from .test_sim import small_scenario

MODEL = sim_model("m", 576, 30, 1536, 49152)
POOL = 20  # device blocks (16 tokens each)


def backend(policy: KVPolicy, slos: dict, clock: list[float]) -> KVBackend:
    kv = KVSetup(policy=policy, host_bytes=64 * block_bytes(MODEL, KVSetup(policy=policy)),
                 slo_of=lambda rid: slos[rid])
    bb = block_bytes(MODEL, kv)
    prof = SliceProfile(hbm_bytes=MODEL.bytes + POOL * bb, hbm_bps=1e12, flops=1e15, link_bps=1e11, max_batch=8)
    b = KVBackend(prof, kv, clock=lambda: clock[0])
    b.switch(MODEL, alpha=1.0)
    return b


def drive(policy: KVPolicy) -> tuple[KVBackend, dict[str, list[tuple[int, float]]]]:
    """A (200-token prompt, 100 tokens, TPOT 0.5 s) holds most of the pool when B (150-token prompt,
    TTFT due in 0.3 s) arrives: B lacks 3 of its 10 blocks."""
    clock = [0.0]
    slos = {"A": (math.inf, 0.5)}
    b = backend(policy, slos, clock)
    assert b.device_blocks() == POOL
    b.add(AssignRequest(request_id="A", model="m", prompt_token_ids=(1,) * 200, max_tokens=100))
    got: dict[str, list[tuple[int, float]]] = {"A": [], "B": []}
    steps = 0
    while b.has_work():
        steps += 1
        assert steps < 1000
        if len(got["A"]) == 5 and "B" not in slos:
            slos["B"] = (clock[0] + 0.3, 0.1)
            b.add(AssignRequest(request_id="B", model="m", prompt_token_ids=(1,) * 150, max_tokens=5))
        res = b.step(512)
        clock[0] += res.busy_s
        used, host = b._used()
        assert used <= POOL and host <= b.host_blocks()
        for o in res.outputs:
            assert o.error is None
            got[o.request_id] += [(o.index + i, clock[0]) for i in range(len(o.token_ids))]
    return b, got


def test_rotate_moves_the_running_request_out_for_the_urgent_head_and_back():
    b, got = drive(KVPolicy.ROTATE)
    assert [i for i, _ in got["A"]] == list(range(100)) and [i for i, _ in got["B"]] == list(range(5))
    assert got["B"][-1][1] < got["A"][-1][1]  # B did not wait for A to end
    assert b.total_rotations == 2 and b.total_recomputes == 0
    a_blocks = -(-(200 + 5) // 16)  # A's KV when it went out: its prompt and 5 outputs
    assert b.total_bytes == 2 * a_blocks * block_bytes(MODEL, b.kv)
    assert not b.blocks and b._used() == (0, 0)  # both pools back to full


def test_block_makes_the_head_wait_for_the_running_request():
    b, got = drive(KVPolicy.BLOCK)
    assert got["B"][0][1] > got["A"][-1][1]  # B's first token after A's last
    assert b.total_rotations == b.total_recomputes == b.total_bytes == 0


def test_recompute_frees_the_running_request_and_prefills_it_again():
    b, got = drive(KVPolicy.RECOMPUTE)
    assert [i for i, _ in got["A"]] == list(range(100))
    assert got["B"][-1][1] < got["A"][-1][1]
    assert b.total_recomputes == 1 and b.total_rotations == 0 and b.total_bytes == 0
    assert not b.blocks and b._used() == (0, 0)


def test_a_request_larger_than_the_device_pool_fails_at_once_and_the_others_run():
    clock = [0.0]
    slos = {"big": (math.inf, 0.5), "A": (math.inf, 0.5)}
    b = backend(KVPolicy.ROTATE, slos, clock)
    b.add(AssignRequest(request_id="big", model="m", prompt_token_ids=(1,) * (POOL * 16), max_tokens=4))
    b.add(AssignRequest(request_id="A", model="m", prompt_token_ids=(1,) * 100, max_tokens=4))
    res = b.step(512)
    failed = [o for o in res.outputs if o.error]
    assert [(o.request_id, o.code) for o in failed] == [("big", "prompt_too_long")]
    assert [o.request_id for o in res.outputs if o.token_ids] == ["A"]
    assert "big" not in b.seqs and "big" not in b.blocks


def test_a_prefill_short_of_room_takes_what_room_there_is():
    """(the engine's partial chunk: taken whole or not at all, an old long prompt short of a few
    blocks would preempt its juniors step after step and never start)"""
    clock = [0.0]
    b = backend(KVPolicy.BLOCK, {"A": (math.inf, 0.5), "C": (math.inf, 0.5)}, clock)
    b.add(AssignRequest(request_id="A", model="m", prompt_token_ids=(1,) * 200, max_tokens=100))
    b.step(512)  # A: its prompt (13 blocks) and first token
    b.add(AssignRequest(request_id="C", model="m", prompt_token_ids=(1,) * 150, max_tokens=4))
    res = b.step(512)
    assert b.seqs["C"].prefilled == 7 * 16 and b.blocks["C"].device == 7 and res.prefill_tokens == 7 * 16
    assert b._used() == (POOL, 0)


def test_a_copy_takes_link_time():
    """The step that rotates A out lasts at least A's bytes over the link's d2h share."""
    clock = [0.0]
    slos = {"A": (math.inf, 0.5)}
    b = backend(KVPolicy.ROTATE, slos, clock)
    b.add(AssignRequest(request_id="A", model="m", prompt_token_ids=(1,) * 200, max_tokens=100))
    for _ in range(6):
        clock[0] += b.step(512).busy_s
    slos["B"] = (clock[0] + 0.3, 0.1)
    b.add(AssignRequest(request_id="B", model="m", prompt_token_ids=(1,) * 150, max_tokens=5))
    res = b.step(512)
    out_bytes = b.total_bytes
    assert out_bytes > 0 and res.busy_s >= out_bytes / (1e11 * b.kv.d2h_ratio) * (1 - 1e-12)


@pytest.mark.parametrize("policy", ["block", "rotate", "recompute"])
def test_with_no_kv_pressure_a_run_is_the_run_without_the_kv_model(policy):
    sc = small_scenario()
    off, _, _ = run_policy("c2cq", sc)
    on, _, _ = run_policy("c2cq", dataclasses.replace(sc, kv_policy=policy))
    kv = on.pop("kv")
    assert kv["rotations"] == kv["recomputes"] == kv["preemptions"] == 0
    on.pop("sim"), off.pop("sim")
    assert on == off


def test_under_pressure_every_request_ends_once_and_the_pools_return_to_full():
    sc = small_scenario(rate=8.0, seconds=20.0)  # long prompts and outputs, MHA-wide KV: the pools fill
    sc = dataclasses.replace(sc, plan=[dataclasses.replace(r, prompt_tokens=6000, max_tokens=2000) for r in sc.plan],
                             profile=dataclasses.replace(sc.profile, kv_dim_share=1.0))
    seen = {}

    def inspect(policy):
        for x in policy.executors.values():
            seen[x.id] = (dict(x.backend.blocks), x.backend._used() if x.backend.model is not None else (0, 0))

    out, rec, _ = run_policy("c2cq", dataclasses.replace(sc, kv_policy="rotate"), inspect=inspect)
    assert out["kv"]["rotations"] > 0 and out["kv"]["bytes_rotated"] > 0
    assert all(o.status for o in rec.out.values())  # the recorder raises on a second ending
    assert all(blocks == {} and used == (0, 0) for blocks, used in seen.values())


def test_the_cli_compares_the_three_kv_policies_side_by_side(tmp_path, capsys):
    out = tmp_path / "kv.json"
    rc = cli.main(["sim", "--rate", "4", "--duration", "10", "--models", "20", "--slices", "3", "--policies",
                   "c2cq,load-then-serve", "--prompt-tokens", "4000", "--output-tokens", "400", "--kv-policy",
                   "compare", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"c2cq/rotate", "c2cq/recompute", "c2cq/block", "c2cq/unbounded", "load-then-serve"}
    assert all(res[f"c2cq/{p}"]["kv"]["policy"] == p for p in ("rotate", "recompute", "block"))
    assert "kv" not in res["load-then-serve"] and "kv" not in res["c2cq/unbounded"]
    printed = capsys.readouterr().out
    assert "GB rotated" in printed and "c2cq/recompute" in printed
