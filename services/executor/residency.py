"""The cuda backend's HBM, planned in pure Python: the budget split, resident rows, the copy schedule.

A slice's HBM budget holds, in this order: the tensors every step reads whole (the embedding table,
norms, biases: copied at a switch), the paged KV cache, and the resident rows of the linear weights.
Resident rows follow kernels/split.py: every weight holds the same share (the plan's α, capped by
what the budget leaves) in whole ``align``-row tiles. After a switch the rows are copied in the
forward pass's order, a bounded chunk at a time, so the first layers reach their share first and a
plan change takes effect within one chunk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from c2cq.kernels.split import DEFAULT_ALIGN, SplitError, WeightShape, plan_model

EMBED = "model.embed_tokens.weight"


def copied_whole(name: str, shape: Sequence[int]) -> bool:
    """Tensors a switch copies into HBM whole: every 1-D tensor (norms, biases) and the embedding table.

    Everything else (2-D and fused 3-D) is a linear weight: split by rows, the rest read from host memory.
    """
    return len(shape) <= 1 or name == EMBED


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """How one model uses the slice's HBM budget (bytes)."""

    budget: int
    fixed: int  # tensors copied whole at the switch
    kv_blocks: int
    kv_bytes: int
    weights: int  # left for resident rows of the linear weights

    @property
    def spare(self) -> int:
        return self.budget - self.fixed - self.kv_bytes - self.weights


def plan_memory(budget: int, fixed_bytes: int, block_bytes: int, *, kv_fraction: float = 0.25,
                kv_bytes: int | None = None, min_kv_blocks: int = 1) -> MemoryPlan:
    """Split ``budget`` into the whole-copied tensors, the KV cache and the resident weight rows.

    The KV cache takes ``kv_bytes`` when given, else ``kv_fraction`` of what the fixed tensors leave,
    in whole blocks, at least ``min_kv_blocks``; the weights get the rest. SplitError when the fixed
    tensors and the smallest KV cache do not fit.
    """
    if block_bytes <= 0 or min_kv_blocks < 1:
        raise SplitError(f"bad KV block size {block_bytes} or minimum {min_kv_blocks}")
    if not 0.0 <= kv_fraction <= 1.0:
        raise SplitError(f"kv_fraction {kv_fraction} outside [0, 1]")
    if kv_bytes is not None and kv_bytes < 0:
        raise SplitError(f"kv_bytes {kv_bytes} < 0")
    free = budget - fixed_bytes
    if free < min_kv_blocks * block_bytes:
        raise SplitError(f"HBM budget {budget} bytes holds neither the {fixed_bytes} bytes of embeddings, norms and "
                         f"biases plus {min_kv_blocks} KV block(s) of {block_bytes} bytes")
    want = kv_bytes if kv_bytes is not None else int(free * kv_fraction)
    blocks = max(min_kv_blocks, min(want, free) // block_bytes)
    kv = blocks * block_bytes
    return MemoryPlan(budget=budget, fixed=fixed_bytes, kv_blocks=blocks, kv_bytes=kv, weights=free - kv)


def target_rows(shapes: Sequence[WeightShape], weight_budget: int, alpha: float,
                align: int = DEFAULT_ALIGN) -> dict[str, int]:
    """Rows of each weight to hold in HBM: the plan's α share of the linear bytes, capped by ``weight_budget``.

    α = 1 with room for everything gives every weight all its rows (the plain HBM GEMM everywhere).
    """
    if not 0.0 <= alpha <= 1.0:
        raise SplitError(f"alpha {alpha} outside [0, 1]")
    total = sum(w.n * w.row_bytes for w in shapes)
    wanted = total if alpha >= 1.0 else int(alpha * total)
    plan = plan_model(shapes, max(0, min(weight_budget, wanted)), align)
    return {name: p.split_rows for name, p in plan.plans.items()}


@dataclass(frozen=True, slots=True)
class Copy:
    """Rows [start, stop) of weight ``name`` to copy from host memory into HBM."""

    name: str
    start: int
    stop: int


def next_copies(current: Mapping[str, int], target: Mapping[str, int], row_bytes: Mapping[str, int],
                order: Sequence[str], chunk_bytes: int, align: int = DEFAULT_ALIGN) -> list[Copy]:
    """The next chunk of copies toward ``target``: at most ``chunk_bytes``, weights in ``order``.

    A weight is finished before the next one starts; a partial copy ends on an ``align``-row boundary
    of the weight. At least one ``align``-row block is returned while any weight is below its target,
    so progress never stalls on a chunk smaller than one block. Weights at or above target are skipped
    (shrinking is immediate and not a copy).
    """
    if chunk_bytes <= 0 or align <= 0:
        raise SplitError(f"chunk_bytes {chunk_bytes} and align {align} must be positive")
    out: list[Copy] = []
    left = chunk_bytes
    for name in order:
        cur, tgt = current[name], target.get(name, 0)
        if cur >= tgt:
            continue
        rb = row_bytes[name]
        rows = tgt - cur
        n = min(rows, left // rb) if rb else rows
        if n < rows:
            n = (cur + n) // align * align - cur  # a partial copy ends on a block boundary of this weight
            if n <= 0:
                if out:
                    break
                n = min(rows, align - cur % align)  # always make progress
        out.append(Copy(name, cur, cur + n))
        left -= n * rb
        if n < rows or left <= 0:
            break
    return out


def resident_share(current: Mapping[str, int], shapes: Sequence[WeightShape], whole_bytes: int = 0) -> float:
    """α as the scheduler sees it: resident bytes of the linear weights over all their bytes.

    ``whole_bytes`` counts linear weights held whole outside the split (a tied lm_head is the
    embedding table, already in HBM): resident, and part of the total.
    """
    total = whole_bytes + sum(w.n * w.row_bytes for w in shapes)
    resident = whole_bytes + sum(current.get(w.name, 0) * w.row_bytes for w in shapes)
    return resident / total if total else 1.0
