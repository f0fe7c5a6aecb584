"""Dense building blocks: RMSNorm, the gated MLP and self-attention over a flat batch."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from c2cq.services.executor.model.attention import paged_attention
from c2cq.services.executor.model.batch import FlatBatch
from c2cq.services.executor.model.kv_cache import KVCache
from c2cq.services.executor.model.rope import apply_rope
from c2cq.services.executor.model.weights import Linear, Projection

ACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in fp32 and scaled in the input dtype (as Hugging Face)."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class Mlp:
    """down(act(gate(x)) · up(x)); gate and up as one product where their weights allow it."""

    def __init__(self, gate_up: Projection, down: Linear, act: str) -> None:
        self.gate_up, self.down = gate_up, down
        self.act = ACT[act]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x)
        return self.down(self.act(gate) * up)


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

    def __call__(self, x: torch.Tensor, batch: FlatBatch, cache: KVCache, cos: torch.Tensor,
                 sin: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv(x)
        q = q.reshape(t, self.num_heads, self.head_dim)
        k = k.reshape(t, self.num_kv_heads, self.head_dim)
        v = v.reshape(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = rms_norm(q, self.q_norm, self.eps), rms_norm(k, self.k_norm, self.eps)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cache.write(self.layer, batch.slots, k, v)
        out = paged_attention(q, cache.pools[self.layer], batch.attn, self.window)
        return self.o(out.reshape(t, self.num_heads * self.head_dim))
