"""A CPU slice's α: private packed copies of the linear weights of the models it serves.

On a GPU, α is the share of a model's weights resident in the slice's HBM (a private copy), the rest
streamed from shared host memory. On a CPU slice the analog is oneDNN's blocked weight layout: a
private copy per slice that the GEMMs read faster than the catalog's shared plain pages
(kernels/linear.py, measured there). A switch serves at once from the plain pages; packing then runs
between steps, a bounded amount at a time (``Packer.work``), and every weight switches from plain to
packed between two steps once all its parts are made (the two give the same products within
rounding). Once every weight of the model has its blocked copy, the wide fp32 ones get a second, transposed
copy that single rows read faster (kernels/linear.gemv_copy, measured there), made the same way. The
packed copies of all models fit in one budget per slice; the served model takes room from the least
recently served one, whose weights go back to the plain pages.

Packing on a thread beside the steps disturbs them more on a slice of one core: the thread takes the
core (and the GIL) from the step for as long as it packs, at times the step cannot choose. Measured
(SmolLM2-135M fp32, batch 8, one core, a loaded machine: plain steps ~120 ms, packed ~100 ms): on a
thread, 4 steps ran while it packed, median 363 ms, max 607 ms; in the step's thread, a PACK_SHARE of
each step, 17 steps, median 188 ms, max 300 ms. So it runs in the step's thread: after a decode-only
step (never delaying a first token), and while the slice is idle (a request that comes then waits for
the one part being packed, ≤ ~7 ms: PART_BYTES).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

import torch

from c2cq import log
from c2cq.kernels.linear import PackedWeight, can_pack, gemv_copy, pack_rows, packed_dtype, transposed_cols
from c2cq.services.executor.model.model import Model
from c2cq.services.executor.model.weights import Linear

# Packed copies one slice may hold, all models together. SmolLM2-135M holds 540 MB in fp32 (its tied
# lm_head packed apart from the embedding it reads; with avx512 391 MB more transposed: the lm_head and
# each layer's fused q/k/v and gate/up weights), 270 MB in bf16 (540 MB widened to fp32 on a CPU without
# bf16 instructions, kernels/linear.packed_dtype): both fit, with room to spare.
DEFAULT_PACKED_BYTES = 2 << 30
# A weight is packed in parts of at most this many bytes (of the packed copy), one part per call at least: what a
# request that comes while the slice packs at idle waits for (a switch too: bench/switch_latency.py's
# switch overhead, medians of 3 on a loaded VM, was 3-24 ms with 16 MB parts against 1-6 ms plain).
# Measured (one thread, here; the 49152×576 lm_head at M=8, median of 7, whole → in parts): fp32 10.9 →
# 12.8 ms in 14 parts of 8 MB (6.6 ms each to pack), 12.4 ms in 7 of 16 MB (11.4 ms each), 15.3 ms in
# 28 of 4 MB; bf16 6.4 → 7.2 / 6.4 / 6.0 ms (6.5-6.8 ms each to pack, 8 and 16 MB).
PART_BYTES = 8 << 20
# After a decode step, packing goes on for this share of the step's time (at least one part): a model
# packs within ~4× its packing time of serving (SmolLM2 fp32: ~0.5 s of packing) while no step is
# delayed by much more than a quarter.
PACK_SHARE = 0.25


@dataclass(eq=False)
class _Pack:
    """One model's packing: the weights still to pack, in forward order, and the parts made so far; then
    the transposed copies that single rows read (``gemv_copy``), once every blocked copy is made."""

    label: str
    linears: list[Linear]
    todo: list[Linear] = field(default_factory=list)
    parts: list = field(default_factory=list)  # (rows, packed tensor) of todo[0] made so far
    parts_bytes: int = 0  # the bytes they hold
    packed: int = 0  # bytes held by the packed copies of the weights switched to them
    gemv_todo: list[Linear] = field(default_factory=list)  # packed weights whose transposed copy is to make
    gemv: torch.Tensor | None = None  # gemv_todo[0]'s copy, its first gemv_rows columns made
    gemv_rows: int = 0
    gemv_bytes: int = 0  # bytes of the transposed copies held (whole ones, and the one being made)
    total: int = 0
    spent_s: float = 0.0
    reported: bool = False


def _packable(model: Model) -> list[Linear]:
    return [lin for lin in model.weights
            if lin.weight.hbm.shape[0] == 0 and lin.weight.host.device.type == "cpu"
            and lin.weight.host.dim() == 2 and can_pack(lin.weight.host.dtype)]


def _row_bytes(lin: Linear) -> int:
    """Bytes of one row of ``lin``'s packed copy (fp32's where a half-precision weight is widened)."""
    w = lin.weight.host
    return w.shape[1] * packed_dtype(w.dtype).itemsize


def _packed_bytes(lin: Linear) -> int:
    return lin.weight.host.shape[0] * _row_bytes(lin)


class Packer:
    """Packed copies of the weights of the models a slice served, least recently served first."""

    def __init__(self, budget_bytes: int = DEFAULT_PACKED_BYTES, part_bytes: int = PART_BYTES) -> None:
        self.budget, self.part_bytes = max(0, budget_bytes), max(1, part_bytes)
        self._packs: dict[object, _Pack] = {}  # by owner (the slice's held model), least recent first
        self._current: object | None = None
        self._lock = threading.Lock()  # work runs in the step's thread; drop in a preload's or evict's

    @property
    def bytes(self) -> int:
        """Bytes of the packed copies held (weights switched and parts made)."""
        return sum(p.packed + p.parts_bytes + p.gemv_bytes for p in self._packs.values())

    def serve(self, owner: object, model: Model, label: str) -> None:
        """``model`` (held by ``owner``) is served from now on: the most recent; its packing resumes."""
        with self._lock:
            pack = self._packs.pop(owner, None) or _Pack(label, _packable(model))
            self._packs[owner] = pack
            self._current = owner
            if not pack.todo and not pack.parts and not pack.gemv_todo:
                pack.todo = [lin for lin in pack.linears if lin.weight.packed is None]
                pack.total = sum(_packed_bytes(lin) for lin in pack.linears)
                pack.gemv_todo = [lin for lin in pack.linears if lin.weight.packed is not None
                                  and lin.weight.packed.gemv is None and gemv_copy(lin.weight.host)]

    def share(self, owner: object | None = None) -> float:
        """α of ``owner``'s model (default: the one served): packed bytes over its packable bytes."""
        pack = self._packs.get(self._current if owner is None else owner)
        return pack.packed / pack.total if pack is not None and pack.total else 0.0

    def drop(self, owner: object) -> None:
        """Forget ``owner``'s packed copies: its weights read the plain pages again."""
        with self._lock:
            pack = self._packs.pop(owner, None)
            if owner is self._current:
                self._current = None
            if pack is not None:
                _unpack(pack)

    def work(self, seconds: float) -> bool:
        """Pack parts of the served model's weights, at least one and for ``seconds``; False when none is
        left to pack (all packed, or the budget holds no more)."""
        t0 = time.perf_counter()
        with self._lock:
            pack = self._packs.get(self._current) if self._current is not None else None
            if pack is None:
                return False
            while pack.todo or pack.gemv_todo:  # one part an iteration: blocked copies first, then transposed
                if pack.todo:
                    if not self._pack_part(pack):
                        pack.todo, pack.parts, pack.parts_bytes = [], [], 0  # out of room: the rest stays plain
                        pack.gemv_todo = []
                        break
                elif not self._gemv_part(pack):
                    _drop_gemv_part(pack)  # out of room: the rest reads the blocked copies
                    pack.gemv_todo = []
                    break
                if time.perf_counter() - t0 >= seconds:
                    break
            pack.spent_s += time.perf_counter() - t0
            if not pack.todo and not pack.gemv_todo and not pack.reported:
                pack.reported = True
                log.get().info("packed", model=pack.label, share=round(self.share(), 4), bytes=pack.packed,
                               gemv_bytes=pack.gemv_bytes, seconds=round(pack.spent_s, 3), held=self.bytes,
                               budget=self.budget)
            return bool(pack.todo or pack.gemv_todo)

    def _pack_part(self, pack: _Pack) -> bool:
        lin = pack.todo[0]
        w = lin.weight.host
        row_bytes = _row_bytes(lin)
        per = max(1, self.part_bytes // max(row_bytes, 1))
        n_parts = -(-w.shape[0] // per)
        rows = -(-w.shape[0] // n_parts)  # parts of (nearly) equal rows
        start = sum(r for r, _ in pack.parts)
        stop = min(start + rows, w.shape[0])
        if not self._make_room((stop - start) * row_bytes):
            return False
        pack.parts.append((stop - start, pack_rows(w[start:stop])))
        pack.parts_bytes += (stop - start) * row_bytes
        if stop == w.shape[0]:
            lin.resplit(replace(lin.weight, packed=PackedWeight(
                tuple(t for _, t in pack.parts), tuple(r for r, _ in pack.parts), _packed_bytes(lin),
                packed_dtype(w.dtype))))
            pack.packed += _packed_bytes(lin)
            pack.todo.pop(0)
            pack.parts, pack.parts_bytes = [], 0
            if gemv_copy(w):
                pack.gemv_todo.append(lin)
        return True

    def _gemv_part(self, pack: _Pack) -> bool:
        """Columns of gemv_todo[0]'s transposed copy, about a part's bytes; the weight reads it once whole.
        Only in room the budget has free: a faster single row is not worth another model's blocked copies."""
        lin = pack.gemv_todo[0]
        w = lin.weight.host
        n, k = w.shape
        row_bytes = k * w.element_size()  # fp32: gemv_copy
        stop = min(n, pack.gemv_rows + max(1, self.part_bytes // row_bytes))
        part_bytes = (stop - pack.gemv_rows) * row_bytes
        if self.bytes + part_bytes > self.budget:
            return False
        if pack.gemv is None:
            pack.gemv = torch.empty((k, n), dtype=w.dtype)  # pages taken as the parts write them
        transposed_cols(w, pack.gemv, pack.gemv_rows, stop)
        pack.gemv_bytes += part_bytes
        pack.gemv_rows = stop
        if stop == n:
            lin.resplit(replace(lin.weight, packed=replace(lin.weight.packed, gemv=pack.gemv)))
            pack.gemv_todo.pop(0)
            pack.gemv, pack.gemv_rows = None, 0
        return True

    def _make_room(self, nbytes: int) -> bool:
        """Unpack the least recently served other models until ``nbytes`` more fit; False if they cannot."""
        held = self.bytes
        for owner in list(self._packs):
            if held + nbytes <= self.budget:
                break
            if owner is self._current:
                continue
            pack = self._packs.pop(owner)
            held -= pack.packed + pack.parts_bytes + pack.gemv_bytes
            _unpack(pack)
        return held + nbytes <= self.budget


def _unpack(pack: _Pack) -> None:
    for lin in pack.linears:
        if lin.weight.packed is not None:
            lin.resplit(replace(lin.weight, packed=None))
    pack.todo, pack.parts, pack.parts_bytes, pack.packed = [], [], 0, 0
    pack.gemv_todo, pack.gemv, pack.gemv_rows, pack.gemv_bytes = [], None, 0, 0


def _drop_gemv_part(pack: _Pack) -> None:
    """Let go of a transposed copy not yet whole (the weight never read it)."""
    if pack.gemv is not None:
        pack.gemv_bytes -= pack.gemv_rows * pack.gemv.shape[0] * pack.gemv.element_size()
        pack.gemv, pack.gemv_rows = None, 0
