"""The simulator's KV model (services/sim/kv.py): a bounded device pool and a host pool, the engine's
block scheduling, and the real executor's rotation policy over them. Durations are modelled
(virtual) seconds."""

from __future__ import annotations

import dataclasses
import json
import pytest

from c2cq import cli
from c2cq.schemas.client import SLO
from c2cq.schemas.executor import AssignRequest
from c2cq.services.catalog.sim_models import sim_model
from c2cq.services.executor import rotation
from c2cq.services.executor.rotation import KVPolicy
from c2cq.services.executor.sim import SliceProfile
from c2cq.services.sim import kv as sim_kv
from c2cq.services.sim.kv import KVBackend, KVSetup, block_bytes
from c2cq.services.sim.run import run_policy

from .test_sim import small_scenario

MODEL = sim_model("m", 576, 30, 1536, 49152)
POOL = 20  # device blocks (16 tokens each)


def backend(policy: KVPolicy, clock: list[float]) -> KVBackend:
    kv = KVSetup(policy=policy, host_bytes=64 * block_bytes(MODEL, KVSetup(policy=policy)))
    bb = block_bytes(MODEL, kv)
    prof = SliceProfile(hbm_bytes=MODEL.bytes + POOL * bb, hbm_bps=1e12, flops=1e15, link_bps=1e11, max_batch=8)
    b = KVBackend(prof, kv, clock=lambda: clock[0])
    b.switch(MODEL, alpha=1.0)
    return b


def assign(rid: str, prompt: int, max_tokens: int, *, ttft_ms: float | None = None, tpot_ms: float = 500.0,
           waited_ms: float = 0.0) -> AssignRequest:
    return AssignRequest(request_id=rid, model="m", prompt_token_ids=(1,) * prompt, max_tokens=max_tokens,
                         slo=SLO(ttft_ms=ttft_ms, tpot_ms=tpot_ms), waited_ms=waited_ms)


def drive(policy: KVPolicy) -> tuple[KVBackend, dict[str, list[tuple[int, float]]]]:
    """A (200-token prompt, 100 tokens, TPOT 0.5 s) holds most of the pool when B (150-token prompt,
    TTFT due in 0.3 s) arrives: B lacks 3 of its 10 blocks."""
    clock = [0.0]
    b = backend(policy, clock)
    assert b.device_blocks() == POOL
    b.add(assign("A", 200, 100))
    got: dict[str, list[tuple[int, float]]] = {"A": [], "B": []}
    steps = 0
    while b.has_work():
        steps += 1
        assert steps < 1000
        if len(got["A"]) == 5 and "B" not in b.blocks and not got["B"]:
            b.add(assign("B", 150, 5, ttft_ms=500.0, tpot_ms=100.0, waited_ms=200.0))  # TTFT due in 0.3 s
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
    b = backend(KVPolicy.ROTATE, clock)
    b.add(assign("big", POOL * 16, 4))
    b.add(assign("A", 100, 4))
    res = b.step(512)
    failed = [o for o in res.outputs if o.error]
    assert [(o.request_id, o.code) for o in failed] == [("big", "prompt_too_long")]
    assert [o.request_id for o in res.outputs if o.token_ids] == ["A"]
    assert "big" not in b.seqs and "big" not in b.blocks


def test_a_prefill_short_of_room_takes_what_room_there_is():
    """(the engine's partial chunk: taken whole or not at all, an old long prompt short of a few
    blocks would preempt its juniors step after step and never start)"""
    clock = [0.0]
    b = backend(KVPolicy.BLOCK, clock)
    b.add(assign("A", 200, 100))
    b.step(512)  # A: its prompt (13 blocks) and first token
    b.add(assign("C", 150, 4))
    res = b.step(512)
    assert b.seqs["C"].prefilled == 7 * 16 and b.blocks["C"].device == 7 and res.prefill_tokens == 7 * 16
    assert b._used() == (POOL, 0)


def a_decodes_then_b_arrives(clock):
    """A rotate slice where A decodes for a few steps, then B arrives with a tight TTFT (not stepped yet)."""
    b = backend(KVPolicy.ROTATE, clock)
    b.add(assign("A", 200, 100))
    for _ in range(6):
        clock[0] += b.step(512).busy_s
    b.add(assign("B", 150, 5, ttft_ms=300.0, tpot_ms=100.0))
    return b


