"""On a PCIe host (the H100 profile: three slices share one 50.9 GB/s link) a model under a
steady stream ends up wholly resident (α = 1) on the slice that serves it, while cold models
come and go on the others; a stream of it heavier than one slice can prefill makes a second
slice take it, wholly resident too, and a lighter one leaves it on one; modelled (virtual) time."""

from __future__ import annotations

from c2cq.loadgen.workload import PlannedRequest
from c2cq.services.catalog.sim_models import generate
from c2cq.services.sim.profiles import build_cluster, load_profile, parse_layout
from c2cq.services.sim.run import Scenario, run_policy

HOT = "sim-005"  # 8.8 GB: one pass over a third of the link takes ~0.5 s, far over a 100 ms TPOT


def steady_stream(seconds: float = 60.0) -> Scenario:
    prof = load_profile()
    specs = build_cluster(prof, "h100-sxm", parse_layout("3g,2g,2g", prof), 3)
    models = {m.name: m for m in generate(7)}
    cold = [n for n in models if n != HOT]
    plan, t = [], 1.0
    while t < seconds:
        k = len(plan)
        name = cold[(k // 5) % len(cold)] if k % 5 == 4 else HOT  # one request in five is cold
        plan.append(PlannedRequest(index=k, offset_s=t, model=name, prompt_tokens=400, prompt_ids=None,
                                   max_tokens=32, slo_class="interactive", ttft_ms=5_000.0, tpot_ms=100.0))
        t += 0.25
    return Scenario(plan=plan, specs=specs, models=models, profile=prof)


def test_a_hot_model_under_a_steady_stream_ends_up_resident_on_pcie():
    seen: dict = {}

    def inspect(policy) -> None:
        seen.update(core={e: (x.model, x.alpha) for e, x in policy.state.executors.items()},
                    sim={e: (x.queue.model, x.backend.alpha()) for e, x in policy.executors.items()})

    out, rec, _ = run_policy("c2cq", steady_stream(), inspect=inspect)
    hot = [e for e, (model, _) in seen["core"].items() if model == HOT]
    assert hot, seen
    assert all(seen["core"][e][1] == 1.0 for e in hot), seen  # the scheduler's view, from StepStats
    assert all(seen["sim"][e] == (HOT, 1.0) for e in hot), seen  # and the slice's
    # and it got there early: the hot model's requests met TPOT once the first few had passed
    late = [o for o in rec.out.values() if o.req.model == HOT and o.req.offset_s > 20.0]
    assert late and all(o.status == "finished" for o in late)
    tpot = [(o.end_at - o.first_token_at) / (o.tokens - 1) for o in late]
    assert max(tpot) <= 0.1, max(tpot)


def hot_after_warm_up(gap_s: float) -> Scenario:
    """20 s of a light mix (the hot model and two cold ones, one request a second each: a slice
    each), then 20 s of the hot model's 4,000-token prompts, one every ``gap_s``."""
    prof = load_profile()
    specs = build_cluster(prof, "h100-sxm", parse_layout("3g,2g,2g", prof), 3)
    models = {m.name: m for m in generate(7)}
    plan: list[PlannedRequest] = []

    def add(t: float, model: str, prompt: int) -> None:
        plan.append(PlannedRequest(index=len(plan), offset_s=t, model=model, prompt_tokens=prompt, prompt_ids=None,
                                   max_tokens=64, slo_class="interactive", ttft_ms=1_000.0, tpot_ms=100.0))

    for k in range(1, 20):
        add(float(k), HOT, 500)
        add(k + 0.5, ("sim-000", "sim-001")[k % 2], 500)
    for k in range(int(20.0 / gap_s)):
        add(20.0 + k * gap_s, HOT, 4000)
    return Scenario(plan=plan, specs=specs, models=models, profile=prof)


def hot_slices(sc: Scenario) -> tuple[list[str], list]:
    """The slices that hold the hot model wholly resident at the end (as the slices and the scheduler
    both see it), and the outcomes of the hot stream's requests."""
    seen: dict = {}

    def inspect(policy) -> None:
        seen.update(core={e: (x.model, x.alpha) for e, x in policy.state.executors.items()},
                    sim={e: (x.queue.model, x.backend.alpha()) for e, x in policy.executors.items()})

    _, rec, _ = run_policy("c2cq", sc, inspect=inspect)
    held = [e for e, s in seen["sim"].items() if s == (HOT, 1.0)]
    assert held == [e for e, s in seen["core"].items() if s == (HOT, 1.0)], seen
    return held, [o for o in rec.out.values() if o.req.offset_s >= 20.0]


def test_a_hot_model_one_slice_cannot_keep_up_with_is_replicated_and_resident_on_pcie():
    """80,000 prompt tokens a second of an 8.8 GB model: more than one H100 MIG slice prefills,
    far less than one could hold in its batch: a second slice takes the model, wholly resident."""
    held, stream = hot_slices(hot_after_warm_up(0.05))
    assert len(held) >= 2, held
    assert all(o.status == "finished" and o.first_token_at - o.req.offset_s <= 1.0 for o in stream)


def test_a_hot_model_one_slice_keeps_up_with_stays_on_it():
    held, stream = hot_slices(hot_after_warm_up(0.1))
    assert len(held) == 1, held
    assert all(o.status == "finished" and o.first_token_at - o.req.offset_s <= 1.0 for o in stream)
