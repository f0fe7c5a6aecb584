"""The cost model (pure): what a slice can do, learned from its StepStats; TTFT estimates.

Priors come from the executor's own SliceReady (link bandwidth) and the scheduler's config (HBM
bandwidth, compute); each StepStats sample then refines the term that bounded its steps, as the
roofline t = max(α·|W|/B_hbm, (1 − α)·|W|/B_link, 2·P·tokens/F) says which one did.
"""

from __future__ import annotations

import math

import msgspec

EWMA = 0.3  # weight of a new sample
MIN_CHUNK = 16  # the smallest prefill chunk a plan asks for


class Estimates(msgspec.Struct, kw_only=True):
    link_bps: float  # host → device bytes/s this slice reaches when the link bounds it
    hbm_bps: float
    flops: float
    step_s: float = 0.0  # recent decode step time (≈ TPOT); 0 before any sample
    link_used_bps: float = 0.0  # measured host-link traffic of this slice (its share of the shared link)
    switch_s: float = 0.0  # measured time to the first servable state after a model switch
    samples: int = 0


def ewma(old: float, new: float) -> float:
    return new if old <= 0 else (1 - EWMA) * old + EWMA * new


def observe(e: Estimates, *, step_s: float, tokens: int, decode_tokens: int, bytes_hbm: int, bytes_host: int,
            model_bytes: int, params: int) -> None:
    """Fold one StepStats sample (step_s is the mean step; the counts are totals over its window)."""
    if step_s <= 0 or model_bytes <= 0 or bytes_hbm + bytes_host <= 0:
        return
    steps = max(1.0, (bytes_hbm + bytes_host) / model_bytes)  # every step reads the whole model once
    busy = steps * step_s
    e.link_used_bps = ewma(e.link_used_bps, bytes_host / busy) if e.samples else bytes_host / busy
    h, d, flop = bytes_host / steps, bytes_hbm / steps, 2.0 * params * tokens / steps
    t_link, t_hbm, t_comp = h / e.link_bps, d / e.hbm_bps, flop / e.flops
    bound = max(t_link, t_hbm, t_comp)
    if bound == t_link and h > 0:
        e.link_bps = ewma(e.link_bps, h / step_s)
    elif bound == t_hbm and d > 0:
        e.hbm_bps = ewma(e.hbm_bps, d / step_s)
    elif flop > 0:
        e.flops = ewma(e.flops, flop / step_s)
    if decode_tokens > 0:
        e.step_s = ewma(e.step_s, step_s)
    e.samples += 1


def idle(e: Estimates) -> None:
    """A slice with nothing to run draws nothing from its link."""
    e.link_used_bps = 0.0


def step_time(e: Estimates, *, alpha: float, model_bytes: int, params: int, tokens: int, link_bps: float) -> float:
    """One step's roofline at resident share ``alpha`` with ``link_bps`` of link available."""
    t_mem = max(alpha * model_bytes / e.hbm_bps, (1.0 - alpha) * model_bytes / max(link_bps, 1.0))
    return max(t_mem, 2.0 * params * tokens / e.flops)


def roofline_chunk(e: Estimates, *, alpha: float, model_bytes: int, params: int, link_bps: float, tpot_s: float,
                   lo: int, hi: int) -> int:
    """The prefill chunk a step should carry: the largest whose step stays within
    max(one pass over the weights, the TPOT budget of the decodes that share the step).

    While α < 1 every chunked-prefill step reads the model's streamed share over the link again,
    so a chunk whose compute is shorter than that pass wastes the pass: a smaller chunk makes a
    link-bound prefill longer (more passes), never shorter. Below one pass the chunk is free (the
    step takes the pass anyway); above it each token adds compute to every co-running decode's
    step, so the chunk stops where the step would exceed the TPOT budget — unless the pass alone
    already exceeds it, when the chunk is exactly the pass (the roofline's ridge point)."""
    t_mem = max(alpha * model_bytes / e.hbm_bps, (1.0 - alpha) * model_bytes / max(link_bps, 1.0))
    per_token = 2.0 * max(1, params) / e.flops
    budget = t_mem if t_mem >= tpot_s else tpot_s
    return int(min(max(budget / per_token, lo), hi))


def ttft(e: Estimates, *, alpha: float, model_bytes: int, params: int, prompt_tokens: int, chunk_tokens: int,
         link_bps: float, wait_s: float, switching: bool) -> float:
    """Estimated time to first token: wait for the slot, switch, chunked prefill (each chunk one step)."""
    chunk = max(1, chunk_tokens)
    full, rest = divmod(max(1, prompt_tokens), chunk)
    t = full * step_time(e, alpha=alpha, model_bytes=model_bytes, params=params, tokens=chunk, link_bps=link_bps)
    if rest:
        t += step_time(e, alpha=alpha, model_bytes=model_bytes, params=params, tokens=rest, link_bps=link_bps)
    return wait_s + (e.switch_s if switching else 0.0) + t


def prompt_tokens(prompt: str | None, ids: tuple[int, ...] | None, resumed: int) -> int:
    """Tokens to prefill: the prompt's ids (or ~4 characters a token of text) plus resumed output."""
    n = len(ids) if ids else math.ceil(len(prompt or "") / 4)
    return max(1, n) + resumed