def test_bytes_copied_in_count_on_the_link_once():
    """A step that runs nothing (the request copied back in joins the next step) counts its copy; the
    step after it, copying nothing, counts nothing (not the last step's copy again)."""
    clock = [0.0]
    b = a_decodes_then_b_arrives(clock)
    clock[0] += b.step(512).busy_s  # A goes out for B
    assert b.blocks["A"].rotated
    b.abort("B")
    clock[0] += b.step(512).busy_s  # nothing waits: A comes back, and runs from the next step
    assert b.blocks["A"].joins and b.copied_bytes == b.blocks["A"].device * block_bytes(MODEL, b.kv)
    b.abort("A")
    b.step(512)
    assert b.copied_bytes == 0


def test_a_copy_takes_link_time():
    """The step that rotates A out lasts at least A's bytes over the link's d2h share."""
    b = a_decodes_then_b_arrives([0.0])
    res = b.step(512)
    out_bytes = b.total_bytes
    assert out_bytes > 0 and res.busy_s >= out_bytes / (1e11 * b.kv.d2h_ratio) * (1 - 1e-12)


def test_a_request_s_deadlines_come_from_its_assign_as_the_executor_derives_them():
    from c2cq.services.executor import kv_shell  # (imports the torch engine: not from the simulator)

    assert sim_kv.targets is kv_shell.targets is rotation.targets  # one derivation for both
    clock = [5.0]
    b = backend(KVPolicy.ROTATE, clock)
    b.add(assign("A", 100, 50, ttft_ms=2000.0, tpot_ms=200.0, waited_ms=500.0))
    b.add(AssignRequest(request_id="D", model="m", prompt_token_ids=(1,) * 10, max_tokens=5))  # names no target
    b.add(AssignRequest(request_id="M", model="m", prompt_token_ids=(1,) * 10, max_tokens=5, resume_token_ids=(7, 7),
                        slo=SLO(ttft_ms=2000.0, tpot_ms=300.0)))  # migrated: a TPOT on
    a, d, m = b.blocks["A"], b.blocks["D"], b.blocks["M"]
    assert (a.ttft_deadline, a.tpot_s) == (5.0 + 1.5, 0.2)
    assert (d.ttft_deadline, d.tpot_s) == (5.0 + rotation.DEFAULT_TTFT_S, rotation.DEFAULT_TPOT_S)
    assert (m.ttft_deadline, m.tpot_s) == (5.0 + 0.3, 0.3)


def test_tpot_is_judged_on_the_mean_a_request_ahead_of_its_pace_banks_slack():
    """(as KVRotor: the k-th token after the first is due at first + k · TPOT)"""
    clock = [0.0]
    b = backend(KVPolicy.ROTATE, clock)
    b.add(assign("A", 100, 50, tpot_ms=200.0))
    assert b.blocks["A"].token_deadline(b.seqs["A"].produced, 3.0) == 3.2  # before its first token
    clock[0] = 1.0
    b.step(512)  # its first token
    for _ in range(4):
        clock[0] += 0.01
        b.step(512)
    first = b.blocks["A"].first_token
    assert first == 1.01 and b.seqs["A"].produced == 5
    # its first token and 4 more: the next (the 5th after the first) is due 5 TPOTs after the first
    assert b.blocks["A"].token_deadline(b.seqs["A"].produced, clock[0]) == pytest.approx(first + 5 * 0.2)


@pytest.mark.parametrize("policy", [KVPolicy.ROTATE, KVPolicy.BLOCK])
def test_running_requests_that_cannot_grow_make_room_by_slack_not_by_age(policy):
    """Two decodes fill the pool; at the next block boundary ``decide`` sees the growth: under rotate
    the one with more TPOT slack (the older, TPOT 500 ms) goes to host; under block the engine
    drops the youngest for recompute, as today."""
    clock = [0.0]
    b = backend(policy, clock)
    b.add(assign("A", 150, 40, tpot_ms=500.0))
    b.add(assign("C", 150, 40, tpot_ms=100.0))
    steps = 0
    while not (b.total_rotations or b.total_preemptions):
        steps += 1
        assert steps < 30
        clock[0] += max(b.step(512).busy_s, 0.001)
    if policy is KVPolicy.ROTATE:
        assert b.blocks["A"].rotated and b.total_preemptions == 0
    else:
        assert b.blocks["C"].device == 0 and not b.blocks["A"].rotated


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
