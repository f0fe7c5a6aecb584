"""Level 1 (pure): each request goes to the executor with the lowest estimated time to first token.

Candidates are the executors that can start it now: one serving its model with a free batch
slot, or an idle one (which switches to it). The estimate counts the wait for the slot, the
measured switch time, and a chunked prefill at the share of the model that executor already
holds (α: affinity falls out of it) with the link bandwidth its host has left. A batch prefills
in order, so joining one also waits for the prompts its requests have not prefilled yet
(``backlog``): a hot model's stream that one slice cannot prefill fast enough spills onto a
second slice, which copies the model in (replication), instead of queueing behind the first.

Several slices share one link, so the link a candidate gets is the lesser of what the other
members leave of it (their draw, measured from StepStats) and an equal share among the members
that read over it at every step (those serving with α < 1: streaming, or copying towards
residency — a copy does not show in the measured draw). On a PCIe host that term decides: a
switch beside a sibling that copies gets half the link, and a cold 18 GB model's first pass then
misses a 1 s TTFT.

TPOT: a model larger than the share of a slice's HBM that may hold weights streams its rest at
every decode step; a candidate where that step would exceed the request's TPOT budget is taken
only when no candidate can meet it (large models go to slices that hold them).

A switch evicts the model its slice held. When the best candidate switches, the switching
candidates within EVICT_SLACK of its estimate are as good, and the one whose model is cheapest to
lose is taken: the least demand (requests lately, decaying) × bytes, i.e. what its next requests
would have to bring back over the link — a hot large model stays, a cold or small one goes; then
the least recently used (with the lowest id winning ties instead, slice 0 would switch for every
new model while the others kept theirs for good, seen with two CPU slices and five models).
"""

from __future__ import annotations

import math

from c2cq.services.scheduler import costmodel, kvroom
from c2cq.services.scheduler.hosts import startup_s
from c2cq.services.scheduler.state import ExecutorView, RequestView, State

MIN_LINK_SHARE = 0.05  # a saturated link still gives a new stream this share in the estimate
EVICT_SLACK = 0.25  # switching candidates within this fraction of the best estimate: evict the cheapest model


def link_group(device: str) -> str:
    """The link group of a slice that announced none (SliceReady.link_group is None): the legacy
    naming convention — ``GROUP/DEVICE`` shares the link of GROUP; any other device has a link of
    its own. Executors started by the supervisor announce their group (the parent GPU, "host")."""
    return device.split("/", 1)[0] if "/" in device else device


def link_left(st: State, x: ExecutorView) -> float:
    """Link bandwidth x's host has left for it: the link's capacity less what the other members draw."""
    link = st.links.get(x.link_group)
    if link is None:
        return x.est.link_bps
    cap = max(link.cap_bps, x.est.link_bps)
    others = max(0.0, link.used_bps - x.est.link_used_bps)
    return min(max(cap - others, cap * MIN_LINK_SHARE), cap / (1 + link.busy - x.on_link))


def demand(st: State, model: str | None, now: float) -> float:
    """Requests for ``model`` lately: each counts 1 when it arrives, decaying with ``demand_tau_s``."""
    d = st.demand.get(model) if model is not None else None
    if d is None:
        return 0.0
    n, at = d
    return n * math.exp(-max(0.0, now - at) / st.cfg.demand_tau_s)


def eviction_cost(st: State, x: ExecutorView, now: float) -> float:
    """What evicting x's model is expected to cost: its demand × its bytes (what each of its next
    requests would have to bring back over the link)."""
    size = st.models.get(x.model) if x.model is not None else None
    return 0.0 if size is None else demand(st, x.model, now) * size[0]


def candidates(st: State, model: str) -> list[ExecutorView]:
    """Executors that can start a request for ``model`` now: those running it with a free batch
    slot, then the idle ones. Read from the indexes: no scan over all executors."""
    xs = st.executors
    out = [x for x in (xs[e] for e in st.serving.get(model, ())) if len(x.active) < x.max_batch]
    out += [xs[e] for e in st.idle]
    return out


def chunk_for(st: State, x: ExecutorView, req: RequestView, alpha: float, link_bps: float) -> int:
    """The prefill chunk x would run ``req`` with: the plan of the batch it joins, or — taken from
    idle or on a switch — the roofline chunk the controller's fresh plan will set (controller.start),
    never the chunk a previous batch left behind."""
    if x.active and x.model == req.submit.model:
        return x.chunk_tokens
    cfg = st.cfg
    tpot = (req.submit.slo.tpot_ms or cfg.default_tpot_ms) * cfg.slo_margin / 1e3
    return costmodel.roofline_chunk(x.est, alpha=alpha, model_bytes=req.info.bytes, params=req.info.parameters,
                                    link_bps=link_bps, tpot_s=tpot, lo=costmodel.MIN_CHUNK, hi=cfg.max_chunk_tokens)


def backlog(st: State, x: ExecutorView) -> int:
    """Prompt tokens x has still to prefill as far as the scheduler knows: those of its requests
    whose first token has not come back. A request that joins the batch prefills after them
    (chunked prefill serves the batch in order), so its first token waits for them too — the
    term that sends a hot model's requests to a second slice once one cannot keep up."""
    n = 0
    reqs = st.requests
    for rid in x.active:
        r = reqs.get(rid)
        if r is not None and r.first_token_at is None:
            s = r.submit
            n += costmodel.prompt_tokens(s.prompt, s.prompt_token_ids, r.emitted)
    return n


