"""SimBackend: roofline timing, chunked prefill, progressive residency, deterministic tokens, abort, resume.

The profile uses round numbers so every expected time is worked out by hand below. These are
modelled durations (StepResult.busy_s), not wall-clock measurements.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import FinishReason, ModelKind
from c2cq.schemas.executor import AssignRequest
from c2cq.services.executor.sim import SimBackend, SliceProfile

PROFILE = SliceProfile(name="test", flops=1e12, hbm_bps=1e11, link_bps=1e10, hbm_bytes=10**12, max_batch=8)
GB = 10**9


def model(name: str = "m", params: int = GB, nbytes: int = 2 * GB, vocab: int = 1000) -> ModelInfo:
    return ModelInfo(name=name, kind=ModelKind.SIM, architecture="LlamaForCausalLM", parameters=params, bytes=nbytes,
                     dtype="bf16", vocab_size=vocab, num_layers=2, hidden_size=64, max_context=8192)


def req(rid: str, prompt_tokens: int = 1, max_tokens: int = 4, resume: tuple[int, ...] = ()) -> AssignRequest:
    return AssignRequest(request_id=rid, model="m", prompt_token_ids=tuple(range(prompt_tokens)),
                         max_tokens=max_tokens, resume_token_ids=resume)


def backend(profile: SliceProfile = PROFILE, info: ModelInfo | None = None,
            alpha_cap: float | None = None) -> SimBackend:
    b = SimBackend(profile)
    b.switch(info or model())
    if alpha_cap is not None:
        b.set_alpha(alpha_cap)
    return b


def run_to_end(b: SimBackend, chunk: int = 512, limit: int = 10_000) -> dict[str, list]:
    """Step until idle; every request's outputs in order."""
    out: dict[str, list] = {}
    for _ in range(limit):
        if not b.has_work():
            return out
        for o in b.step(chunk).outputs:
            out.setdefault(o.request_id, []).append(o)
    raise AssertionError("the backend never became idle")


def tokens(outputs) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


# ---- the roofline ------------------------------------------------------------------------------


def test_decode_is_memory_bound_and_reads_all_weights_over_the_link_at_alpha_zero():
    b = backend(alpha_cap=0.0)  # no residency copy: the link carries the step's reads alone
    b.add(req("r", prompt_tokens=1))
    res = b.step(512)  # the 1-token prompt is prefilled and its first token decoded in one step
    # weights 2 GB over a 10 GB/s link = 0.2 s; compute 2·1e9·2 tokens / 1e12 = 0.004 s
    assert (res.prefill_tokens, res.decode_tokens) == (1, 1)
    assert (res.bytes_hbm, res.bytes_host) == (0, 2 * GB)
    assert res.busy_s == pytest.approx(0.2)


def test_the_residency_copy_shares_the_link_with_the_reads():
    """Changed with the link accounting: this expectation used to be 0.2 s with the copy running at the
    full link rate beside the reads (the link counted twice). Now, at α = 0 with the cap at 1, the copy
    (2 GB to go) takes half of the 10 GB/s link while the reads (2 GB) take the other half: both end at
    2 GB / 5 GB/s = 0.4 s, and the copy moved exactly what the reads left: 0.4·10 − 2 = 2 GB."""
    b = backend()
    b.add(req("r", prompt_tokens=1, max_tokens=1000))
    res = b.step(512)
    assert (res.bytes_hbm, res.bytes_host) == (0, 2 * GB)
    assert res.busy_s == pytest.approx(0.4)
    assert b.alpha() == pytest.approx(1.0)
    assert b.copied_bytes == pytest.approx(2 * GB)
    assert res.bytes_host + b.copied_bytes == pytest.approx(res.busy_s * PROFILE.link_bps)


def test_a_copy_that_ends_first_gives_the_reads_the_whole_link():
    # 4 GB model, cap 0.25: 1 GB to copy. The copy's half-link share ends at 1 GB / 5 GB/s = 0.2 s,
    # when the reads have moved 1 GB of their 4 GB; the last 3 GB go at 10 GB/s: 0.2 + 0.3 = 0.5 s
    # = (4 + 1) GB / 10 GB/s. The link moved 5 GB in 0.5 s: never more than its 10 GB/s.
    b = backend(info=model(nbytes=4 * GB), alpha_cap=0.25)
    b.add(req("r", prompt_tokens=1, max_tokens=1000))
    res = b.step(512)
    assert res.busy_s == pytest.approx(0.5)
    assert b.alpha() == pytest.approx(0.25)
    assert res.bytes_host + b.copied_bytes == pytest.approx(res.busy_s * PROFILE.link_bps)


