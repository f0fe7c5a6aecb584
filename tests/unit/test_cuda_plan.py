"""The cuda backend's pure parts, on a CPU: HBM budget split, resident rows, the copy schedule, the
registration of a model file (with a fake driver), split-weight bookkeeping through a real engine. The
backend's control flow with CUDA faked: test_cuda_fake_backend.py.

The GPU paths themselves (streams, cuMemHostRegister, HybridGEMM) are tested in tests/gpu.
"""

from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    # as tests/kernels/conftest.py does: triton must see TRITON_INTERPRET at its first import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from c2cq.errors import ConfigError  # noqa: E402
from c2cq.kernels.split import SplitError, WeightShape  # noqa: E402
from c2cq.services.catalog.shm import map_shared  # noqa: E402
from c2cq.services.catalog.synth import write_random  # noqa: E402
from c2cq.services.executor.model import Engine, SamplingParams  # noqa: E402
from c2cq.services.executor.model.batch import FlatBatch  # noqa: E402
from c2cq.services.executor.model.errors import ModelConfigError  # noqa: E402
from c2cq.services.executor.pinned import DEVICEMAP, READ_ONLY, PinError, PinnedFile  # noqa: E402
from c2cq.services.executor.residency import (  # noqa: E402
    EMBED, copied_whole, next_copies, plan_memory, resident_share, target_rows,
)

from .conftest import TINY, FakeDriver  # noqa: E402



# -- which tensors are copied whole ----------------------------------------------------------------
def test_copied_whole_is_norms_biases_and_the_embedding():
    assert copied_whole("model.norm.weight", (64,))
    assert copied_whole("model.layers.0.self_attn.q_proj.bias", (64,))
    assert copied_whole(EMBED, (97, 64))
    assert not copied_whole("lm_head.weight", (97, 64))
    assert not copied_whole("model.layers.0.mlp.experts.gate_up_proj", (4, 80, 64))


# -- the budget ------------------------------------------------------------------------------------
def test_plan_memory_fraction_and_explicit_kv():
    m = plan_memory(10_000, 1_000, 100, kv_fraction=0.25)
    assert (m.fixed, m.kv_blocks, m.kv_bytes, m.weights) == (1_000, 22, 2_200, 6_800)  # 25% of 9000 → 22 blocks
    assert m.spare == 0
    m = plan_memory(10_000, 1_000, 100, kv_bytes=550)
    assert (m.kv_blocks, m.kv_bytes, m.weights) == (5, 500, 8_500)
    m = plan_memory(10_000, 1_000, 100, kv_bytes=10**9)  # more than there is: all of it
    assert m.kv_bytes == 9_000 and m.weights == 0
    m = plan_memory(10_000, 1_000, 100, kv_fraction=0.0)  # at least one block
    assert m.kv_blocks == 1 and m.weights == 8_900


@pytest.mark.parametrize("args", [(1_000, 950, 100), (1_000, 2_000, 100)])
def test_plan_memory_refuses_what_does_not_fit(args):
    with pytest.raises(SplitError, match="holds neither"):
        plan_memory(*args)


@pytest.mark.parametrize("kw", [dict(kv_fraction=1.5), dict(kv_bytes=-1), dict(min_kv_blocks=0)])
def test_plan_memory_bad_arguments(kw):
    with pytest.raises(SplitError):
        plan_memory(10_000, 0, 100, **kw)


# -- resident rows ---------------------------------------------------------------------------------
SHAPES = [WeightShape("q", 896, 896, 2), WeightShape("up", 4864, 896, 2), WeightShape("down", 896, 4864, 2),
          WeightShape("head", 1001, 896, 2)]
TOTAL = sum(w.n * w.row_bytes for w in SHAPES)


def test_target_rows_alpha_one_with_room_is_everything():
    rows = target_rows(SHAPES, 10 * TOTAL, 1.0)
    assert rows == {w.name: w.n for w in SHAPES}  # also 1001 rows, not a multiple of 64


def test_target_rows_alpha_zero_is_nothing():
    assert set(target_rows(SHAPES, 10 * TOTAL, 0.0).values()) == {0}


def test_target_rows_half_is_the_same_share_of_every_weight():
    rows = target_rows(SHAPES, 10 * TOTAL, 0.5, align=64)
    resident = sum(rows[w.name] * w.row_bytes for w in SHAPES)
    assert TOTAL // 2 - 64 * max(w.row_bytes for w in SHAPES) < resident <= TOTAL // 2
    assert all(r % 64 == 0 for r in rows.values())
    assert all(abs(rows[w.name] / w.n - 0.5) < 0.1 for w in SHAPES)


