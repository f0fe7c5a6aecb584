"""Packed (oneDNN blocked) copies of the weights give what the plain shared weights give: the same greedy
tokens as transformers, logits within the dtype's tolerance, also when a model switches from plain to
packed mid-generation; the packed copies stay within their budget, least recently served let go first;
without the oneDNN ops nothing is packed and the plain path serves."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from c2cq.kernels import linear as klinear
from c2cq.kernels.linear import PackedWeight, SplitWeight, can_pack, hybrid_linear, pack_rows
from c2cq.services.executor.model.batch import FlatBatch
from c2cq.services.executor.model.engine import Engine
from c2cq.services.executor.model.model import Model
from c2cq.services.executor.model.config import parse_config
from c2cq.services.executor.model.sampler import SamplingParams
from c2cq.services.executor.model.weights import Linear, ReadCounter
from c2cq.services.executor.packing import Packer

from .conftest import DENSE, MOE, drain, prompt, token_ids

K_MAX = 100  # the largest inner dimension of these models' GEMMs (as test_parity)
needs_onednn = pytest.mark.skipif(not can_pack(torch.float32), reason="this torch has no oneDNN weight packing")


def _pack_all(engine: Engine, part_bytes: int = 1 << 20) -> Packer:
    packer = Packer(1 << 30, part_bytes)
    packer.serve("owner", engine.model, "m")
    while packer.work(math.inf):
        pass
    return packer


def _packed(model: Model) -> list[bool]:
    return [lin.weight.packed is not None for lin in model.weights]


def _last_logits(engine: Engine, ids: list[int]) -> torch.Tensor:
    table = engine.cache.new_table()
    table.grow(engine.cache.allocator, len(ids))
    return engine.model.forward(FlatBatch.build([(ids, 0, table)], [True]), engine.cache)[0]


@needs_onednn
@pytest.mark.parametrize("name", ["llama", "qwen2_tied", "qwen3", "mixtral", "qwen2_moe"])
def test_packed_greedy_tokens_match_generate(checkpoints, name):
    ck = checkpoints(name)
    ids = prompt(7, 13)
    ref = ck.hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24, min_new_tokens=24)
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=16, block_size=4)
    packer = _pack_all(engine, part_bytes=4096)  # parts of a few rows: multi-part weights (and biases) too
    assert all(_packed(engine.model)) and packer.share() == 1.0
    assert any(len(lin.weight.packed.parts) > 1 for lin in engine.model.weights)
    engine.add("r", ids, SamplingParams(max_tokens=24))
    assert token_ids(drain(engine, chunk_tokens=5)["r"]) == ref[0, len(ids):].tolist()


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["llama", "qwen2_tied", "mixtral"])
def test_packed_logits_match_plain_and_hf(checkpoints, name, dtype):
    if not can_pack(dtype):
        pytest.skip(f"this CPU does not pack {dtype} (no native instructions)")
    ck = checkpoints(name, dtype)
    ids = prompt(3, 19)
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=16, block_size=4)
    plain = _last_logits(engine, ids)
    _pack_all(engine)
    assert all(_packed(engine.model))
    packed = _last_logits(engine, ids)
    with torch.no_grad():
        ref = ck.hf(torch.tensor([ids])).logits[0, -1]
    # test_parity's tolerance: a few roundings per dot product of length K, growing ~ sqrt(K)
    tol = torch.finfo(dtype).eps * math.sqrt(K_MAX) * ref.float().abs().max().item()
    torch.testing.assert_close(packed.float(), ref.float(), rtol=0.0, atol=tol)
    torch.testing.assert_close(packed.float(), plain.float(), rtol=0.0, atol=tol)


@needs_onednn
def test_switching_to_packed_mid_generation_keeps_the_tokens(checkpoints):
    ck = checkpoints("llama_tied_llama3")
    prompts = [prompt(s, n) for s, n in ((1, 9), (2, 17), (3, 4))]
    refs = [ck.hf.generate(torch.tensor([p]), do_sample=False, max_new_tokens=20, min_new_tokens=20)[0, len(p):]
            for p in prompts]
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=32, block_size=4)
    for i, p in enumerate(prompts):
        engine.add(f"r{i}", p, SamplingParams(max_tokens=20))
    packer = Packer(1 << 30)  # one part per weight: all packed before the 20th token
    packer.serve("owner", engine.model, "m")
    out: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    states = set()
    while engine.num_requests:
        for o in engine.step(64):
            out[o.request_id].extend(o.new_token_ids)
        packer.work(0.0)  # one part per step: weights go packed one by one between steps
        states.add(tuple(_packed(engine.model)))
    assert len(states) > 2 and all(_packed(engine.model))  # steps ran with some weights packed, others plain
    assert [out[f"r{i}"] for i in range(len(prompts))] == [r.tolist() for r in refs]


def _models(ck, n: int) -> list[Model]:
    cfg = parse_config(ck.config)
    return [Model(cfg, {k: v.clone() for k, v in ck.tensors.items()}) for _ in range(n)]


@needs_onednn
def test_the_budget_holds_and_the_least_recently_served_goes_first(checkpoints):
    a, b, c = _models(checkpoints("llama"), 3)
    one = sum(lin.weight.host.numel() * 4 for lin in a.weights)
    packer = Packer(2 * one + one // 2, part_bytes=4096)  # room for two models and a half
    for label, model in (("a", a), ("b", b), ("a", a), ("c", c)):
        packer.serve(label, model, label)
        while packer.work(math.inf):
            assert packer.bytes <= packer.budget
        assert packer.bytes <= packer.budget
    # served a, b, a, c: b is the least recently served and went back to its plain pages; a stayed
    assert all(_packed(a)) and all(_packed(c)) and not any(_packed(b))
    assert (packer.share("a"), packer.share("b"), packer.share("c")) == (1.0, 0.0, 1.0)
    packer.serve("b", b, "b")  # b again: a (least recent now) goes, b packs afresh
    while packer.work(math.inf):
        pass
    assert all(_packed(b)) and not any(_packed(a)) and all(_packed(c))
    packer.drop("c")
    assert not any(_packed(c)) and packer.bytes == one


@needs_onednn
def test_a_budget_smaller_than_the_model_packs_part_of_it(checkpoints):
    (m,) = _models(checkpoints("llama"), 1)
    one = sum(lin.weight.host.numel() * 4 for lin in m.weights)
    packer = Packer(one // 2, part_bytes=4096)
    packer.serve("m", m, "m")
    while packer.work(math.inf):
        pass
    assert 0.0 < packer.share() <= 0.5 and any(_packed(m)) and not all(_packed(m)) and packer.bytes <= one // 2


def test_without_the_onednn_ops_nothing_is_packed_and_the_plain_path_serves(checkpoints, monkeypatch):
    monkeypatch.setattr(klinear, "_REORDER", None)
    monkeypatch.setattr(klinear, "_POINTWISE", None)
    monkeypatch.setattr(klinear, "_FP32_LINEAR", torch.nn.functional.linear)
    ck = checkpoints("qwen2_tied")
    ids = prompt(7, 13)
    ref = ck.hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=16, min_new_tokens=16)
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=16, block_size=4)
    packer = Packer(1 << 30)
    packer.serve("m", engine.model, "m")
    assert not packer.work(math.inf) and not any(_packed(engine.model)) and packer.share() == 0.0
    engine.add("r", ids, SamplingParams(max_tokens=16))
    assert token_ids(drain(engine, chunk_tokens=5)["r"]) == ref[0, len(ids):].tolist()


@needs_onednn
@pytest.mark.parametrize("shape", [(37, 29, 1), (300, 72, 8), (5, 100, 33)])
def test_a_weight_packed_in_parts_gives_the_plain_product(shape):
    n, k, m = shape
    g = torch.Generator().manual_seed(n)
    w, bias, x = (torch.randn(*s, generator=g) for s in ((n, k), (n,), (m, k)))
    rows = [0, n // 3, n // 3 + 1, n] if n > 3 else [0, n]
    parts = tuple(pack_rows(w[a:b]) for a, b in zip(rows, rows[1:]) if b > a)
    sizes = tuple(b - a for a, b in zip(rows, rows[1:]) if b > a)
    sw = SplitWeight.host_only(w)
    packed = SplitWeight(sw.hbm, sw.host, PackedWeight(parts, sizes, w.numel() * 4, torch.float32))
    want = x.double() @ w.double().T + bias.double()
    tol = torch.finfo(torch.float32).eps * math.sqrt(k) * want.abs().max().item()
    for sw_ in (sw, packed):
        torch.testing.assert_close(hybrid_linear(x, sw_, bias).double(), want, rtol=0.0, atol=tol)


@needs_onednn
@pytest.mark.parametrize("native", [
    pytest.param(True, marks=pytest.mark.skipif(not klinear.cpu_has_native(torch.bfloat16),
                                                reason="this CPU has no bf16 instructions")),
    False], ids=["bf16-instructions", "widened"])
def test_a_half_precision_weight_packs_in_its_dtype_or_widened_to_fp32(native, monkeypatch):
    """With the CPU's bf16 instructions a bf16 weight packs as bf16; without them (AVX2 only; on any CPU
    as if so) it packs once widened to fp32, twice the bytes; either gives the product of the bf16 values
    rounded once."""
    if not native:
        monkeypatch.setattr(klinear, "cpu_has_native", lambda dtype: False)
    g = torch.Generator().manual_seed(5)
    w, bias, x = ((torch.randn(*s, generator=g)).to(torch.bfloat16) for s in ((300, 72), (300,), (8, 72)))
    lin = Linear("w", SplitWeight.host_only(w), bias, ReadCounter())
    packer = Packer(1 << 30, part_bytes=16 * 72 * 4)  # parts of 16 fp32 rows: several parts either way
    packer.serve("m", SimpleNamespace(weights=[lin]), "m")  # the one thing a Packer reads of a model
    while packer.work(math.inf):
        pass
    p = lin.weight.packed
    assert p is not None and len(p.parts) > 1
    assert p.dtype == (torch.bfloat16 if native else torch.float32)
    assert p.nbytes == packer.bytes == w.numel() * (2 if native else 4)
    y = hybrid_linear(x, lin.weight, bias)
    assert y.dtype == torch.bfloat16
    want = x.double() @ w.double().T + bias.double()
    # fp32 sums of exact products (error ~1e-7 relative), then one rounding to bf16: ≤ eps/2 of each value
    tol = torch.finfo(torch.bfloat16).eps * want.abs().max().item()
    torch.testing.assert_close(y.double(), want, rtol=0.0, atol=tol)
    # one row (memory-bound) reads the plain weight rather than a widened copy's twice the bytes
    calls = []
    real = klinear._packed_linear
    monkeypatch.setattr(klinear, "_packed_linear", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    for m in (1, 2):
        torch.testing.assert_close(hybrid_linear(x[:m], lin.weight, bias).double(), want[:m], rtol=0.0, atol=tol)
    assert calls == ([1] if native and klinear.packed_min_rows(False) == 1 else []) + [2]


@needs_onednn
@pytest.mark.parametrize("flags", [frozenset(), frozenset({"avx2", "avx512f"})], ids=["avx2", "avx512"])
def test_one_row_reads_the_plain_fp32_weight_where_the_packed_layout_loses(flags, monkeypatch):
    """On AVX2 only, a single row (a GEMV) reads the plain fp32 weight, two rows and more the packed copy;
    with avx512 every row count reads the packed copy (kernels/linear.packed_min_rows, measured there)."""
    monkeypatch.setattr(klinear, "_cpu_flags", lambda: flags)
    g = torch.Generator().manual_seed(9)
    w, x = torch.randn(64, 40, generator=g), torch.randn(3, 40, generator=g)
    sw = SplitWeight.host_only(w)
    sw = SplitWeight(sw.hbm, sw.host, PackedWeight((pack_rows(w),), (64,), w.numel() * 4, torch.float32))
    calls = []
    real = klinear._packed_linear
    monkeypatch.setattr(klinear, "_packed_linear", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    for m in (1, 2, 3):
        want = x[:m].double() @ w.double().T
        tol = torch.finfo(torch.float32).eps * math.sqrt(40) * want.abs().max().item()
        torch.testing.assert_close(hybrid_linear(x[:m], sw).double(), want, rtol=0.0, atol=tol)
    assert calls == ([1, 2, 3] if "avx512f" in flags else [2, 3])


AVX512 = frozenset({"avx2", "avx512f"})


@needs_onednn
@pytest.mark.parametrize("name", ["llama", "qwen2_tied", "mixtral"])
def test_single_rows_through_transposed_copies_give_the_greedy_tokens_of_generate(checkpoints, name, monkeypatch):
    """Every weight with N ≥ K given a transposed copy (the threshold lowered to these small models), a
    decode of one sequence reads them and gives transformers' greedy tokens."""
    monkeypatch.setattr(klinear, "_cpu_flags", lambda: AVX512)
    monkeypatch.setattr(klinear, "GEMV_MIN_ROWS", 1)
    reads = []
    real = klinear._gemv_linear
    monkeypatch.setattr(klinear, "_gemv_linear", lambda *a: reads.append(a[1].shape) or real(*a))
    ck = checkpoints(name)
    ids = prompt(7, 13)
    ref = ck.hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24, min_new_tokens=24)
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=16, block_size=4)
    _pack_all(engine, part_bytes=4096)
    copies = [lin.weight.packed.gemv for lin in engine.model.weights if lin.weight.packed.gemv is not None]
    assert copies and all(c.is_contiguous() for c in copies)
    engine.add("r", ids, SamplingParams(max_tokens=24))
    assert token_ids(drain(engine, chunk_tokens=5)["r"]) == ref[0, len(ids):].tolist()
    assert reads  # the decode steps read them


