"""The decoder-only transformer over a flat batch, built from checkpoint tensors by HF name."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from c2cq.services.executor.model.batch import FlatBatch
from c2cq.services.executor.model.config import ModelConfig
from c2cq.services.executor.model.errors import ModelConfigError
from c2cq.services.executor.model.kv_cache import KVCache
from c2cq.services.executor.model.layers import Attention, Mlp, rms_norm
from c2cq.services.executor.model.moe import MoeBlock
from c2cq.services.executor.model.rope import Rope, RopeTables
from c2cq.services.executor.model.weights import LinearWeights, MakeLinear, host_only


class DecoderLayer:
    def __init__(self, attn: Attention, mlp: Mlp | MoeBlock, in_norm: torch.Tensor, post_norm: torch.Tensor,
                 eps: float) -> None:
        self.attn, self.mlp = attn, mlp
        self.in_norm, self.post_norm, self.eps = in_norm, post_norm, eps

    def __call__(self, h: torch.Tensor, batch: FlatBatch, cache: KVCache, rope: RopeTables) -> torch.Tensor:
        h = h + self.attn(rms_norm(h, self.in_norm, self.eps), batch, cache, rope)
        return h + self.mlp(rms_norm(h, self.post_norm, self.eps))


def _mlp(w: LinearWeights, prefix: str, hidden: int, inter: int, act: str, names: tuple[str, str, str] =
         ("gate_proj", "up_proj", "down_proj"), gate_up: torch.Tensor | None = None,
         down: torch.Tensor | None = None) -> Mlp:
    gate, up, down_name = (f"{prefix}.{n}" for n in names)
    halves = (None, None) if gate_up is None else (gate_up[:inter], gate_up[inter:])
    return Mlp(w.projection([(gate, inter, halves[0]), (up, inter, halves[1])], hidden),
               w.linear(down_name, hidden, inter, down), act)


def _experts(w: LinearWeights, cfg: ModelConfig, p: str) -> list[Mlp]:
    """Per-expert weights by their checkpoint names, or views into Transformers v5's fused tensors."""
    moe, hidden, act = cfg.moe, cfg.hidden_size, cfg.hidden_act
    assert moe is not None
    inter, mixtral = moe.intermediate_size, cfg.family == "mixtral"
    fused = f"{p}.mlp.experts.gate_up_proj"
    experts = []
    for e in range(moe.num_experts):
        if w.has(fused):
            gate_up = w.tensor(fused, (moe.num_experts, 2 * inter, hidden))[e]
            down = w.tensor(f"{p}.mlp.experts.down_proj", (moe.num_experts, hidden, inter))[e]
            experts.append(_mlp(w, f"{p}.mlp.experts.{e}", hidden, inter, act, gate_up=gate_up, down=down))
        elif mixtral:
            experts.append(_mlp(w, f"{p}.block_sparse_moe.experts.{e}", hidden, inter, act, ("w1", "w3", "w2")))
        else:
            experts.append(_mlp(w, f"{p}.mlp.experts.{e}", hidden, inter, act))
    return experts


def _moe_block(w: LinearWeights, cfg: ModelConfig, p: str) -> MoeBlock:
    moe = cfg.moe
    assert moe is not None
    block = f"{p}.block_sparse_moe" if cfg.family == "mixtral" and w.has(f"{p}.block_sparse_moe.gate.weight") \
        else f"{p}.mlp"
    router = w.linear(f"{block}.gate", moe.num_experts, cfg.hidden_size)
    shared = gate = None
    if moe.shared_expert_intermediate_size:
        shared = _mlp(w, f"{p}.mlp.shared_expert", cfg.hidden_size, moe.shared_expert_intermediate_size,
                      cfg.hidden_act)
        gate = w.linear(f"{p}.mlp.shared_expert_gate", 1, cfg.hidden_size)
    return MoeBlock(moe, router, _experts(w, cfg, p), shared, gate)


