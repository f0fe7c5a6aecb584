"""Which rows of a weight are HBM-resident: the split for one weight and for a whole model.

Pure Python. HybridGEMM picks each row's source by itself, so any split is correct; rounding the
split to ``align`` rows only keeps the HBM part in whole tiles (fewer mixed tiles, aligned slices).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from c2cq.errors import C2CQError

DEFAULT_ALIGN = 64  # the widest BLOCK_N the decode configs use


class SplitError(C2CQError, ValueError):
    """An α, a budget or a weight shape is out of range."""

    code = "bad_split"


@dataclass(frozen=True, slots=True)
class SplitPlan:
    """Rows [0, split_rows) of an N × K weight live in HBM, the rest in host memory."""

    n: int
    k: int
    elem_bytes: int
    split_rows: int

    @property
    def alpha(self) -> float:
        return self.split_rows / self.n if self.n else 1.0

    @property
    def hbm_bytes(self) -> int:
        return self.split_rows * self.k * self.elem_bytes

    @property
    def host_bytes(self) -> int:
        return (self.n - self.split_rows) * self.k * self.elem_bytes


@dataclass(frozen=True, slots=True)
class WeightShape:
    """A named linear weight of ``n`` output rows and ``k`` inputs."""

    name: str
    n: int
    k: int
    elem_bytes: int

    @property
    def row_bytes(self) -> int:
        return self.k * self.elem_bytes


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """One SplitPlan per weight, in the order given, for a byte budget."""

    budget_bytes: int
    plans: dict[str, SplitPlan]

    @property
    def hbm_bytes(self) -> int:
        return sum(p.hbm_bytes for p in self.plans.values())

    @property
    def host_bytes(self) -> int:
        return sum(p.host_bytes for p in self.plans.values())

    @property
    def alpha(self) -> float:
        total = self.hbm_bytes + self.host_bytes
        return self.hbm_bytes / total if total else 1.0


def _check_shape(n: int, k: int, elem_bytes: int, align: int) -> None:
    if n < 0 or k < 0 or elem_bytes <= 0 or align <= 0:
        raise SplitError(f"bad weight shape n={n} k={k} elem_bytes={elem_bytes} align={align}")


def split_rows(n: int, alpha: float, align: int = DEFAULT_ALIGN) -> int:
    """Rows resident in HBM for knob α: α·N rounded to the nearest multiple of ``align``, clamped to [0, N].

    α = 1 always gives N (the whole weight, also when N is not a multiple of ``align``).
    """
    if not 0.0 <= alpha <= 1.0:
        raise SplitError(f"alpha {alpha} outside [0, 1]")
    _check_shape(n, 1, 1, align)
    if alpha == 1.0:
        return n
    rows = int(round(alpha * n / align)) * align
    return max(0, min(n, rows))


def plan_split(n: int, k: int, alpha: float, elem_bytes: int, align: int = DEFAULT_ALIGN) -> SplitPlan:
    """The split of one N × K weight for knob α."""
    _check_shape(n, k, elem_bytes, align)
    return SplitPlan(n=n, k=k, elem_bytes=elem_bytes, split_rows=split_rows(n, alpha, align))


def plan_model(weights: Sequence[WeightShape], budget_bytes: int, align: int = DEFAULT_ALIGN) -> ModelPlan:
    """Rows of each weight that become resident for an HBM byte budget.

    Every weight gets the same share α = budget / total (floored to ``align`` rows, so the plan never
    exceeds the budget); what the flooring leaves is then spent ``align`` rows at a time on the
    weights in the order given (the forward pass's order), finishing a weight's tail where it fits.
    """
    if budget_bytes < 0:
        raise SplitError(f"budget {budget_bytes} < 0")
    names = [w.name for w in weights]
    if len(set(names)) != len(names):
        raise SplitError("weight names must be unique")
    for w in weights:
        _check_shape(w.n, w.k, w.elem_bytes, align)
    total = sum(w.n * w.row_bytes for w in weights)
    if total <= budget_bytes:
        return ModelPlan(budget_bytes, {w.name: SplitPlan(w.n, w.k, w.elem_bytes, w.n) for w in weights})
    alpha = budget_bytes / total if total else 1.0
    rows = {w.name: min(w.n, int(alpha * w.n) // align * align) for w in weights}
    left = budget_bytes - sum(rows[w.name] * w.row_bytes for w in weights)
    for w in weights:
        extra = min(w.n - rows[w.name], left // w.row_bytes if w.row_bytes else 0)
        if rows[w.name] + extra < w.n:
            extra = extra // align * align
        rows[w.name] += extra
        left -= extra * w.row_bytes
    return ModelPlan(budget_bytes, {w.name: SplitPlan(w.n, w.k, w.elem_bytes, rows[w.name]) for w in weights})
