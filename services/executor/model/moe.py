"""Routed mixture-of-experts block (Mixtral, Qwen2-MoE, Qwen3-MoE): only routed experts are read."""

from __future__ import annotations

import torch

from c2cq.kernels.linear import hybrid_linear
from c2cq.services.executor.model.config import MoeConfig
from c2cq.services.executor.model.layers import Mlp
from c2cq.services.executor.model.weights import Linear


# On a CPU, oneDNN builds a primitive the first time it meets a weight shape at a row count (~0.7-1.5 ms,
# one thread, here), and an expert's row count is how many tokens were routed to it: a model's first
# requests meet a new count in nearly every expert call (mixtral-4x20m: first switch 1.92x the warm
# TTFT, repeated switches 1.20x). So an expert's rows are padded to one of a few counts — four per
# octave, at most a quarter more rows — whose primitives ``MoeBlock.warm`` builds when the model is
# loaded. Zero rows cost a little compute and give zeros, dropped.
PAD_FROM = 4  # counts up to this are their own
WARM_ROWS = 64  # warmed up to: decode batches and short prompts; longer prompts pay once, at a larger GEMM


def padded_rows(n: int) -> int:
    """The row count an expert's ``n`` rows are padded to on a CPU (4 per octave: 5..8, 10..16 by 2, …)."""
    if n <= PAD_FROM:
        return n
    step = 1 << (n.bit_length() - 3)
    return -(-n // step) * step


def route(logits: torch.Tensor, top_k: int, normalise: bool,
          weights_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over experts (fp32), top-k, optional renormalisation: (weights [T, k], expert ids [T, k])."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    if normalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(weights_dtype), experts


class MoeBlock:
    """Router + experts (+ a sigmoid-gated shared expert for Qwen2-MoE)."""

    def __init__(self, cfg: MoeConfig, router: Linear, experts: list[Mlp], shared: Mlp | None = None,
                 shared_gate: Linear | None = None) -> None:
        self.cfg = cfg
        self.router = router
        self.experts = experts
        self.shared, self.shared_gate = shared, shared_gate

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.router(x)
        # Mixtral keeps fp32 routing weights; Qwen casts them back to the hidden dtype (as HF does).
        wdtype = torch.float32 if self.cfg.router == "mixtral" else logits.dtype
        weights, ids = route(logits, self.cfg.top_k, self.cfg.norm_topk_prob, wdtype)
        out = torch.zeros_like(x)
        pad = x.device.type == "cpu"
        for e in torch.unique(ids).tolist():
            token_idx, slot = torch.where(ids == e)
            rows, n = x[token_idx], token_idx.shape[0]
            extra = padded_rows(n) - n if pad else 0
            if extra:
                rows = torch.cat([rows, rows.new_zeros(extra, rows.shape[1])])
            y = self.experts[e](rows)[:n] * weights[token_idx, slot, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        if self.shared is not None and self.shared_gate is not None:
            out = out + torch.sigmoid(self.shared_gate(x)) * self.shared(x)
        return out

    def warm(self, done: set, max_rows: int = WARM_ROWS) -> None:
        """Build the CPU primitives of the experts' weight shapes at every padded count up to ``max_rows``
        (zeros in, outputs dropped, bytes not counted); a shape in ``done`` (shared by every layer and
        expert) is skipped, and added."""
        lins = [lin for lin in (*self.experts[0].gate_up.linears, self.experts[0].down)
                if lin.weight.host.device.type == "cpu"]
        counts = sorted({padded_rows(n) for n in range(1, max_rows + 1)})
        for lin in lins:
            key = (lin.weight.n, lin.weight.k, lin.weight.host.dtype)
            if key in done:
                continue
            done.add(key)
            for n in counts:
                hybrid_linear(torch.zeros(n, lin.weight.k, dtype=lin.weight.host.dtype), lin.weight, lin.bias)
