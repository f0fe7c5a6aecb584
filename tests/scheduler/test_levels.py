"""Levels 1–3 and admission: cost model from StepStats, TTFT placement, PID plans, link sharing."""

from __future__ import annotations

import pytest

from c2cq.schemas import executor as m
from c2cq.schemas.client import SLO, RequestRejected
from c2cq.services.scheduler import controller, core, costmodel
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.state import Config, State, ToLog

from .history import MODELS, S, completed, of, ready, submit

W = MODELS["m-a"].bytes
P = MODELS["m-a"].parameters


def run(st, events):
    return [core.apply(st, e)[1] for e in events]


def dev_ready(eid: str, device: str, at: float = 0.0, link: float = 55e9,
              group: str | None = None) -> ev.ExecutorSaid:
    e = ready(eid, at)
    return ev.ExecutorSaid(at=at, executor_id=eid, msg=S(eid, m.SliceReady, executor_id=eid, boot_id="b0",
                                                       backend="sim", device=device,
                                                       memory_budget_bytes=10 * 2**30, link_bandwidth_bps=link,
                                                       max_batch=e.msg.max_batch, link_group=group))


def stats(eid: str, at: float, *, step_s: float, alpha: float, steps: int = 10, model: str = "m-a",
          decode: int = 1) -> ev.ExecutorSaid:
    hbm = int(alpha * W) * steps
    return ev.ExecutorSaid(at=at, executor_id=eid, msg=S(eid, m.StepStats, step_s=step_s, tokens=decode * steps,
                                                       prefill_tokens=0, decode_tokens=decode * steps, batch=decode,
                                                       bytes_hbm=hbm, bytes_host=W * steps - hbm, model=model))


def test_cost_model_learns_link_bandwidth_from_step_stats():
    e = costmodel.Estimates(link_bps=55e9, hbm_bps=3.35e12 / 7, flops=989e12 / 7)
    for _ in range(30):  # streaming at α = 0, steps take as long as a 20 GB/s link needs
        costmodel.observe(e, step_s=W / 20e9, tokens=1, decode_tokens=1, bytes_hbm=0, bytes_host=W, model_bytes=W,
                          params=P)
    assert e.link_bps == pytest.approx(20e9, rel=1e-3)
    assert e.link_used_bps == pytest.approx(20e9, rel=1e-3) and e.step_s == pytest.approx(W / 20e9)


def test_placement_prefers_the_executor_holding_the_model():
    st = State()
    run(st, [dev_ready("e0", "g0/a"), dev_ready("e1", "g1/a"), submit("r1", 1.0), completed("e0", "r1", 1, 1.5),
             ev.ExecutorSaid(at=1.6, executor_id="e0", msg=S("e0", m.ModelResident, model="m-a", alpha=0.9,
                                                            bytes_resident=int(0.9 * W)))])
    outs = run(st, [submit("r2", 2.0)])
    assert outs[0][-1].executor_id == "e0"  # α = 0.9 there beats streaming all of it on e1


def test_placement_avoids_a_busy_shared_link():
    st = State()
    run(st, [dev_ready("e0", "gpu0/mig0"), dev_ready("e1", "gpu0/mig1"), dev_ready("e2", "gpu1/mig0"),
             submit("r1", 1.0, model="m-b"), stats("e0", 1.2, step_s=W / 50e9, alpha=0.0, model="m-b")])
    assert st.executors["e0"].est.link_used_bps > 40e9
    outs = run(st, [submit("r2", 2.0)])
    assert outs[0][-1].executor_id == "e2"  # e1 shares gpu0's link with the streaming e0