def test_a_compute_bound_step_leaves_the_copy_the_idle_link():
    # 500-token prefill: 1.002 s of compute; the reads (2 GB at α = 0) and the whole 2 GB copy fit
    # in the link's 10 GB/s · 1.002 s, so the step is not slowed and the model is resident after it
    b = backend()
    b.add(req("r", prompt_tokens=500, max_tokens=5))
    res = b.step(512)
    assert res.busy_s == pytest.approx(2 * GB * 501 / 1e12)
    assert b.alpha() == pytest.approx(1.0)


def test_prefill_is_compute_bound():
    b = backend()
    b.add(req("r", prompt_tokens=500))
    res = b.step(512)
    # 2·1e9·(500 + 1) / 1e12 = 1.002 s of compute, more than the 0.2 s of weight reads
    assert (res.prefill_tokens, res.decode_tokens) == (500, 1)
    assert res.busy_s == pytest.approx(2 * GB * 501 / 1e12)


def test_decode_time_follows_the_hybrid_floor_at_the_resident_share():
    b = backend(alpha_cap=0.5)
    b.add(req("warm", prompt_tokens=1, max_tokens=10_000))
    for _ in range(100):  # let residency rise to the cap
        b.step(512)
    assert b.alpha() == pytest.approx(0.5)
    res = b.step(512)
    # t(α) = max(α·|W| / B_hbm, (1 − α)·|W| / B_link) = max(1e9 / 1e11, 1e9 / 1e10) = 0.1 s
    assert (res.bytes_hbm, res.bytes_host) == (GB, GB)
    assert res.busy_s == pytest.approx(0.1)


def test_a_batch_of_decodes_costs_one_weight_read():
    b = backend()
    for i in range(4):
        b.add(req(f"r{i}", prompt_tokens=1, max_tokens=3))
    b.step(512)
    res = b.step(512)
    assert res.decode_tokens == 4 and res.prefill_tokens == 0
    assert res.bytes_hbm + res.bytes_host == 2 * GB


def test_time_scale_slows_modelled_time_but_not_residency():
    fast, slow = backend(), backend(replace(PROFILE, time_scale=10.0))
    for b in (fast, slow):
        b.add(req("r", prompt_tokens=1, max_tokens=5))
    rf, rs = fast.step(512), slow.step(512)
    assert rs.busy_s == pytest.approx(10 * rf.busy_s)
    assert slow.alpha() == pytest.approx(fast.alpha())


# ---- chunked prefill ---------------------------------------------------------------------------


def test_chunked_prefill_stays_within_the_budget_and_decodes_as_prompts_complete():
    b = backend()
    b.add(req("a", prompt_tokens=300, max_tokens=3))
    b.add(req("b", prompt_tokens=300, max_tokens=3))
    steps = []
    while b.has_work():
        res = b.step(256)
        steps.append((res.prefill_tokens, res.decode_tokens, sorted(o.request_id for o in res.outputs)))
    assert steps[:3] == [
        (256, 0, []),  # a: 256 of 300
        (256, 1, ["a"]),  # a: the last 44 (and its first token), b: 212
        (88, 2, ["a", "b"]),  # b: the last 88
    ]
    assert sum(s[0] for s in steps) == 600
    assert all(s[0] <= 256 for s in steps)


def test_a_zero_chunk_still_makes_progress():
    b = backend()
    b.add(req("a", prompt_tokens=3, max_tokens=1))
    out = run_to_end(b, chunk=0, limit=10)
    assert tokens(out["a"]) and out["a"][-1].finish == FinishReason.LENGTH


def test_max_batch_bounds_a_step():
    b = backend(replace(PROFILE, max_batch=3))
    for i in range(5):
        b.add(req(f"r{i}", prompt_tokens=1, max_tokens=2))
    res = b.step(512)
    assert res.decode_tokens == 3 and len(res.outputs) == 3


# ---- progressive residency ---------------------------------------------------------------------


def test_residency_starts_at_zero_after_a_switch_and_rises_by_what_the_link_copied():
    b = backend()
    b.add(req("r", prompt_tokens=1, max_tokens=1000))
    res = b.step(512)
    # the copy gets what the reads left of the link: 0.4 s · 10 GB/s − 2 GB read = 2 GB, the whole model
    # (changed with the link accounting: it was busy_s · link / |W|, the link counted twice)
    assert b.alpha() == pytest.approx(min(1.0, (res.busy_s * PROFILE.link_bps - res.bytes_host) / (2 * GB)))
    assert b.alpha() == pytest.approx(1.0)
    b.switch(model("other"))
    assert b.alpha() == 0.0