def test_target_rows_capped_by_the_budget():
    budget = TOTAL // 5
    rows = target_rows(SHAPES, budget, 1.0)
    assert sum(rows[w.name] * w.row_bytes for w in SHAPES) <= budget
    assert resident_share(rows, SHAPES) == pytest.approx(0.2, abs=0.02)


def test_target_rows_bad_alpha():
    with pytest.raises(SplitError):
        target_rows(SHAPES, TOTAL, 1.5)


def test_resident_share_counts_whole_weights():
    assert resident_share({}, SHAPES) == 0.0
    assert resident_share({w.name: w.n for w in SHAPES}, SHAPES) == 1.0
    head = 1001 * 896 * 2
    assert resident_share({}, SHAPES, whole_bytes=head) == pytest.approx(head / (TOTAL + head))


# -- the copy schedule -----------------------------------------------------------------------------
def _drain(current, target, row_bytes, order, chunk, align):
    """Apply next_copies until done; every chunk's copies, in order."""
    current, chunks = dict(current), []
    for _ in range(100_000):
        copies = next_copies(current, target, row_bytes, order, chunk, align)
        if not copies:
            return current, chunks
        for c in copies:
            assert c.start == current[c.name] < c.stop <= target[c.name]
            current[c.name] = c.stop
        chunks.append(copies)
    raise AssertionError("the schedule does not finish")


def test_next_copies_reaches_the_target_in_order_and_in_bounded_chunks():
    rb = {w.name: w.row_bytes for w in SHAPES}
    target = {w.name: w.n for w in SHAPES}
    chunk = 64 * 896 * 2 * 5  # five blocks of the narrow weights
    done, chunks = _drain({w.name: 0 for w in SHAPES}, target, rb, [w.name for w in SHAPES], chunk, 64)
    assert done == target
    names = [c.name for cs in chunks for c in cs]
    assert names == sorted(names, key=[w.name for w in SHAPES].index)  # forward order, a weight at a time
    for cs in chunks:
        nbytes = sum((c.stop - c.start) * rb[c.name] for c in cs)
        assert nbytes <= chunk or (len(cs) == 1 and cs[0].stop - cs[0].start <= 64)
        for c in cs:
            assert c.stop == target[c.name] or c.stop % 64 == 0  # partial copies end on a tile boundary


def test_next_copies_progresses_when_one_block_exceeds_the_chunk():
    copies = next_copies({"w": 0}, {"w": 200}, {"w": 10_000}, ["w"], chunk_bytes=1, align=64)
    assert [(c.start, c.stop) for c in copies] == [(0, 64)]
    copies = next_copies({"w": 192}, {"w": 200}, {"w": 10_000}, ["w"], chunk_bytes=1, align=64)
    assert [(c.start, c.stop) for c in copies] == [(192, 200)]


def test_next_copies_nothing_when_at_or_above_target():
    assert next_copies({"a": 64, "b": 128}, {"a": 64, "b": 64}, {"a": 1, "b": 1}, ["a", "b"], 10, 64) == []


def test_next_copies_bad_arguments():
    with pytest.raises(SplitError):
        next_copies({}, {}, {}, [], 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 700), st.integers(1, 300), st.integers(0, 700)), min_size=1, max_size=6),
       st.integers(1, 200_000), st.sampled_from([1, 16, 64]))
def test_next_copies_always_finishes_exactly(spec, chunk, align):
    names = [f"w{i}" for i in range(len(spec))]
    current = {n: min(c, t) for n, (c, _, t) in zip(names, spec)}
    target = {n: t for n, (_, _, t) in zip(names, spec)}
    rb = {n: k * 2 for n, (_, k, _) in zip(names, spec)}
    done, chunks = _drain(current, target, rb, names, chunk, align)
    assert done == target
    for cs in chunks:
        assert sum((c.stop - c.start) * rb[c.name] for c in cs) <= chunk or len(cs) == 1


# -- registering a model file (a fake driver) ------------------------------------------------------
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.c2cqm"
    write_random(path, TINY, {}, dtype="fp32", seed=3, progress=False)
    return path


def _inside(t: torch.Tensor, ptr: int, size: int) -> bool:
    return ptr <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= ptr + size