def test_announced_link_groups_say_which_slices_share_a_link():
    """MIG slices are named by UUID: only SliceReady.link_group (the parent GPU) tells that two
    of them share a link. The slice on the other GPU is chosen over the idle sibling of a
    streaming slice."""
    st = State()
    run(st, [dev_ready("e0", "MIG-0a", group="GPU-0"), dev_ready("e1", "MIG-0b", group="GPU-0"),
             dev_ready("e2", "MIG-1a", group="GPU-1"),
             submit("r1", 1.0, model="m-b"), stats("e0", 1.2, step_s=W / 50e9, alpha=0.0, model="m-b")])
    assert st.groups == {"GPU-0": ["e0", "e1"], "GPU-1": ["e2"]}
    assert st.links["GPU-0"].used_bps == st.executors["e0"].est.link_used_bps > 40e9
    outs = run(st, [submit("r2", 2.0)])
    assert outs[0][-1].executor_id == "e2"
    # without groups each UUID-named slice has a link of its own: e1 looks as good as e2 (lower id wins)
    st2 = State()
    run(st2, [dev_ready("e0", "MIG-0a"), dev_ready("e1", "MIG-0b"), dev_ready("e2", "MIG-1a"),
              submit("r1", 1.0, model="m-b"), stats("e0", 1.2, step_s=W / 50e9, alpha=0.0, model="m-b")])
    assert run(st2, [submit("r2", 2.0)])[0][-1].executor_id == "e1"


def test_admission_rejects_what_cannot_meet_its_slo_and_full_queues():
    cfg = Config(queue_limits={"interactive": 1, "standard": 1, "batch": 1})
    st = State(cfg=cfg)
    outs = run(st, [dev_ready("e0", "g/a"), submit("r1", 1.0, slo=SLO(ttft_ms=0.001))])
    no = of(outs[1], RequestRejected)[0]
    assert no.code == "slo_unattainable" and "slo.ttft_ms" in no.message and "r1" not in st.requests
    outs = run(st, [submit("r2", 1.0, model="m-a"), submit("r3", 1.0, model="m-b"), submit("r4", 1.0, model="m-c")])
    assert of(outs[0], RequestRejected) == [] and of(outs[1], RequestRejected) == []  # r2 runs, r3 waits
    assert of(outs[2], RequestRejected)[0].code == "queue_full"


def test_admission_with_no_executor_up_says_so():
    st = State()
    no = of(run(st, [submit("r1", 1.0, slo=SLO(ttft_ms=500.0))])[0], RequestRejected)[0]
    assert no.code == "no_executor" and "no executor is up" in no.message


def test_controller_raises_alpha_when_tpot_misses_and_logs_its_terms():
    """With residency not kept for its own sake, α starts at the roofline's floor and a measured
    TPOT miss raises it (P > 0), within what memory allows."""
    st = State(cfg=Config(keep_resident=False))
    run(st, [dev_ready("e0", "g/a"), submit("r1", 1.0, slo=SLO(tpot_ms=2.0), max_tokens=1000)])
    floor = controller._alpha_floor(st, st.executors["e0"], W, 2.0 * st.cfg.slo_margin / 1e3, 1.0)
    outs = run(st, [stats("e0", 1.1, step_s=W / 55e9, alpha=0.0), ev.Ticked(at=1.6)])
    rec = [c.event for c in outs[1] if isinstance(c, ToLog)][0]
    plan = of(outs[1], m.ApplyPlan)[0]
    assert rec.tpot_s > rec.tpot_target_s and rec.p > 0 and plan.alpha == rec.alpha > floor
    assert rec.kernel == controller.kernel_for(rec.alpha) != "stream"
    # α at its limit is capped by the memory budget, not by the error
    assert rec.alpha <= st.cfg.weight_share * 10 * 2**30 / W


def test_controller_keeps_the_residency_memory_allows_when_tpot_has_slack():
    """TPOT far under target does not drive α to 0 (the old PID did: every step then streamed the
    whole model over the shared link); α stays at the memory ceiling."""
    st = State()
    run(st, [dev_ready("e0", "g/a"), submit("r1", 1.0, max_tokens=1000)])
    st.executors["e0"].est.step_s = 1e-4
    outs = run(st, [stats("e0", 1.1, step_s=1e-4, alpha=0.5), ev.Ticked(at=1.6), ev.Ticked(at=2.2)])
    recs = [c.event for o in outs for c in o if isinstance(c, ToLog)]
    a_max = min(1.0, st.cfg.weight_share * 10 * 2**30 / W)
    assert recs and all(r.alpha == a_max for r in recs) and st.executors["e0"].plan.alpha == a_max
    assert len(recs) == 2 and all(r.p < 0 for r in recs)  # the PID saw the slack; the ceiling held α