def estimate(st: State, x: ExecutorView, req: RequestView) -> float:
    s, info = req.submit, req.info
    same = x.model == s.model
    alpha, left = x.alpha if same else 0.0, link_left(st, x)
    ahead = backlog(st, x) if same and x.active else 0
    return costmodel.ttft(
        x.est, alpha=alpha, model_bytes=info.bytes, params=info.parameters,
        prompt_tokens=costmodel.prompt_tokens(s.prompt, s.prompt_token_ids, req.emitted) + ahead,
        chunk_tokens=chunk_for(st, x, req, alpha, left), link_bps=left,
        wait_s=x.est.step_s if (same and x.active) else 0.0, switching=not same)


def choose_executor(st: State, req: RequestView) -> tuple[ExecutorView | None, float]:
    """The candidate with the lowest estimated TTFT (ties: the lower executor id), and that estimate;
    when it would switch, of the switching candidates within EVICT_SLACK the one whose model is
    cheapest to lose (then the least recently used); preferring, throughout, candidates that can
    meet its TPOT.
    O(candidates), and the order they are met in does not matter. The request's own terms are
    worked out once; each candidate costs the roofline of ``estimate`` (the same floats)."""
    cands = candidates(st, req.submit.model)
    if not cands:
        return None, float("inf")
    s, info = req.submit, req.info
    model, w, flop = s.model, info.bytes, 2.0 * info.parameters
    n = max(1, costmodel.prompt_tokens(s.prompt, s.prompt_token_ids, req.emitted))
    cfg = st.cfg
    tpot = (s.slo.tpot_ms or cfg.default_tpot_ms) * cfg.slo_margin / 1e3
    lo, hi = costmodel.MIN_CHUNK, cfg.max_chunk_tokens
    share = cfg.weight_share
    best, best_t = None, float("inf")
    fit, fit_t = None, float("inf")  # the best of the candidates that can meet its TPOT
    switching: list[tuple[float, ExecutorView, bool]] = []
    for x in cands:  # max() spelled as conditionals: this loop is the hot path of placement
        start = startup_s(st, x, model, w)
        if start is None:  # its host has not published the model (hosts.py)
            continue
        e = x.est
        same = x.model == model
        alpha = x.alpha if same else 0.0
        link = st.links.get(x.link_group)
        if link is None:
            left = e.link_bps
        else:
            cap = link.cap_bps if link.cap_bps >= e.link_bps else e.link_bps
            others = link.used_bps - e.link_used_bps
            left = cap - others if others > 0.0 else cap
            floor = cap * MIN_LINK_SHARE
            if left < floor:
                left = floor
            fair = cap / (1 + link.busy - x.on_link)
            if fair < left:
                left = fair
        t_hbm, t_link = alpha * w / e.hbm_bps, (1.0 - alpha) * w / (left if left >= 1.0 else 1.0)
        t_mem = t_hbm if t_hbm >= t_link else t_link
        if same and x.active:
            chunk = x.chunk_tokens if x.chunk_tokens >= 1 else 1
            full, rest = divmod(n + backlog(st, x), chunk)  # it prefills after the batch's backlog
        else:  # costmodel.roofline_chunk, inlined (see chunk_for)
            c = (t_mem if t_mem >= tpot else tpot) / ((flop if flop > 0 else 2.0) / e.flops)
            chunk = int(lo if c < lo else (hi if c > hi else c))
            full, rest = divmod(n, chunk)
        t = 0.0
        if full:
            t_c = flop * chunk / e.flops
            t = full * (t_mem if t_mem >= t_c else t_c)
        if rest:
            t_r = flop * rest / e.flops
            t += t_mem if t_mem >= t_r else t_r
        t += ((e.step_s if x.active else 0.0) if same else e.switch_s) + start
        if x.kv is not None:  # a slice short of KV room waits for it (kvroom.py)
            t += kvroom.wait_s(st, x, req)
        # TPOT: a model larger than the slice may hold streams its rest at every decode step
        room = share * x.memory_budget_bytes
        ok = w <= room or (w - room) / (left if left >= 1.0 else 1.0) <= tpot
        if not same:
            switching.append((t, x, ok))
        if t < best_t or (t == best_t and best is not None and x.executor_id < best.executor_id):
            best, best_t = x, t
        if ok and (t < fit_t or (t == fit_t and fit is not None and x.executor_id < fit.executor_id)):
            fit, fit_t = x, t
    if fit is not None:
        best, best_t = fit, fit_t
    if best is not None and best.model != model and len(switching) > 1:
        near = best_t * (1.0 + EVICT_SLACK)
        now, costs = req.accepted_at, {}  # eviction_cost per model held, worked out once
        pick = None
        for t, x, ok in switching:
            if t > near or not (ok or fit is None):
                continue
            c = costs.get(x.model)
            if c is None:
                c = costs[x.model] = eviction_cost(st, x, now)
            k = (c, x.used_at, x.executor_id)
            if pick is None or k < pick[0]:
                pick = (k, x, t)
        best, best_t = pick[1], pick[2]
    return best, best_t


def earliest_ttft(st: State, req: RequestView, ahead: int) -> float:
    """For admission when no executor can start it now: the soonest an executor frees up (its
    longest remaining decode) plus the TTFT there, stretched by the ``ahead`` requests of its
    class that will be placed first, spread over the live executors."""
    live = [x for x in st.executors.values() if x.state == "ready"]
    if not live:
        return float("inf")
    best = float("inf")
    for x in live:
        left = max((r.submit.max_tokens - r.emitted for r in (st.requests.get(a) for a in x.active) if r), default=0)
        best = min(best, left * x.est.step_s + estimate(st, x, req))
    return best * (1.0 + ahead / len(live))
