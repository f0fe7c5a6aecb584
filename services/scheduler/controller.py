"""Levels 2 and 3 (pure): a per-executor plan — α, prefill chunk, kernel — re-planned by PID control.

α is the share of the model held in HBM. More α is never slower (a step reads less over the
shared link); what it costs is HBM that KV cache could use, and link time while the residency
copy runs. So α has a floor and a ceiling: the floor is the share the roofline says a decode step
needs to meet the tightest TPOT target at the link share this slice can count on (its link's
capacity split over the members that stream), the ceiling is what memory allows
(``weight_share`` of the slice's HBM; the rest is KV). A PID on measured TPOT against its target
moves α between the two: a miss raises it (the floor came from estimates; the measurement
corrects them), slack lets it settle back towards the floor *plus* what memory leaves idle —
residency that memory allows is kept (``Config.keep_resident``), since an idle byte of HBM buys
nothing. A switch starts the copy at once (the plan sent with the switch asks for the ceiling):
measured in the simulator, holding it back until the first token was out lost more on the
later steps, which kept streaming, than the first prefill gained.

The chunk follows the roofline, not TTFT: with α < 1 every chunk re-reads the streamed share of
the weights, so the chunk is the largest whose step stays within max(one pass over the weights,
the TPOT budget of co-running decodes) — see ``costmodel.roofline_chunk``. (A PID that shrank the
chunk when TTFT ran over target had the wrong sign: smaller chunks mean more passes.)

Then the slices of one link are made to fit it: when their summed streaming demand exceeds the
link's measured capacity, each one's streamed share is scaled down. The kernel follows from α.
A plan is made for the batch it serves: when an executor takes work from idle (or switches
model) it gets a fresh plan for that model (``start``), never the last batch's.
"""

from __future__ import annotations

import msgspec

from c2cq.schemas.executor import ApplyPlan
from c2cq.services.scheduler.events import PlanStepped
from c2cq.services.scheduler import costmodel
from c2cq.services.scheduler.placement import link_left
from c2cq.services.scheduler.pid import PidGains, PidState, pid_step
from c2cq.services.scheduler.state import ExecutorView, RequestView, State, ToExecutor, ToLog

ALPHA_GAINS = PidGains(kp=0.25, ki=0.5, kd=0.02, out_min=0.0, out_max=1.0)
MIN_CHUNK = costmodel.MIN_CHUNK


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


def tpot_target_s(st: State, tpot_ms: float | None) -> float:
    """The TPOT budget (seconds, with the SLO margin) a request's chunked prefill must respect."""
    return (tpot_ms or st.cfg.default_tpot_ms) * st.cfg.slo_margin / 1e3


def _alpha_max(st: State, x: ExecutorView, model_bytes: int) -> float:
    if model_bytes <= 0:
        return 1.0
    return max(0.0, min(1.0, st.cfg.weight_share * x.memory_budget_bytes / model_bytes))


def _fair_link(st: State, x: ExecutorView) -> float:
    """The link bandwidth x can count on: its link's capacity (× headroom) split evenly over the
    members that are serving — a sibling that is idle now may stream at any moment."""
    members = st.groups.get(x.link_group, ())
    n = 0
    for e in members:
        y = st.executors.get(e)
        if y is not None and y.state == "ready" and y.active:
            n += 1
    link = st.links.get(x.link_group)
    cap = max(link.cap_bps if link is not None else 0.0, x.est.link_bps) * st.cfg.link_headroom
    return cap / max(1, n)


def _alpha_floor(st: State, x: ExecutorView, model_bytes: int, tpot_t: float, a_max: float) -> float:
    """The resident share a decode step needs to meet ``tpot_t`` at x's fair share of its link:
    (1 − α)·|W| / link ≤ TPOT (the roofline's link term), no more than memory allows."""
    if model_bytes <= 0:
        return 0.0
    need = 1.0 - tpot_t * _fair_link(st, x) / model_bytes
    return max(0.0, min(a_max, need))


def _chunk(st: State, x: ExecutorView, model_bytes: int, params: int, tpot_t: float) -> int:
    return costmodel.roofline_chunk(x.est, alpha=x.alpha, model_bytes=model_bytes, params=params,
                                    link_bps=link_left(st, x), tpot_s=tpot_t, lo=MIN_CHUNK,
                                    hi=st.cfg.max_chunk_tokens)


def start(st: State, x: ExecutorView, req: RequestView, now: float, switching: bool) -> list:
    """x takes ``req`` from idle (a switch, or the model it still holds): a fresh plan for that batch
    — PID state cleared, the roofline chunk at what x holds of the model, and α: on a switch the
    memory ceiling (the executor copies towards it as it serves), else the plan's α for the model
    it kept. Sent after the AssignRequest, so it applies to the model being switched to."""
    size = st.models.get(req.submit.model)
    if size is None:
        return []
    model_bytes, params = size
    p = x.plan
    p.alpha_pid, p.chunk_pid, p.last_at = PidState(), PidState(), now
    tpot_t = tpot_target_s(st, req.submit.slo.tpot_ms)
    a_max = _alpha_max(st, x, model_bytes)
    alpha = (a_max if st.cfg.keep_resident else 0.0) if switching else min(p.alpha, a_max)
    chunk = _chunk(st, x, model_bytes, params, tpot_t)
    changed = alpha != p.alpha or chunk != p.chunk_tokens
    p.alpha, p.chunk_tokens, p.kernel = alpha, chunk, kernel_for(alpha)
    x.chunk_tokens = chunk
    if not changed:
        return []
    return [ToExecutor(x.executor_id, ApplyPlan(alpha=alpha, chunk_tokens=chunk))]


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
        floor = _alpha_floor(st, x, model_bytes, tpot_t, a_max)
        ga = msgspec.structs.replace(ALPHA_GAINS, out_min=floor, out_max=a_max, bias=floor)
        a = pid_step(ga, p.alpha_pid, 1.0, x.est.step_s / tpot_t, now)
        alpha = max(a.out, a_max) if cfg.keep_resident else a.out
        chunk = _chunk(st, x, model_bytes, params, tpot_t)
        p.last_at = now
        stepped[x.executor_id] = PlanStepped(
            at=now, executor_id=x.executor_id, model=x.model, alpha=alpha, chunk_tokens=chunk, kernel=kernel_for(alpha),
            tpot_s=x.est.step_s, tpot_target_s=tpot_t, ttft_s=x.ttft_s, ttft_target_s=ttft_t,
            p=a.p, i=a.i, d=a.d, chunk_p=0.0, chunk_i=0.0, chunk_d=0.0, link_scale=1.0)
    _fit_links(st, stepped)
    out: list = []
    for eid, s in stepped.items():
        x = st.executors[eid]
        changed = abs(s.alpha - x.plan.alpha) >= cfg.alpha_step_min or s.chunk_tokens != x.plan.chunk_tokens
        if changed:
            x.plan.alpha, x.plan.kernel = s.alpha, s.kernel
        x.plan.chunk_tokens = s.chunk_tokens
        x.chunk_tokens = s.chunk_tokens
        out.append(ToLog(s))
        if changed:
            out.append(ToExecutor(eid, ApplyPlan(alpha=x.plan.alpha, chunk_tokens=s.chunk_tokens)))
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
