"""The cuda backend's resident rows: for each split linear weight of one engine, the rows it holds in
HBM, the rows the plan's α asks for, and the host → HBM copies (on a copy stream, committed between
steps) or drops that move one toward the other. The backend (services/executor/cuda.py) owns the
threads and the lock; the plan's arithmetic is services/executor/residency.py's."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from c2cq.kernels.linear import SplitWeight
from c2cq.kernels.split import WeightShape
from c2cq.services.executor.model import Engine
from c2cq.services.executor.model.weights import Linear
from c2cq.services.executor.residency import MemoryPlan, next_copies, resident_share, target_rows


@dataclass(slots=True)
class Weight:
    """One split linear weight: rows [0, rows) in ``buf`` (HBM), the rest read from ``host``."""

    name: str
    host: torch.Tensor  # the whole N × K weight: a view of the pinned mapping
    buf: torch.Tensor | None  # HBM rows; capacity buf.shape[0] ≥ rows
    rows: int
    linear: Linear | None = None

    @property
    def shape(self) -> WeightShape:
        return WeightShape(self.name, self.host.shape[0], self.host.shape[1], self.host.element_size())

    def split(self, device: torch.device) -> SplitWeight:
        if self.buf is not None:
            hbm = self.buf[: self.rows]
        else:
            hbm = torch.empty((0, self.host.shape[1]), dtype=self.host.dtype, device=device)
        return SplitWeight(hbm=hbm, host=self.host[self.rows:])


@dataclass(slots=True)
class Inflight:
    """Copies issued on the copy stream, committed (swapped in) once ``event`` has completed."""

    event: torch.cuda.Event
    moves: list[tuple[Weight, torch.Tensor, int]]  # weight, its new HBM buffer, rows resident after


class Residency:
    """One engine's split weights: the rows each holds in HBM, its target, and the copies toward it."""

    def __init__(self, device: torch.device, mem: MemoryPlan, align: int) -> None:
        self.device, self.mem, self.align = device, mem, align
        self.weights: dict[str, Weight] = {}  # in the order the model asked for them (its forward order)
        self.whole_bytes = 0  # linear weights already whole in HBM (a tied lm_head is the embedding)
        self.target: dict[str, int] = {}
        self.alpha_planned: float | None = None
        self.stalled_at: float | None = None  # the plan under which a copy failed: not retried until it changes
        self.alpha = 0.0
        self.commits = 0

    # -- building (the engine's make_linear) -------------------------------------------------------
    def make_linear(self, name: str, tensor: torch.Tensor) -> SplitWeight:
        if tensor.device.type == "cuda":  # copied whole at the switch (the embedding, as a tied lm_head)
            self.whole_bytes += tensor.numel() * tensor.element_size()
            return SplitWeight(hbm=tensor, host=tensor[tensor.shape[0]:])
        w = Weight(name, tensor, None, 0)
        self.weights[name] = w
        return w.split(self.device)

    def bind(self, engine: Engine) -> None:
        for lin in engine.model.weights:
            if lin.name in self.weights:
                self.weights[lin.name].linear = lin
        self._update_alpha()

    # -- planning -------------------------------------------------------------------------------
    def plan(self, alpha: float) -> None:
        self.target = target_rows([w.shape for w in self.weights.values()], self.mem.weights, alpha, self.align)
        self.alpha_planned = alpha

    @property
    def pending(self) -> bool:
        return any(w.rows != self.target.get(n, 0) or (w.buf is not None and w.buf.shape[0] > self.target.get(n, 0))
                   for n, w in self.weights.items())

    def _update_alpha(self) -> None:
        self.alpha = resident_share({n: w.rows for n, w in self.weights.items()},
                                    [w.shape for w in self.weights.values()], self.whole_bytes)

    # -- moving rows (the caller holds the backend's lock: no step runs) ---------------------------
    def fill_now(self) -> None:
        """Copy every weight up to its target on the compute stream, in stream order (before the next step)."""
        for w in self.weights.values():
            tgt = self.target.get(w.name, 0)
            if tgt > w.rows:
                buf = torch.empty((tgt, w.host.shape[1]), dtype=w.host.dtype, device=self.device)
                if w.rows:
                    buf[: w.rows].copy_(w.buf[: w.rows])
                buf[w.rows: tgt].copy_(w.host[w.rows: tgt], non_blocking=True)
                w.buf, w.rows = buf, tgt
                w.linear.resplit(w.split(self.device))
        self._update_alpha()

    def shrink(self) -> bool:
        """Drop resident rows above target and free spare capacity, now; True if anything changed."""
        changed = False
        for w in self.weights.values():
            tgt = self.target.get(w.name, 0)
            if w.buf is None or (w.rows <= tgt and w.buf.shape[0] <= max(tgt, w.rows)):
                continue
            keep = min(w.rows, tgt)
            w.buf = w.buf[:keep].clone() if keep else None
            w.rows = keep
            w.linear.resplit(w.split(self.device))
            changed = True
        if changed:
            self._update_alpha()
            self.commits += 1
        return changed

    def issue(self, chunk_bytes: int, stream: torch.cuda.Stream) -> Inflight | None:
        """Queue the next chunk of host → HBM copies on ``stream``; None when every weight is at target."""
        copies = next_copies({n: w.rows for n, w in self.weights.items()}, self.target,
                             {n: w.shape.row_bytes for n, w in self.weights.items()}, list(self.weights),
                             chunk_bytes, self.align)
        if not copies:
            return None
        compute = torch.cuda.current_stream(self.device)
        moves = []
        for c in copies:
            w = self.weights[c.name]
            buf = w.buf
            if buf is None or buf.shape[0] < c.stop:  # grow to the target once; keep the resident rows
                buf = torch.empty((self.target[c.name], w.host.shape[1]), dtype=w.host.dtype, device=self.device)
                if w.rows:
                    buf[: w.rows].copy_(w.buf[: w.rows])  # on the compute stream, ahead of later steps
            moves.append((w, buf, c.stop))
        # New buffers may reuse memory the compute stream's queued work still reads: copy after it.
        stream.wait_stream(compute)
        with torch.cuda.stream(stream):
            for (w, buf, stop), c in zip(moves, copies, strict=True):
                buf[c.start: stop].copy_(w.host[c.start: stop], non_blocking=True)
                buf.record_stream(stream)
        event = torch.cuda.Event()
        event.record(stream)
        return Inflight(event, moves)

    def commit(self, inflight: Inflight) -> None:
        """Swap in the rows an issued chunk copied (its event has completed)."""
        for w, buf, stop in inflight.moves:
            w.buf, w.rows = buf, stop
            w.linear.resplit(w.split(self.device))
        self._update_alpha()
        self.commits += 1
