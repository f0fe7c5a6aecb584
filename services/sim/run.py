"""One simulation: a planned workload through each policy on its own copy of the cluster (pure:
the same inputs give the same result)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from c2cq.errors import ConfigError
from c2cq.loadgen.workload import PlannedRequest
from c2cq.schemas.catalog import ModelInfo
from c2cq.services.scheduler.state import Config
from c2cq.services.sim.baselines import LOAD_THEN_SERVE, TIME_SHARE, LoadPolicy
from c2cq.services.executor.rotation import KVPolicy
from c2cq.services.sim.engine import Engine, Link
from c2cq.services.sim.kv import KV_POLICIES, KVSetup
from c2cq.services.sim.metrics import Recorder, summarize
from c2cq.services.sim.policy_c2cq import C2cqPolicy
from c2cq.services.sim.profiles import Profile, SliceSpec

POLICIES = ("c2cq", "load-then-serve", "time-share")
DRAIN_S = 600.0  # after the last arrival, requests still in flight get this long before the run ends


@dataclass(frozen=True, slots=True)
class Scenario:
    plan: Sequence[PlannedRequest]
    specs: Sequence[SliceSpec]
    models: dict[str, ModelInfo]
    profile: Profile
    scheduler: Config = Config()
    kv_policy: str | None = None  # rotate | recompute | block: the KV model on (services/sim/kv.py); None: off


def kv_setup(sc: Scenario) -> KVSetup | None:
    """The scenario's KV model (the profile's [kv] figures and its policy), or None when off."""
    if sc.kv_policy is None:
        return None
    if sc.kv_policy not in KV_POLICIES:
        raise ConfigError(f"unknown KV policy {sc.kv_policy!r}; choose from {', '.join(KV_POLICIES)}")
    p = sc.profile
    return KVSetup(policy=KVPolicy(sc.kv_policy), block_tokens=p.kv_block_tokens, kv_dim_share=p.kv_dim_share,
                   host_bytes=p.kv_host_bytes, d2h_ratio=p.kv_d2h_ratio, max_blocks_per_step=p.kv_max_blocks_per_step)


def make_policy(name: str, sc: Scenario, engine: Engine, rec: Recorder, links: dict[str, Link],
                observe: Callable | None = None):
    specs = list(sc.specs)
    if name == "c2cq":
        return C2cqPolicy(specs, links, sc.models, engine, rec, cfg=sc.scheduler, observe=observe, prof=sc.profile,
                          kv=kv_setup(sc))
    if name == "load-then-serve":
        return LoadPolicy(LOAD_THEN_SERVE, specs, links, sc.models, engine, rec, sc.profile, sc.scheduler.max_wait_s)
    if name == "time-share":
        return LoadPolicy(TIME_SHARE, specs, links, sc.models, engine, rec, sc.profile, sc.scheduler.max_wait_s)
    raise ConfigError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")


def run_policy(name: str, sc: Scenario, observe: Callable | None = None,
               inspect: Callable | None = None) -> tuple[dict, Recorder, float]:
    """Simulate one policy: its summary (plus the simulator's own counters, all deterministic),
    the outcomes, and the wall-clock seconds it took (kept out of the summary). ``inspect`` is
    called with the policy object once the run has ended (a test reading its final state)."""
    engine = Engine()
    rec = Recorder(len(sc.plan), on_all_ended=engine.stop)
    links = {s.group: Link(s.group, s.link_bps) for s in sc.specs}
    policy = make_policy(name, sc, engine, rec, links, observe)
    policy.start()
    plan = list(sc.plan)

    def arrive(k: int) -> None:
        policy.submit(plan[k])
        if k + 1 < len(plan):
            engine.at(plan[k + 1].offset_s, arrive, k + 1)

    if plan:
        engine.at(plan[0].offset_s, arrive, 0)
    span = plan[-1].offset_s - plan[0].offset_s if plan else 0.0
    t0 = time.perf_counter()
    engine.run(until=(plan[-1].offset_s if plan else 0.0) + DRAIN_S)
    wall = time.perf_counter() - t0
    if inspect is not None:
        inspect(policy)
    out = summarize(rec, list(links.values()), span, engine.now)
    out["sim"] = {"events": engine.events, "virtual_s": round(engine.now, 6)}
    if name == "c2cq":
        out["sim"]["plan_steps"] = policy.plan_steps
        if sc.kv_policy is not None:
            tokens = sum(o.tokens for o in rec.out.values() if o.status == "finished")
            out["kv"] = policy.kv_totals() | {"policy": sc.kv_policy,
                                               "tokens_per_s": round(tokens / span, 3) if span > 0 else None}
    return out, rec, wall


def run_all(sc: Scenario, policies: Sequence[str] = POLICIES,
            progress: Callable[[str, float | None], None] | None = None) -> dict:
    """Every policy on the same scenario; ``progress(name, wall_s)`` hears each start (None) and end."""
    results = {}
    for name in policies:
        if progress is not None:
            progress(name, None)
        results[name], _, wall = run_policy(name, sc)
        if progress is not None:
            progress(name, wall)
    return results