def _wide_linear(n: int, k: int) -> tuple[Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n + k)
    w, bias = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    return Linear("w", SplitWeight.host_only(w), bias, ReadCounter()), w, bias


@needs_onednn
def test_a_wide_fp32_weight_gets_a_transposed_copy_that_one_row_reads(monkeypatch):
    """With avx512, a wide fp32 weight (N ≥ GEMV_MIN_ROWS, N ≥ K) gets, after its blocked copy, its
    transposed copy, made in parts and counted in the budget; one row reads it, two rows the blocked copy,
    both giving the product; a narrow weight and an AVX2 host get none."""
    monkeypatch.setattr(klinear, "_cpu_flags", lambda: AVX512)
    wide, w, bias = _wide_linear(klinear.GEMV_MIN_ROWS + 37, 48)
    narrow, _, _ = _wide_linear(40, 48)
    packer = Packer(1 << 30, part_bytes=100 * 48 * 4)  # parts of 100 rows: several of each copy
    packer.serve("m", SimpleNamespace(weights=[wide, narrow]), "m")
    assert packer.work(0.0)  # one part, more to come
    while packer.work(math.inf):
        pass
    p = wide.weight.packed
    assert p is not None and len(p.parts) > 1 and p.gemv is not None and torch.equal(p.gemv, w.t())
    assert narrow.weight.packed is not None and narrow.weight.packed.gemv is None
    blocked = (w.numel() + 40 * 48) * 4
    assert packer.bytes == blocked + w.numel() * 4 and packer.share() == 1.0
    x = torch.randn(2, 48, generator=torch.Generator().manual_seed(3))
    want = x.double() @ w.double().T + bias.double()
    tol = torch.finfo(torch.float32).eps * math.sqrt(48) * want.abs().max().item()
    calls = []
    for name in ("_gemv_linear", "_packed_linear"):
        real = getattr(klinear, name)
        monkeypatch.setattr(klinear, name, lambda *a, name=name, real=real: calls.append((name, a[0].shape[0]))
                            or real(*a))
    for m in (1, 2):
        torch.testing.assert_close(hybrid_linear(x[:m], wide.weight, bias).double(), want[:m], rtol=0.0, atol=tol)
    assert calls == [("_gemv_linear", 1), ("_packed_linear", 2)]
    packer.drop("m")
    assert packer.bytes == 0 and wide.weight.packed is None
    monkeypatch.setattr(klinear, "_cpu_flags", lambda: frozenset({"avx2"}))
    packer.serve("m", SimpleNamespace(weights=[wide, narrow]), "m")
    while packer.work(math.inf):
        pass
    assert wide.weight.packed is not None and wide.weight.packed.gemv is None and packer.bytes == blocked


