"""Split planning (pure): one weight for a knob α, a whole model for a byte budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from c2cq.kernels.split import SplitError, WeightShape, plan_model, plan_split, split_rows


def test_split_rows_rounds_to_align_and_clamps():
    assert split_rows(4864, 0.0) == 0
    assert split_rows(4864, 1.0) == 4864
    assert split_rows(4864, 0.5) == 2432  # 38 tiles of 64
    assert split_rows(100, 0.99, align=64) == 100  # round(1.55) = 2 tiles = 128 rows, clamped to N
    assert split_rows(100, 0.3, align=64) == 0
    assert split_rows(100, 0.3, align=1) == 30


def test_plan_split_bytes():
    p = plan_split(896, 4864, 0.25, elem_bytes=2, align=64)
    assert p.split_rows == 256  # 0.25·896 = 224 rows = 3.5 tiles → 4 tiles
    assert p.hbm_bytes == p.split_rows * 4864 * 2
    assert p.hbm_bytes + p.host_bytes == 896 * 4864 * 2
    assert p.alpha == p.split_rows / 896


@pytest.mark.parametrize("alpha", [-0.1, 1.01, float("nan")])
def test_bad_alpha(alpha):
    with pytest.raises(SplitError):
        split_rows(10, alpha)


def test_bad_shapes_and_budget():
    with pytest.raises(SplitError):
        plan_split(-1, 4, 0.5, 2)
    with pytest.raises(SplitError):
        plan_model([WeightShape("a", 4, 4, 2)], -1)
    with pytest.raises(SplitError):
        plan_model([WeightShape("a", 4, 4, 2), WeightShape("a", 4, 4, 2)], 10)


def test_plan_model_whole_model_fits():
    ws = [WeightShape("q", 896, 896, 2), WeightShape("up", 4864, 896, 2)]
    plan = plan_model(ws, budget_bytes=10**9)
    assert plan.alpha == 1.0 and plan.host_bytes == 0


def test_plan_model_half_budget():
    ws = [WeightShape("up", 4864, 896, 2), WeightShape("down", 896, 4864, 2)]
    total = sum(w.n * w.k * w.elem_bytes for w in ws)
    plan = plan_model(ws, budget_bytes=total // 2)
    assert plan.hbm_bytes <= total // 2
    assert plan.hbm_bytes > total // 2 - 64 * 4864 * 2  # within one tile of rows of the budget
    assert 0.45 < plan.alpha <= 0.5


weights = st.lists(
    st.builds(WeightShape, name=st.uuids().map(str), n=st.integers(0, 5000), k=st.integers(1, 5000),
              elem_bytes=st.sampled_from([1, 2, 4])),
    min_size=1, max_size=8,
)  # fmt: skip


@given(weights, st.integers(0, 2 * 10**8), st.sampled_from([1, 16, 64, 128]))
def test_plan_model_properties(ws, budget, align):
    plan = plan_model(ws, budget, align)
    assert plan.hbm_bytes <= budget
    for w in ws:
        p = plan.plans[w.name]
        assert 0 <= p.split_rows <= w.n
        assert p.split_rows == w.n or p.split_rows % align == 0
    total = sum(w.n * w.k * w.elem_bytes for w in ws)
    assert plan.hbm_bytes + plan.host_bytes == total
    if total <= budget:
        assert plan.host_bytes == 0
    else:  # no whole tile (align rows) of any unfinished weight would still fit
        left = budget - plan.hbm_bytes
        for w in ws:
            p = plan.plans[w.name]
            if p.split_rows < w.n and w.n - p.split_rows >= align:
                assert left < align * w.k * w.elem_bytes


@given(st.integers(0, 100000), st.floats(0, 1), st.sampled_from([1, 16, 64]))
def test_split_rows_properties(n, alpha, align):
    r = split_rows(n, alpha, align)
    assert 0 <= r <= n
    assert r == n or r % align == 0
    assert abs(r - alpha * n) <= align  # nearest tile multiple, or clamped to N