def test_alpha_is_observed_from_step_stats():
    """The executor's progressive residency reaches the core through StepStats' byte counts."""
    st = State()
    run(st, [dev_ready("e0", "g/a"), submit("r1", 1.0, max_tokens=1000)])
    assert st.executors["e0"].alpha == 0.0
    run(st, [stats("e0", 1.1, step_s=W / 55e9, alpha=0.6)])
    assert st.executors["e0"].alpha == pytest.approx(0.6, abs=1e-6)
    run(st, [stats("e0", 1.2, step_s=W / 55e9, alpha=0.9, model="m-b")])  # another model's window: ignored
    assert st.executors["e0"].alpha == pytest.approx(0.6, abs=1e-6)


def test_controller_keeps_a_shared_link_under_capacity():
    st = State(cfg=Config(keep_resident=False))
    evs = [dev_ready("e0", "gpu0/mig0"), dev_ready("e1", "gpu0/mig1"),
           submit("r1", 1.0, slo=SLO(tpot_ms=12.5), max_tokens=1000),
           submit("r2", 1.0, model="m-b", slo=SLO(tpot_ms=12.5), max_tokens=1000),
           stats("e0", 1.1, step_s=W / 20e9, alpha=0.0), stats("e1", 1.1, step_s=W / 20e9, alpha=0.0, model="m-b")]
    run(st, evs)
    # TPOT far under target: each alone could stream everything (α → 0), and fit the link;
    # together they would not: the floor (each one's fair share of the link) or the fit keeps α up
    st.executors["e0"].est.step_s = st.executors["e1"].est.step_s = 0.001  # far under target
    outs = run(st, [ev.Ticked(at=2.0)])
    recs = {c.event.executor_id: c.event for c in outs[0] if isinstance(c, ToLog)}
    cap = max(st.executors[e].est.link_bps for e in ("e0", "e1")) * st.cfg.link_headroom
    demand = lambda a: sum((1 - a[e]) * st.models[st.executors[e].model][0] / recs[e].tpot_target_s for e in recs)  # noqa: E731
    assert demand({e: 0.0 for e in recs}) > cap  # the premise: streaming everything would overload it
    assert demand({e: r.alpha for e, r in recs.items()}) <= cap * 1.0001
    assert all(r.alpha > 0 for r in recs.values())


def test_kernel_selection():
    assert [controller.kernel_for(a) for a in (0.0, 0.3, 1.0)] == ["stream", "hybrid_gemm", "hbm_gemm"]


def test_choose_executor_agrees_with_the_estimate_of_every_candidate():
    """The placement loop inlines the estimate: it must pick what ``estimate`` ranks first, with the same figure."""
    from c2cq.services.scheduler import placement

    st = State()
    run(st, [dev_ready("e0", "MIG-0a", group="GPU-0"), dev_ready("e1", "MIG-0b", group="GPU-0"),
             dev_ready("e2", "MIG-1a", group="GPU-1", link=30e9), dev_ready("e3", "MIG-1b", group="GPU-1"),
             submit("r1", 1.0, model="m-b"), stats("e0", 1.2, step_s=W / 50e9, alpha=0.0, model="m-b"),
             submit("r2", 1.3, model="m-a"), stats("e1", 1.4, step_s=W / 20e9, alpha=0.3),
             ev.ExecutorSaid(at=1.5, executor_id="e1", msg=S("e1", m.ModelResident, model="m-a", alpha=0.3,
                                                            bytes_resident=int(0.3 * W), switched_s=0.05))])
    for model in ("m-a", "m-b", "m-c"):
        req = core.RequestView(submit=submit("q", 2.0, model=model).msg, klass="batch", client=b"c",
                               info=MODELS[model], accepted_at=2.0)
        cands = placement.candidates(st, model)
        assert len(cands) >= 2
        want = min((placement.estimate(st, x, req), x.executor_id) for x in cands)
        x, t = placement.choose_executor(st, req)
        assert (t, x.executor_id) == want


