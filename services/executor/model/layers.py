"""Dense building blocks: RMSNorm, the gated MLP and self-attention over a flat batch."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from c2cq.services.executor.model.attention import paged_attention
from c2cq.services.executor.model.batch import FlatBatch
from c2cq.services.executor.model.kv_cache import KVCache
from c2cq.services.executor.model.rope import RopeTables
from c2cq.services.executor.model.weights import Linear, Projection

ACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in fp32 and scaled in the input dtype (as Hugging Face:
    ``weight * (h * rsqrt(mean(h²) + eps)).to(dtype)``, torch's one fused kernel for the normalisation)."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * F.rms_norm(x.to(torch.float32), (x.shape[-1],), None, eps).to(x.dtype)


class Mlp:
    """down(act(gate(x)) · up(x)); gate and up as one product where their weights allow it."""

    def __init__(self, gate_up: Projection, down: Linear, act: str) -> None:
        self.gate_up, self.down = gate_up, down
        self.act = ACT[act]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x)
        return self.down(self.act(gate).mul_(up))


class Attention:
    """Self-attention of one layer with GQA, optional q/k RMSNorm per head and a paged KV cache."""

    def __init__(self, layer: int, qkv: Projection, o: Linear, *, num_heads: int, num_kv_heads: int,
                 head_dim: int, eps: float, window: int | None, q_norm: torch.Tensor | None = None,
                 k_norm: torch.Tensor | None = None) -> None:
        self.layer = layer
        self.qkv, self.o = qkv, o
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.eps, self.window = eps, window
        self.q_norm, self.k_norm = q_norm, k_norm

    def __call__(self, x: torch.Tensor, batch: FlatBatch, cache: KVCache, rope: RopeTables) -> torch.Tensor:
        t, heads, kv_heads, d = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        fused = self.qkv.fused(x)
        if fused is not None and self.q_norm is None:  # q and k side by side: rotated as one tensor
            qk = rope.apply(fused[:, :(heads + kv_heads) * d].view(t, heads + kv_heads, d))
            q, k = qk[:, :heads], qk[:, heads:]
            v = fused[:, (heads + kv_heads) * d:].view(t, kv_heads, d)
        else:
            q, k, v = fused.split(self.qkv.sizes, dim=-1) if fused is not None else self.qkv(x)
            q, k, v = q.view(t, heads, d), k.view(t, kv_heads, d), v.view(t, kv_heads, d)
            if self.q_norm is not None and self.k_norm is not None:
                q, k = rms_norm(q, self.q_norm, self.eps), rms_norm(k, self.k_norm, self.eps)
            q, k = rope.apply(q), rope.apply(k)
        cache.write(self.layer, batch.slots, k, v)
        out = paged_attention(q, cache.pools[self.layer], batch.attn, self.window)
        return self.o(out.reshape(t, heads * d))
