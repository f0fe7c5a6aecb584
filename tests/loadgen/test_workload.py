"""Workloads: models, lengths, prompts, max_tokens and SLO classes of planned requests."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from c2cq.errors import ConfigError
from c2cq.loadgen import arrivals as A
from c2cq.loadgen import traces as T
from c2cq.loadgen import workload as W

Z = 5.0  # standard errors allowed in statistical checks


def _reqs(n: int, **kw) -> list[T.TraceRequest]:
    return [T.TraceRequest(float(i), kw.get("prompt", 10), kw.get("out", 5), kw.get("model"))
            for i in range(n)]


def test_zipf_probabilities():
    p = W.zipf_probabilities(4, 1.5)
    assert p.sum() == pytest.approx(1.0)
    assert p[0] / p[1] == pytest.approx(2**1.5) and p[0] / p[3] == pytest.approx(4**1.5)
    assert W.zipf_probabilities(3, 0.0) == pytest.approx([1 / 3] * 3)


def test_zipf_model_draws_match_popularity():
    catalog = tuple(f"m{i}" for i in range(5))
    n = 20_000
    wl = W.Workload(W.from_schedule(np.arange(n, dtype=float)),
                    W.WorkloadConfig(catalog=catalog, zipf_exponent=1.2, seed=9,
                                     lengths=((10, 5),)))
    plan = wl.plan()
    counts = np.array([sum(p.model == m for p in plan) for m in catalog])
    weights = np.arange(1, 6, dtype=float) ** -1.2
    expected = weights / weights.sum()
    # Each count is binomial(n, p): standard error sqrt(p(1 − p)/n) of the frequency.
    assert np.all(np.abs(counts / n - expected) <= Z * np.sqrt(expected * (1 - expected) / n))


def test_plan_is_deterministic_and_sorted():
    offsets = A.schedule(5.0, pattern="gamma", cv=2.0, count=300, seed=1)
    cfg = W.WorkloadConfig(catalog=("a", "b", "c"), lengths=((100, 20), (7, 3)), seed=4)
    p1 = W.Workload(W.from_schedule(offsets), cfg, W.SyntheticPrompts(seed=2)).plan()
    p2 = W.Workload(W.from_schedule(offsets[::-1]), cfg, W.SyntheticPrompts(seed=2)).plan()
    assert [(p.offset_s, p.model, p.prompt_tokens, p.max_tokens, p.slo_class) for p in p1] == [
        (p.offset_s, p.model, p.prompt_tokens, p.max_tokens, p.slo_class) for p in p2]
    assert all(np.array_equal(a.prompt_ids, b.prompt_ids) for a, b in zip(p1, p2))
    assert [p.offset_s for p in p1] == sorted(offsets.tolist())
    assert {(p.prompt_tokens, p.max_tokens) for p in p1} == {(100, 20), (7, 3)}
    assert all(len(p.prompt_ids) == p.prompt_tokens for p in p1)
    p3 = W.Workload(W.from_schedule(offsets), W.WorkloadConfig(
        catalog=("a", "b", "c"), lengths=((100, 20), (7, 3)), seed=5)).plan()
    assert [p.model for p in p3] != [p.model for p in p1]


def test_trace_models_lengths_and_max_tokens_clamp():
    reqs = [
        T.TraceRequest(0.0, 50, 900, "ChatGPT"),
        T.TraceRequest(1.0, 60, 0, "GPT-4", failed=True),
        T.TraceRequest(2.0, 70, 30, "GPT-4"),
    ]
    cfg = W.WorkloadConfig(model_map={"ChatGPT": "qwen-0.5b"}, max_tokens_limit=256)
    plan = W.Workload(reqs, cfg).plan()
    assert [p.model for p in plan] == ["qwen-0.5b", "GPT-4", "GPT-4"]
    assert [p.prompt_tokens for p in plan] == [50, 60, 70]
    assert [p.max_tokens for p in plan] == [256, 1, 30]  # clamped above, at least 1 below
    assert [p.failed_in_trace for p in plan] == [False, True, False]
    assert all(p.prompt_ids is None for p in plan)  # no prompt builder given
    dropped = W.Workload(reqs, W.WorkloadConfig(drop_failed=True)).plan()
    assert [p.offset_s for p in dropped] == [0.0, 2.0]


def test_auto_falls_back_to_zipf_and_errors_without_catalog():
    reqs = _reqs(3) + [T.TraceRequest(3.0, 1, 1, "named")]
    plan = W.Workload(reqs, W.WorkloadConfig(catalog=("x",))).plan()
    assert [p.model for p in plan] == ["x", "x", "x", "named"]
    with pytest.raises(ConfigError):
        W.Workload(_reqs(2), W.WorkloadConfig())
    with pytest.raises(ConfigError):
        W.Workload(_reqs(2), W.WorkloadConfig(models="trace", catalog=("x",)))
    with pytest.raises(ConfigError):
        W.WorkloadConfig(models="zipf")


def test_lengths_from_a_pool_when_the_trace_has_none(traces_dir):
    pool = W.length_pool(T.read_azure(traces_dir / "azure_llm_2023_code.csv"))
    windows = [w for w in T.read_servegen_windows(
        traces_dir / "servegen_multimodal_mm-image_day0.csv") if w.start_s == 0.0]
    arrivals = list(T.servegen_arrivals(windows, seed=0))
    plan = W.Workload(arrivals, W.WorkloadConfig(lengths=pool, seed=1)).plan()
    assert len(plan) == len(arrivals) > 0
    pairs = set(pool)
    assert all((p.prompt_tokens, p.max_tokens) in pairs for p in plan)
    assert {p.model for p in plan} == {r.model for r in arrivals}
    with pytest.raises(ConfigError):
        W.Workload(arrivals, W.WorkloadConfig())


def test_slo_classes_by_weight_and_tag():
    classes = (W.SloClass("fast", 200.0, 20.0), W.SloClass("slow", 5000.0, 300.0))
    cfg = W.WorkloadConfig(catalog=("m",), lengths=((1, 1),), slo_classes=classes,
                           slo_weights=(0.0, 1.0))
    plan = W.Workload(W.from_schedule([0.0, 1.0]), cfg).plan()
    assert {(p.slo_class, p.ttft_ms, p.tpot_ms) for p in plan} == {("slow", 5000.0, 300.0)}
    reqs = [T.TraceRequest(0.0, 1, 1, "m", tag="Conversation log"),
            T.TraceRequest(1.0, 1, 1, "m", tag="API log")]
    cfg = W.WorkloadConfig(slo_classes=classes, slo_weights=(0.0, 1.0),
                           slo_by_tag={"Conversation log": "fast"})
    assert [p.slo_class for p in W.Workload(reqs, cfg).plan()] == ["fast", "slow"]
    with pytest.raises(ConfigError):
        W.WorkloadConfig(slo_by_tag={"x": "nope"})
    with pytest.raises(ConfigError):
        W.WorkloadConfig(slo_weights=(1.0,))


def test_default_slo_classes():
    by_name = {c.name: c for c in W.DEFAULT_SLO_CLASSES}
    assert (by_name["interactive"].ttft_ms, by_name["interactive"].tpot_ms) == (1000.0, 100.0)
    assert (by_name["batch"].ttft_ms, by_name["batch"].tpot_ms) == (10000.0, 500.0)


def test_synthetic_prompts_share_prefix_blocks():
    sp = W.SyntheticPrompts(vocab_size=1000, first_id=3, seed=1)
    a = sp.build(0, 1500, (0, 1, 2))
    b = sp.build(1, 1400, (0, 1, 5))
    c = sp.build(2, 1300, (7,))
    assert a.dtype == np.int32 and len(a) == 1500 and len(b) == 1400 and len(c) == 1300
    assert np.array_equal(a[:1024], b[:1024])  # blocks 0 and 1 shared
    assert not np.array_equal(a[1024:1400], b[1024:1400])  # block 2 vs block 5
    assert not np.array_equal(a[:512], c[:512])
    assert a.min() >= 3 and a.max() < 1000
    # Beyond the named blocks, each request has its own tokens.
    assert not np.array_equal(c[512:1024], sp.build(3, 1300, (7,))[512:1024])
    assert np.array_equal(c, sp.build(2, 1300, (7,)))  # deterministic
    assert np.array_equal(sp.build(9, 10), sp.build(9, 10))
    assert not np.array_equal(a, W.SyntheticPrompts(vocab_size=1000, first_id=3, seed=2)
                              .build(0, 1500, (0, 1, 2)))
    assert len(sp.build(4, 0, (0,))) == 0


def test_tokenizer_prompts_use_spans_of_the_corpus():
    corpus = "".join(chr(ord("a") + i % 26) for i in range(5000))

    def encode(text: str) -> list[int]:
        return [ord(ch) for ch in text]

    tp = W.TokenizerPrompts(encode, corpus, seed=0, block_tokens=64)
    ids = tp.build(0, 200, (4, 9))
    assert len(ids) == 200 and ids.dtype == np.int32
    for start in (0, 64, 128):  # every block is consecutive text (wrapping at 'z')
        block = ids[start:start + 64]
        assert np.all((np.diff(block) == 1) | (np.diff(block) == -25))
    assert np.array_equal(ids[:128], tp.build(5, 150, (4, 9, 1))[:128])
    with pytest.raises(ConfigError):
        W.TokenizerPrompts(encode, "")


def test_mooncake_workload_shares_block_zero(traces_dir):
    reqs = itertools.islice(T.read_mooncake(traces_dir / "mooncake_conversation_first30min.jsonl"),
                            40)
    wl = W.Workload(reqs, W.WorkloadConfig(catalog=("m",), max_tokens_limit=512),
                    W.SyntheticPrompts(seed=0))
    plan = list(wl.iter_plan())
    assert len(plan) == 40
    first = plan[0].prompt_ids[:512]
    for p in plan:
        assert len(p.prompt_ids) == p.prompt_tokens
        assert p.prefix_hash_ids[0] == 0
        assert np.array_equal(p.prompt_ids[:512], first)
        assert 1 <= p.max_tokens <= 512
    blocks = math.ceil(plan[1].prompt_tokens / 512)
    assert len(plan[1].prefix_hash_ids) == blocks
