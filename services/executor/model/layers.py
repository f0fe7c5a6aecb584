"""Dense building blocks: RMSNorm, the gated MLP and paged attention over a flat batch."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from c2cq.services.executor.model.batch import FlatBatch
from c2cq.services.executor.model.kv_cache import KVCache
from c2cq.services.executor.model.rope import apply_rope
from c2cq.services.executor.model.weights import Linear

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
    """down(act(gate(x)) · up(x))."""

    def __init__(self, gate: Linear, up: Linear, down: Linear, act: str) -> None:
        self.gate, self.up, self.down = gate, up, down
        self.act = ACT[act]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                     window: int | None) -> torch.Tensor:
    """One sequence: q [n, H, D] at positions ``q_pos`` over k, v [ctx, H, D] at positions [0, ctx)."""
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q.transpose(0, 1), k.permute(1, 2, 0)) * scale  # [H, n, ctx]
    key_pos = torch.arange(k.shape[0], device=k.device)
    allowed = key_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed &= key_pos[None, :] > q_pos[:, None] - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v.transpose(0, 1)).transpose(0, 1)  # [n, H, D]


class Attention:
    """Self-attention of one layer with GQA, optional q/k RMSNorm per head and a paged KV cache."""

    def __init__(self, layer: int, q: Linear, k: Linear, v: Linear, o: Linear, *, num_heads: int,
                 num_kv_heads: int, head_dim: int, eps: float, window: int | None,
                 q_norm: torch.Tensor | None = None, k_norm: torch.Tensor | None = None) -> None:
        self.layer = layer
        self.q, self.k, self.v, self.o = q, k, v, o
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.eps, self.window = eps, window
        self.q_norm, self.k_norm = q_norm, k_norm

    def __call__(self, x: torch.Tensor, batch: FlatBatch, cache: KVCache, cos: torch.Tensor,
                 sin: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        q = self.q(x).view(t, self.num_heads, self.head_dim)
        k = self.k(x).view(t, self.num_kv_heads, self.head_dim)
        v = self.v(x).view(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = rms_norm(q, self.q_norm, self.eps), rms_norm(k, self.k_norm, self.eps)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cache.write(self.layer, batch.slots, k, v)
        groups = self.num_heads // self.num_kv_heads
        out = torch.empty_like(q)
        for span in batch.spans:
            keys, values = cache.read(self.layer, span.table, span.ctx_len)
            if groups > 1:
                keys, values = keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1)
            out[span.start:span.end] = causal_attention(
                q[span.start:span.end], keys, values, batch.positions[span.start:span.end], self.window)
        return self.o(out.reshape(t, self.num_heads * self.head_dim))