def test_residency_is_monotone_and_bounded_by_the_cap():
    b = backend(info=model(nbytes=50 * GB), alpha_cap=0.3)
    b.add(req("r", prompt_tokens=1, max_tokens=10_000))
    seen = []
    for _ in range(200):
        b.step(512)
        seen.append(b.alpha())
    assert seen == sorted(seen)
    assert all(0.0 < a <= 0.3 for a in seen)
    assert seen[-1] == pytest.approx(0.3)


def test_residency_is_bounded_by_hbm():
    b = backend(replace(PROFILE, hbm_bytes=GB), info=model(nbytes=4 * GB))  # only a quarter of the model fits
    b.add(req("r", prompt_tokens=1, max_tokens=10_000))
    for _ in range(200):
        b.step(512)
    assert b.alpha() == pytest.approx(0.25)
    assert b.step(512).bytes_hbm <= GB


def test_lowering_the_cap_evicts_at_once_and_out_of_range_caps_are_clamped():
    b = backend()
    b.add(req("r", prompt_tokens=1, max_tokens=10_000))
    for _ in range(50):
        b.step(512)
    assert b.alpha() == pytest.approx(1.0)
    b.set_alpha(0.2)
    assert b.alpha() == pytest.approx(0.2)
    b.set_alpha(-3.0)
    assert b.alpha() == 0.0
    b.set_alpha(7.0)
    for _ in range(50):
        b.step(512)
    assert b.alpha() == pytest.approx(1.0)


# ---- tokens ------------------------------------------------------------------------------------


def test_tokens_are_deterministic_within_the_vocabulary_and_independent_of_batching():
    alone = backend()
    alone.add(req("x", prompt_tokens=5, max_tokens=20))
    crowded = backend()
    for i in range(6):
        crowded.add(req(f"other{i}", prompt_tokens=7, max_tokens=15))
    crowded.add(req("x", prompt_tokens=5, max_tokens=20))
    tx, tc = tokens(run_to_end(alone)["x"]), tokens(run_to_end(crowded)["x"])
    assert tx == tc and len(tx) == 20
    assert all(0 <= t < 1000 for t in tx)
    assert len(set(tx)) > 1  # not a constant stream
    other = backend()
    other.add(req("y", prompt_tokens=5, max_tokens=20))
    assert tokens(run_to_end(other)["y"]) != tx


def test_exactly_max_tokens_with_consecutive_indices_and_length_at_the_end():
    b = backend()
    b.add(req("r", prompt_tokens=4, max_tokens=7))
    out = run_to_end(b)["r"]
    assert [o.index for o in out] == list(range(7))
    assert [o.finish for o in out] == [None] * 6 + [FinishReason.LENGTH]
    assert out[-1].prompt_tokens == 4
    assert not b.has_work()


def test_a_text_prompt_counts_its_words():
    b = backend()
    b.add(AssignRequest(request_id="t", model="m", prompt="one two  three", max_tokens=1))
    assert run_to_end(b)["t"][-1].prompt_tokens == 3


# ---- abort and resume ----------------------------------------------------------------------------


def test_abort_stops_a_request_and_leaves_the_others():
    b = backend()
    b.add(req("a", prompt_tokens=1, max_tokens=50))
    b.add(req("b", prompt_tokens=1, max_tokens=5))
    b.step(512)
    b.abort("a")
    b.abort("never-added")  # harmless
    out = run_to_end(b)
    assert "a" not in out
    assert len(tokens(out["b"])) == 4  # the first of its 5 tokens came in the step before the abort
    assert not b.has_work()


def test_resume_continues_the_same_stream_from_the_tokens_already_delivered():
    fresh = backend()
    fresh.add(req("r", prompt_tokens=4, max_tokens=10))
    full = tokens(run_to_end(fresh)["r"])
    resumed = backend()
    resumed.add(req("r", prompt_tokens=4, max_tokens=10, resume=tuple(full[:6])))
    out = run_to_end(resumed)["r"]
    assert [o.index for o in out] == [6, 7, 8, 9]
    assert tokens(out) == full[6:]
    assert out[-1].finish == FinishReason.LENGTH
    # the delivered tokens are recomputed as prompt (their KV), so prefill covers 4 + 6
    assert out[-1].prompt_tokens == 10


def test_resume_with_every_token_delivered_produces_no_more():
    """A request whose executor died after its last token but before its completion is re-assigned
    with all max_tokens tokens as resume_token_ids: it must complete without a token past max_tokens."""
    b = backend()
    b.add(req("r", prompt_tokens=2, max_tokens=3, resume=(1, 2, 3)))
    out = run_to_end(b)["r"]
    assert tokens(out) == []
    assert out[-1].finish == FinishReason.LENGTH and out[-1].index == 3
