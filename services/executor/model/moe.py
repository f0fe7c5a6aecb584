"""Routed mixture-of-experts block (Mixtral, Qwen2-MoE, Qwen3-MoE): only routed experts are read."""

from __future__ import annotations

import torch

from c2cq.services.executor.model.config import MoeConfig
from c2cq.services.executor.model.layers import Mlp
from c2cq.services.executor.model.weights import Linear


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
        for e in torch.unique(ids).tolist():
            token_idx, slot = torch.where(ids == e)
            y = self.experts[e](x[token_idx]) * weights[token_idx, slot, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        if self.shared is not None and self.shared_gate is not None:
            out = out + torch.sigmoid(self.shared_gate(x)) * self.shared(x)
        return out