@needs_onednn
def test_a_transposed_copy_that_does_not_fit_is_let_go_and_the_blocked_copy_serves(monkeypatch):
    monkeypatch.setattr(klinear, "_cpu_flags", lambda: AVX512)
    wide, w, bias = _wide_linear(klinear.GEMV_MIN_ROWS + 5, 32)
    blocked = w.numel() * 4
    packer = Packer(blocked + blocked // 2, part_bytes=64 * 32 * 4)  # room for half the transposed copy
    packer.serve("m", SimpleNamespace(weights=[wide]), "m")
    while packer.work(math.inf):
        assert packer.bytes <= packer.budget
    assert wide.weight.packed is not None and wide.weight.packed.gemv is None
    assert packer.bytes == blocked and packer.share() == 1.0
    x = torch.randn(1, 32, generator=torch.Generator().manual_seed(4))
    want = x.double() @ w.double().T + bias.double()
    tol = torch.finfo(torch.float32).eps * math.sqrt(32) * want.abs().max().item()
    torch.testing.assert_close(hybrid_linear(x, wide.weight, bias).double(), want, rtol=0.0, atol=tol)


@needs_onednn
def test_a_transposed_copy_takes_only_free_room_never_another_models_blocked_copies(monkeypatch):
    (a, wa, _), (b, wb, _) = _wide_linear(klinear.GEMV_MIN_ROWS + 3, 32), _wide_linear(klinear.GEMV_MIN_ROWS + 9, 32)
    blocked = (wa.numel() + wb.numel()) * 4
    packer = Packer(blocked + wb.numel() * 2, part_bytes=64 * 32 * 4)  # both blocked copies, half of b's other
    monkeypatch.setattr(klinear, "_cpu_flags", lambda: frozenset({"avx2"}))
    packer.serve("a", SimpleNamespace(weights=[a]), "a")  # a: its blocked copy only
    while packer.work(math.inf):
        pass
    monkeypatch.setattr(klinear, "_cpu_flags", lambda: AVX512)
    packer.serve("b", SimpleNamespace(weights=[b]), "b")
    while packer.work(math.inf):
        assert packer.bytes <= packer.budget
    assert a.weight.packed is not None and b.weight.packed is not None  # a's blocked copy stayed
    assert b.weight.packed.gemv is None and packer.bytes == blocked  # b's transposed one had no free room
