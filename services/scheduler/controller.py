"""Levels 2 and 3 (pure): a per-executor plan — α, prefill chunk, kernel — re-planned by PID control.

α follows measured TPOT against the tightest TPOT target of the executor's requests: a slow
step raises the resident share, slack lowers it and frees HBM. The chunk size follows measured
TTFT against the TTFT target, capped so one chunk's compute stays inside the TPOT target. Then
the slices of one link are made to fit it: when their summed streaming demand exceeds the
link's measured capacity, each one's streamed share is scaled down. The kernel follows from α.
"""

from __future__ import annotations

import msgspec

from c2cq.schemas.executor import ApplyPlan
from c2cq.services.scheduler.events import PlanStepped
from c2cq.services.scheduler.pid import PidGains, pid_step
from c2cq.services.scheduler.state import ExecutorView, State, ToExecutor, ToLog

ALPHA_GAINS = PidGains(kp=0.25, ki=0.5, kd=0.02, out_min=0.0, out_max=1.0)
CHUNK_GAINS = PidGains(kp=0.5, ki=0.5, kd=0.0, out_min=-1.0, out_max=1.0)
MIN_CHUNK = 16


def kernel_for(alpha: float) -> str:
    """Level 3: HybridGEMM between the ends, the plain HBM GEMM at α = 1, pure streaming at α = 0."""
    if alpha >= 1.0:
        return "hbm_gemm"
    if alpha <= 0.0:
        return "stream"
    return "hybrid_gemm"


def _targets(st: State, x: ExecutorView) -> tuple[float, float]:
    """The tightest (TTFT, TPOT) targets in seconds among the executor's requests (config defaults if none)."""
    cfg = st.cfg
    ttft, tpot = cfg.default_ttft_ms, cfg.default_tpot_ms
    for rid in x.active:
        r = st.requests.get(rid)
        if r is not None:
            ttft = min(ttft, r.submit.slo.ttft_ms or ttft)
            tpot = min(tpot, r.submit.slo.tpot_ms or tpot)
    return ttft * cfg.slo_margin / 1e3, tpot * cfg.slo_margin / 1e3


def _alpha_max(st: State, x: ExecutorView, model_bytes: int) -> float:
    if model_bytes <= 0:
        return 1.0
    return max(0.0, min(1.0, st.cfg.weight_share * x.memory_budget_bytes / model_bytes))


def plan(st: State, now: float) -> list:
    """Re-plan every executor that serves and was measured since its last plan; returns commands."""
    cfg = st.cfg
    stepped: dict[str, PlanStepped] = {}
    for x in st.executors.values():
        p = x.plan
        if x.state != "ready" or not x.active or x.model is None or x.est.step_s <= 0 or now - p.last_at < cfg.plan_interval_s:
            continue
        size = st.models.get(x.model)
        if size is None:
            continue
        model_bytes, params = size
        ttft_t, tpot_t = _targets(st, x)
        a_max = _alpha_max(st, x, model_bytes)
        ga = msgspec.structs.replace(ALPHA_GAINS, out_max=a_max)
        a = pid_step(ga, p.alpha_pid, 1.0, x.est.step_s / tpot_t, now)
        c = pid_step(CHUNK_GAINS, p.chunk_pid, 1.0, x.ttft_s / ttft_t if x.ttft_s > 0 else 1.0, now)
        cap = max(MIN_CHUNK, int(tpot_t * x.est.flops / (2.0 * max(1, params))))
        chunk = int(min(max(MIN_CHUNK, round(cfg.base_chunk_tokens * 2.0 ** (3.0 * c.out))), cap))
        p.last_at = now
        stepped[x.executor_id] = PlanStepped(
            at=now, executor_id=x.executor_id, model=x.model, alpha=a.out, chunk_tokens=chunk, kernel=kernel_for(a.out),
            tpot_s=x.est.step_s, tpot_target_s=tpot_t, ttft_s=x.ttft_s, ttft_target_s=ttft_t,
            p=a.p, i=a.i, d=a.d, chunk_p=c.p, chunk_i=c.i, chunk_d=c.d, link_scale=1.0)
    _fit_links(st, stepped)
    out: list = []
    for eid, s in stepped.items():
        x = st.executors[eid]
        changed = abs(s.alpha - x.plan.alpha) >= cfg.alpha_step_min or s.chunk_tokens != x.plan.chunk_tokens
        x.plan.alpha, x.plan.chunk_tokens, x.plan.kernel = s.alpha, s.chunk_tokens, s.kernel
        x.chunk_tokens = s.chunk_tokens
        out.append(ToLog(s))
        if changed:
            out.append(ToExecutor(eid, ApplyPlan(alpha=s.alpha, chunk_tokens=s.chunk_tokens)))
    return out


def _fit_links(st: State, stepped: dict[str, PlanStepped]) -> None:
    """Keep each shared link's summed streaming demand under its measured capacity (× headroom)."""
    for group, members in st.groups.items():
        xs = [st.executors[e] for e in members if e in st.executors and st.executors[e].state == "ready"
              and st.executors[e].active and st.executors[e].model in st.models]
        if not xs:
            continue
        cap = max(x.est.link_bps for x in xs) * st.cfg.link_headroom
        demand = {}
        for x in xs:
            alpha = stepped[x.executor_id].alpha if x.executor_id in stepped else x.plan.alpha
            _, tpot_t = _targets(st, x)
            demand[x.executor_id] = (1.0 - alpha) * st.models[x.model][0] / tpot_t
        total = sum(demand.values())
        if total <= cap or total <= 0:
            continue
        f = cap / total
        for eid, s in list(stepped.items()):
            if eid in demand:
                x = st.executors[eid]
                alpha = min(_alpha_max(st, x, st.models[x.model][0]), 1.0 - f * (1.0 - s.alpha))
                stepped[eid] = msgspec.structs.replace(s, alpha=alpha, kernel=kernel_for(alpha), link_scale=f)