def _layer(w: LinearWeights, cfg: ModelConfig, i: int) -> DecoderLayer:
    p, h, d = f"model.layers.{i}", cfg.hidden_size, cfg.head_dim
    a = f"{p}.self_attn"
    qkv = w.projection([(f"{a}.q_proj", cfg.num_heads * d, None), (f"{a}.k_proj", cfg.num_kv_heads * d, None),
                        (f"{a}.v_proj", cfg.num_kv_heads * d, None)], h)
    attn = Attention(
        i, qkv, w.linear(f"{a}.o_proj", h, cfg.num_heads * d),
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=d, eps=cfg.rms_norm_eps,
        window=cfg.sliding_windows[i],
        q_norm=w.tensor(f"{a}.q_norm.weight", (d,)) if cfg.qk_norm else None,
        k_norm=w.tensor(f"{a}.k_norm.weight", (d,)) if cfg.qk_norm else None,
    )
    if cfg.moe is not None and cfg.moe.sparse_layers[i]:
        mlp: Mlp | MoeBlock = _moe_block(w, cfg, p)
    else:
        mlp = _mlp(w, f"{p}.mlp", h, cfg.intermediate_size, cfg.hidden_act)
    return DecoderLayer(attn, mlp, w.tensor(f"{p}.input_layernorm.weight", (h,)),
                        w.tensor(f"{p}.post_attention_layernorm.weight", (h,)), cfg.rms_norm_eps)


class Model:
    """Forward of a flat batch over the paged KV cache; weights are the checkpoint's own tensors."""

    def __init__(self, cfg: ModelConfig, tensors: Mapping[str, torch.Tensor],
                 make_linear: MakeLinear = host_only) -> None:
        self.cfg = cfg
        self.weights = LinearWeights(tensors, make_linear)
        w, h = self.weights, cfg.hidden_size
        self.embed = w.tensor("model.embed_tokens.weight", (cfg.vocab_size, h))
        self.dtype = self.embed.dtype
        self.layers = [_layer(w, cfg, i) for i in range(cfg.num_layers)]
        self.norm = w.tensor("model.norm.weight", (h,))
        if w.has("lm_head.weight") and not cfg.tie_word_embeddings:
            self.lm_head = w.linear("lm_head", cfg.vocab_size, h)
        elif cfg.tie_word_embeddings:
            self.lm_head = w.linear("lm_head", cfg.vocab_size, h, self.embed)
        else:
            raise ModelConfigError("lm_head.weight", "missing and tie_word_embeddings is false")
        for lin in w:
            if lin.weight.host.dtype != self.dtype:
                raise ModelConfigError(lin.name, f"dtype {lin.weight.host.dtype} differs from the "
                                                 f"embedding's {self.dtype}")
        self.rope = Rope(cfg.rope)

    @torch.inference_mode()
    def warm(self) -> None:
        """Build what a first request would otherwise build on a CPU: the experts' GEMM primitives."""
        done: set = set()
        for layer in self.layers:
            if isinstance(layer.mlp, MoeBlock):
                layer.mlp.warm(done)

    @property
    def device(self) -> torch.device:
        """Where activations and the KV cache live: the embedding table's device."""
        return self.embed.device

    def new_cache(self, num_blocks: int, block_size: int) -> KVCache:
        return KVCache(self.cfg.num_layers, num_blocks, block_size, self.cfg.num_kv_heads, self.cfg.head_dim,
                       self.dtype, device=self.device)

    @torch.inference_mode()
    def forward(self, batch: FlatBatch, cache: KVCache) -> torch.Tensor:
        """Logits [len(batch.logits_rows), vocab] in the model's dtype, on the model's device."""
        if batch.input_ids.device != self.device:
            batch = batch.to(self.device)
        h = F.embedding(batch.input_ids, self.embed)
        self.weights.counter.add(batch.input_ids.numel() * self.embed.shape[1] * self.embed.element_size())
        rope = self.rope.tables(batch.positions, batch.rope_lens, self.dtype)
        for layer in self.layers:
            h = layer(h, batch, cache, rope)
        return self.lm_head(rms_norm(h[batch.logits_rows], self.norm, self.cfg.rms_norm_eps))
