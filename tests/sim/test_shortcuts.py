"""The sim executor's steady steps (services/sim/shortcuts.py) against SimBackend.step for every
step: the same events reach the scheduler core at the same times, and the same figures come out,
on slices that stream models larger than they hold over one shared PCIe link while the others
come and go on it (each steady step's duration follows the share it starts with)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from c2cq.loadgen.workload import PlannedRequest
from c2cq.services.catalog.sim_models import generate
from c2cq.services.sim.executor import SimExecutor
from c2cq.services.sim.profiles import build_cluster, load_profile, parse_layout
from c2cq.services.sim.run import Scenario

from .test_sim import small_scenario, with_and_without


def shared_link() -> Scenario:
    """Three slices of one H100 (3g,2g,2g: one 50.9 GB/s link); three 18.2 GB models, more than
    a 2g slice holds (α capped below 1: every step streams the rest), requests of each arriving
    and ending at staggered times."""
    prof = load_profile()
    specs = build_cluster(prof, "h100-sxm", parse_layout("3g,2g,2g", prof), 3)
    big = sorted(generate(1000), key=lambda m: -m.bytes)[:3]
    plan = [PlannedRequest(index=k, offset_s=0.5 + 0.7 * k + 0.13 * (k % 3), model=big[k % 3].name,
                           prompt_tokens=50 + 30 * (k % 4), prompt_ids=None, max_tokens=20 + 9 * (k % 5),
                           slo_class="batch", ttft_ms=60_000.0, tpot_ms=5_000.0) for k in range(24)]
    return Scenario(plan=plan, specs=specs, models={m.name: m for m in big}, profile=prof)


@pytest.mark.parametrize("runs", [True, False])
def test_steady_streaming_steps_on_a_shared_link_change_nothing_the_scheduler_sees(runs, monkeypatch):
    monkeypatch.setattr(SimExecutor, "runs", runs)
    durations: dict[str, set[float]] = defaultdict(set)
    start = SimExecutor._steady_start

    def spy(self, st, uses_link):
        start(self, st, uses_link)
        if uses_link:
            durations[self.id].add(st.busy_s)

    monkeypatch.setattr(SimExecutor, "_steady_start", spy)
    sc = shared_link()
    (fast, fast_log), (slow, slow_log) = with_and_without(sc, monkeypatch, "steady")
    # the shortcut was taken, by streaming steps whose link share changed while they went on
    assert sum(len(d) for d in durations.values()) >= 3 and max(len(d) for d in durations.values()) >= 2, durations
    assert fast["finished"] == len(sc.plan)
    assert fast == slow  # the simulator's own event count too: a steady step keeps its event
    assert fast_log == slow_log


@pytest.mark.parametrize("gpu", ["gh200-96", "h100-sxm"])
def test_steady_steps_change_nothing_on_a_mixed_cluster(gpu, monkeypatch):
    """Six slices, forty models from 0.35 to 18 GB: resident and streaming steady steps, runs."""
    (fast, fast_log), (slow, slow_log) = with_and_without(small_scenario(rate=8.0, seconds=30.0, seed=4, gpu=gpu),
                                                          monkeypatch, "steady")
    assert fast == slow
    assert fast_log == slow_log
