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
    st = State()
    run(st, [dev_ready("e0", "g/a"), submit("r1", 1.0, slo=SLO(tpot_ms=2.0), max_tokens=1000)])
    outs = run(st, [stats("e0", 1.1, step_s=W / 55e9, alpha=0.0), ev.Ticked(at=1.2)])
    rec = [c.event for c in outs[1] if isinstance(c, ToLog)][0]
    plan = of(outs[1], m.ApplyPlan)[0]
    assert rec.tpot_s > rec.tpot_target_s and rec.p > 0 and plan.alpha == rec.alpha > 0
    assert rec.kernel == controller.kernel_for(rec.alpha) == "hybrid_gemm"
    # α at its limit is capped by the memory budget, not by the error
    assert rec.alpha <= st.cfg.weight_share * 10 * 2**30 / W


def test_controller_keeps_a_shared_link_under_capacity():
    st = State()
    evs = [dev_ready("e0", "gpu0/mig0"), dev_ready("e1", "gpu0/mig1"),
           submit("r1", 1.0, slo=SLO(tpot_ms=12.5), max_tokens=1000),
           submit("r2", 1.0, model="m-b", slo=SLO(tpot_ms=12.5), max_tokens=1000),
           stats("e0", 1.1, step_s=W / 20e9, alpha=0.0), stats("e1", 1.1, step_s=W / 20e9, alpha=0.0, model="m-b")]
    run(st, evs)
    # TPOT far under target: each alone would stream everything (α → 0), and fit the link;
    # together they would not
    st.executors["e0"].est.step_s = st.executors["e1"].est.step_s = 0.001  # far under target
    outs = run(st, [ev.Ticked(at=2.0)])
    recs = {c.event.executor_id: c.event for c in outs[0] if isinstance(c, ToLog)}
    cap = max(st.executors[e].est.link_bps for e in ("e0", "e1")) * st.cfg.link_headroom
    demand = lambda a: sum((1 - a[e]) * st.models[st.executors[e].model][0] / recs[e].tpot_target_s for e in recs)  # noqa: E731
    assert demand({e: 0.0 for e in recs}) > cap  # the premise: streaming everything would overload it
    assert demand({e: r.alpha for e, r in recs.items()}) <= cap * 1.0001
    assert all(r.link_scale < 1 for r in recs.values())


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