def test_pinned_file_registers_the_read_only_mapping_whole(model_file):
    drv = FakeDriver()
    pf = PinnedFile(model_file, drv)
    (ptr, (size, flags)), = drv.registered.items()
    assert pf.read_only and flags & READ_ONLY and flags & DEVICEMAP
    assert size == -(-model_file.stat().st_size // 4096) * 4096 and ptr % 4096 == 0
    ref = map_shared(model_file).tensors()
    got = pf.tensors()
    assert set(got) == set(ref)
    for name, t in got.items():
        assert torch.equal(t, ref[name]) and _inside(t, ptr, size), name
    pf.close()
    assert drv.registered == {} and drv.calls[-1] == ("unregister", ptr)
    with pytest.raises(PinError, match="no longer registered"):
        pf.tensors()


def test_pinned_file_falls_back_to_a_writable_shared_mapping(model_file):
    drv = FakeDriver(refuse_read_only=True)
    pf = PinnedFile(model_file, drv)
    assert not pf.read_only
    (ptr, (size, flags)), = drv.registered.items()
    assert not flags & READ_ONLY and size == -(-model_file.stat().st_size // 4096) * 4096
    ref = map_shared(model_file).tensors()
    for name, t in pf.tensors().items():
        assert torch.equal(t, ref[name]) and _inside(t, ptr, size), name  # views of the registered mapping
    pf.close()
    assert drv.registered == {}


def test_pinned_file_says_why_when_both_registrations_fail(model_file):
    drv = FakeDriver(refuse_all=True)
    with pytest.raises(PinError, match="read-only mapping: CUDA_ERROR_NOT_SUPPORTED.*writable mapping"):
        PinnedFile(model_file, drv)
    assert drv.registered == {}


# -- the backend without a GPU ---------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_backend_without_a_gpu_says_so():
    from c2cq.services.executor.cuda import CudaBackend

    with pytest.raises(ConfigError, match="needs a CUDA device.*--backend cpu"):
        CudaBackend()


def test_torch_device_of_an_executor_device_string():
    from c2cq.services.executor.cuda import torch_device

    assert torch_device("cuda:1") == torch.device("cuda", 1)
    assert torch_device("cuda") == torch.device("cuda", 0)
    assert torch_device("MIG-1b2c3d4e-aaaa-bbbb-cccc-000000000000") == torch.device("cuda", 0)
    assert torch_device("GPU-0f0f") == torch.device("cuda", 0)


# -- split weights through a real engine (on the CPU: both parts are host memory) ------------------
def _logits(engine: Engine, ids: list[int]) -> torch.Tensor:
    table = engine.cache.new_table()
    table.grow(engine.cache.allocator, len(ids))
    try:
        return engine.model.forward(FlatBatch.build([(ids, 0, table)], [True]), engine.cache)[0]
    finally:
        table.release(engine.cache.allocator)


def test_residency_bookkeeping_on_a_cpu_engine(model_file):
    """The backend's _Residency on CPU tensors: fill, shrink and resplit keep the logits; α and byte counts follow."""
    from c2cq.services.executor.cuda_rows import Residency as _Residency
    from c2cq.services.executor.residency import MemoryPlan

    mf = map_shared(model_file)
    ids = [5, 17, 3, 88, 41, 2, 9]
    ref = _logits(Engine(mf.config, mf.tensors(), None, kv_blocks=4, block_size=16), ids)
    res = _Residency(torch.device("cpu"), MemoryPlan(10**9, 0, 1, 0, 10**9), align=16)
    engine = Engine(mf.config, mf.tensors(), None, kv_blocks=4, block_size=16, make_linear=res.make_linear)
    res.bind(engine)
    assert res.alpha == 0.0 and len(res.weights) == 2 * 7 + 1
    for alpha in (0.5, 1.0, 0.25, 0.0):
        res.plan(alpha)
        res.shrink()
        res.fill_now()
        assert not res.pending
        assert res.alpha == pytest.approx(alpha, abs=0.1)
        for w in res.weights.values():
            assert w.linear.weight.hbm.shape[0] == w.rows == res.target[w.name]
            assert w.buf is None or w.buf.shape[0] == w.rows  # no spare capacity left behind
        torch.testing.assert_close(_logits(engine, ids), ref, rtol=1e-5, atol=1e-5)
        # bytes a step reads from host memory: exactly the non-resident rows of every linear weight
        engine.add("r", ids, SamplingParams(max_tokens=1))
        engine.step(64)
        host = sum((w.host.shape[0] - w.rows) * w.shape.row_bytes for w in res.weights.values())
        assert engine.last_stats.weight_bytes_host == host
        assert engine.last_stats.weight_bytes > host


def test_resplit_refuses_another_weight(model_file):
    mf = map_shared(model_file)
    engine = Engine(mf.config, mf.tensors(), None, kv_blocks=4, block_size=16)
    lin = next(iter(engine.model.weights))
    other = next(li for li in engine.model.weights if li.weight.n != lin.weight.n)
    with pytest.raises(ModelConfigError, match="changes the weight"):
        lin.resplit(other.weight)