# ---- the chunk follows the roofline; plans are per batch; admission on a calibrated estimate ----

def _big_submit(rid: str, at: float, *, tokens: int, slo: SLO) -> ev.Submitted:
    from c2cq.schemas.client import SubmitRequest
    from c2cq.services.catalog.sim_models import sim_model

    info = sim_model("big", 5120, 40, 13824, 32000)  # ~13 B parameters, ~26 GB: 0.5 s a pass at 55 GB/s
    msg = SubmitRequest(request_id=rid, model="big", prompt="abcd" * tokens, max_tokens=8, slo=slo)
    return ev.Submitted(at=at, client=b"client-1", msg=msg, info=info)


def test_the_chunk_grows_to_the_roofline_when_ttft_runs_over():
    """With α = 0 each chunk re-reads the model over the link: a smaller chunk means more passes and
    a longer prefill. TTFT far over target must not shrink the chunk (the old PID did, to 64): the
    plan keeps at least the tokens whose compute fills one pass over the streamed weights."""
    st = State(cfg=Config(keep_resident=False))
    run(st, [dev_ready("e0", "g/a"), submit("r1", 1.0, slo=SLO(ttft_ms=1_000.0, tpot_ms=100.0), max_tokens=1000)])
    x = st.executors["e0"]
    x.ttft_s = 30.0  # thirty times the target
    outs = run(st, [stats("e0", 1.1, step_s=W / 55e9, alpha=0.0), ev.Ticked(at=1.6), ev.Ticked(at=2.2)])
    recs = [c.event for o in outs for c in o if isinstance(c, ToLog)]
    pass_tokens = (1.0 - x.alpha) * W / x.est.link_bps * x.est.flops / (2.0 * P)
    assert recs and all(r.ttft_s > r.ttft_target_s for r in recs)
    assert all(r.chunk_tokens >= min(pass_tokens, st.cfg.max_chunk_tokens) - 1 for r in recs)
    assert all(r.chunk_tokens >= st.cfg.base_chunk_tokens for r in recs)  # never shrunk below where it began
    assert all((r.chunk_p, r.chunk_i, r.chunk_d) == (0.0, 0.0, 0.0) for r in recs)  # no TTFT PID on the chunk


def test_a_batch_from_idle_gets_a_fresh_plan_and_its_estimate_uses_it():
    """The chunk a previous batch left (here a tiny one) is neither sent with the next switch nor
    used to price it: the switch's plan carries the roofline chunk for the new model."""
    from c2cq.services.scheduler import placement

    st = State()
    run(st, [dev_ready("e0", "g/a")])
    x = st.executors["e0"]
    x.chunk_tokens = x.plan.chunk_tokens = 16  # stale, from a batch long gone
    sub = _big_submit("r1", 1.0, tokens=4_000, slo=SLO(ttft_ms=10_000.0, tpot_ms=500.0))
    req = core.RequestView(submit=sub.msg, klass="standard", client=b"c", info=sub.info, accepted_at=1.0)
    est = placement.estimate(st, x, req)
    _, t = placement.choose_executor(st, req)
    assert t == est < 10.0
    outs = run(st, [sub])
    plan = of(outs[0], m.ApplyPlan)[0]
    assert plan.chunk_tokens > 1_000 and x.chunk_tokens == plan.chunk_tokens
    assert [type(c.msg).__name__ for c in outs[0] if c.__class__.__name__ == "ToExecutor"] == ["AssignRequest",
                                                                                             "ApplyPlan"]


