"""Float64 torch references that define what HybridGEMM and the MoE path must compute."""

from __future__ import annotations

import torch


def gemm_reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Y = X·Wᵀ (+ bias) in float64 on the CPU, from the inputs exactly as given (already rounded)."""
    y = x.detach().double().cpu() @ w.detach().double().cpu().T
    return y if bias is None else y + bias.detach().double().cpu()


def moe_reference(
    x: torch.Tensor, expert_weights: list[torch.Tensor], topk_ids: torch.Tensor, topk_weights: torch.Tensor
) -> torch.Tensor:
    """y[t] = Σ_j topk_weights[t, j] · x[t]·W_{topk_ids[t, j]}ᵀ, in float64 on the CPU."""
    xd = x.detach().double().cpu()
    ids = topk_ids.cpu()
    gates = topk_weights.detach().double().cpu()
    n = expert_weights[0].shape[0]
    y = torch.zeros((xd.shape[0], n), dtype=torch.float64)
    for t in range(xd.shape[0]):
        for j in range(ids.shape[1]):
            w = expert_weights[int(ids[t, j])].detach().double().cpu()
            y[t] += gates[t, j] * (w @ xd[t])
    return y
