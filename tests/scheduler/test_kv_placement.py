"""KV capacity in placement and admission (kvroom.py): history tests over StepStats' KV figures."""

from __future__ import annotations

from c2cq.schemas import executor as m
from c2cq.schemas.client import SLO, RequestRejected, SubmitRequest
from c2cq.services.scheduler import core
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.state import State, decode_state, encode_state

from .history import MODELS, S, completed, of, ready, submit


def run(st: State, events) -> list:
    return [core.apply(st, e)[1] for e in events]


def small_ready(eid: str, at: float, max_batch: int) -> ev.ExecutorSaid:
    return ev.ExecutorSaid(at=at, executor_id=eid, msg=S(eid, m.SliceReady, executor_id=eid, boot_id="b0",
                                                       backend="sim", device=f"sim:{eid}",
                                                       memory_budget_bytes=10 * 2**30, link_bandwidth_bps=55e9,
                                                       max_batch=max_batch))


def kv(eid: str, at: float, used: int, free: int, rotations: int = 0) -> ev.ExecutorSaid:
    """A StepStats window that carries only KV figures (no weight bytes: the cost model learns nothing)."""
    return ev.ExecutorSaid(at=at, executor_id=eid, msg=S(eid, m.StepStats, step_s=0.01, tokens=0, prefill_tokens=0,
                                                       decode_tokens=0, batch=1, bytes_hbm=0, bytes_host=0,
                                                       model="m-a", kv_device_used=used, kv_device_free=free,
                                                       kv_host_used=0, kv_host_free=64, kv_rotations=rotations))


def long_submit(rid: str, at: float, n: int, slo: SLO = SLO()) -> ev.Submitted:
    msg = SubmitRequest(request_id=rid, model="m-a", prompt_token_ids=(1,) * n, max_tokens=8, slo=slo)
    return ev.Submitted(at=at, client=b"client-1", msg=msg, info=MODELS["m-a"])


def assigned_to(outs) -> list[tuple[str, str]]:
    return [(c.executor_id, c.msg.request_id) for c in outs if isinstance(getattr(c, "msg", None), m.AssignRequest)]


def two_slices_e0_serving() -> State:
    """e0 serves m-a with r1, r2 (each 2 prompt tokens: "a b c"); e1 idle."""
    st = State()
    outs = run(st, [ready("e0", 0.0), ready("e1", 0.0), submit("r1", 1.0), submit("r2", 1.0)])
    assert assigned_to(outs[2] + outs[3]) == [("e0", "r1"), ("e0", "r2")]
    return st


def test_without_kv_figures_a_serving_slice_takes_the_request():
    st = two_slices_e0_serving()
    assert assigned_to(run(st, [submit("r3", 2.0)])[0]) == [("e0", "r3")]
    assert st.executors["e0"].kv is None


def test_a_slice_with_kv_room_takes_the_request_as_before():
    st = two_slices_e0_serving()
    outs = run(st, [kv("e0", 1.5, used=10, free=100), submit("r3", 2.0)])
    assert assigned_to(outs[1]) == [("e0", "r3")]
    x = st.executors["e0"].kv
    assert x.blocks_per_token == 10 / 4  # 10 blocks held by 2 + 2 prompt tokens
    assert x.pending == 5  # r3's 2 prompt tokens, taken from the reported free count until the next report


def test_a_slice_without_kv_room_loses_to_one_with_room():
    st = two_slices_e0_serving()
    outs = run(st, [kv("e0", 1.5, used=10, free=0), submit("r3", 2.0)])
    # e0 would wait for r1 or r2 to end (8 tokens at the default TPOT) before r3 fits: e1 switches instead
    assert assigned_to(outs[1]) == [("e1", "r3")]


def test_a_slice_whose_whole_pool_cannot_hold_the_prompt_is_no_candidate():
    st = State()
    outs = run(st, [ready("e0", 0.0), submit("r1", 1.0), kv("e0", 1.2, used=5, free=45),  # 2 tokens, 5 blocks
                    long_submit("r2", 1.3, 40)])  # 100 blocks, the pool holds 50
    assert assigned_to(outs[3]) == [] and st.waiting() == 1
    outs = run(st, [ready("e1", 1.4)])
    assert assigned_to(outs[0]) == [("e1", "r2")]


def test_a_full_batch_slot_waits_for_kv_room_then_takes_the_request():
    st = State()
    outs = run(st, [small_ready("e0", 0.0, max_batch=2), submit("r1", 1.0), submit("r2", 1.0),
                    kv("e0", 1.2, used=10, free=0), long_submit("r3", 1.3, 40)])
    assert assigned_to(outs[4]) == []  # no slot: it waits
    outs = run(st, [completed("e0", "r1", 1, 1.4)])
    # r1's 5 blocks came back, r3 needs 40 * 2.5: the free slot does not take it
    assert assigned_to(outs[0]) == [] and st.waiting() == 1
    outs = run(st, [kv("e0", 1.5, used=5, free=200)])
    assert assigned_to(outs[0]) == [("e0", "r3")] and st.waiting() == 0


def test_admission_counts_the_wait_for_kv_room():
    slo = SLO(ttft_ms=1000.0, tpot_ms=200.0)
    st = State()
    outs = run(st, [ready("e0", 0.0), submit("r1", 1.0), kv("e0", 1.2, used=100, free=0),
                    long_submit("r2", 1.3, 1, slo)])
    rej = of(outs[3], RequestRejected)
    assert rej and rej[0].code == "slo_unattainable"  # 8 tokens × 200 ms before room, over 1.25 × 1 s
    st = State()
    outs = run(st, [ready("e0", 0.0), submit("r1", 1.0), kv("e0", 1.2, used=100, free=400),
                    long_submit("r2", 1.3, 1, slo)])
    assert not of(outs[3], RequestRejected) and assigned_to(outs[3]) == [("e0", "r2")]


def test_the_kv_view_survives_a_snapshot_and_counts_rotations():
    st = two_slices_e0_serving()
    run(st, [kv("e0", 1.5, used=10, free=0, rotations=3), kv("e0", 1.6, used=10, free=0, rotations=2)])
    back = core.check_indexes(decode_state(encode_state(st)))
    assert back.executors["e0"].kv == st.executors["e0"].kv and back.executors["e0"].kv.rotations == 5