def test_admission_accepts_a_10s_request_an_idle_slice_can_serve():
    """Recorded history: an idle slice whose last plan left a 16-token chunk; a 4,000-token prompt
    for a 26 GB model with a 10 s TTFT target. Priced at the stale chunk that is 250 passes over
    the link (over 100 s, rejected as slo_unattainable); priced as the slice will run it, about two."""
    st = State()
    run(st, [dev_ready("e0", "g/a")])
    st.executors["e0"].chunk_tokens = st.executors["e0"].plan.chunk_tokens = 16
    outs = run(st, [_big_submit("r1", 1.0, tokens=4_000, slo=SLO(ttft_ms=10_000.0, tpot_ms=500.0))])
    assert of(outs[0], RequestRejected) == [] and st.requests["r1"].executor == "e0"


def test_admission_rejects_only_past_the_margin():
    """An estimate a little over target is accepted (a rejection is a certain miss); far over it is not."""
    st = State()
    run(st, [dev_ready("e0", "g/a")])
    sub = _big_submit("q", 1.0, tokens=4_000, slo=SLO(ttft_ms=10_000.0))
    req = core.RequestView(submit=sub.msg, klass="standard", client=b"c", info=sub.info, accepted_at=1.0)
    _, t = core.choose_executor(st, req)
    at = lambda ms: _big_submit(f"r{ms}", 1.0, tokens=4_000, slo=SLO(ttft_ms=ms))  # noqa: E731
    outs = run(st, [at(t * 1e3 / 1.1)])
    assert of(outs[0], RequestRejected) == []
    st2 = State()
    run(st2, [dev_ready("e0", "g/a")])
    no = of(run(st2, [at(t * 1e3 / (st.cfg.admit_margin * 1.1))])[0], RequestRejected)[0]
    assert no.code == "slo_unattainable"


def test_replaying_the_new_policy_gives_the_same_state_and_commands():
    evs = [dev_ready("e0", "gpu0/a"), dev_ready("e1", "gpu0/b"),
           _big_submit("r1", 1.0, tokens=3_000, slo=SLO(ttft_ms=10_000.0, tpot_ms=500.0)),
           submit("r2", 1.1, slo=SLO(ttft_ms=1_000.0, tpot_ms=100.0), max_tokens=1000),
           stats("e1", 1.3, step_s=W / 40e9, alpha=0.4), ev.Ticked(at=1.7), ev.Ticked(at=2.3),
           completed("e1", "r2", 1000, 2.5), ev.Ticked(at=2.9)]
    a, b = State(), State()
    outs_a, outs_b = run(a, evs), run(b, evs)
    from c2cq.services.scheduler.state import encode_state
    assert outs_a == outs_b and encode_state(a) == encode_state(b)
    assert any(isinstance(c, ToLog) for o in outs_a for c in o)


def test_a_switch_evicts_the_least_recently_used_model():
    """Two slices, requests one at a time: a model no slice holds goes to the slice whose model was used
    least recently, not always to the same slice (the lowest id), which would evict a hot model."""
    st = State()
    run(st, [ready("e0", 0.0), ready("e1", 0.0)])
    placed = []
    for i, (model, at) in enumerate([("m-b", 1.0), ("m-a", 2.0), ("m-c", 3.0), ("m-c", 4.0), ("m-b", 5.0)]):
        rid = f"r{i}"
        (assign,) = [c for c in core.apply(st, submit(rid, at, model=model))[1] if isinstance(c.msg, m.AssignRequest)]
        placed.append(assign.executor_id)
        core.apply(st, completed(assign.executor_id, rid, 1, at + 0.5))
    # m-b on e0; m-a on the unused e1; m-c evicts m-b (e0, older than m-a); m-c again stays on e0;
    # m-b then evicts m-a (e1, used at 2.5) rather than the m-c just used on e0
    assert placed == ["e0", "e1", "e0", "e0", "e1"]
