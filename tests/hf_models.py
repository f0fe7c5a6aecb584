"""Tiny random Hugging Face models of every supported architecture, saved as checkpoints (shared by test folders)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import transformers

# Odd sizes on purpose: hidden 72, vocab 307, 3 layers, GQA 6:2 (or 6:3), head_dim given where the
# architecture allows it. initializer_range 0.1 (HF default 0.02) gives peaked next-token
# distributions, so greedy choices are not decided by last-bit rounding.
COMMON: dict[str, Any] = dict(hidden_size=72, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                              vocab_size=307, intermediate_size=100, initializer_range=0.1,
                              max_position_embeddings=256, bos_token_id=None, eos_token_id=None,
                              pad_token_id=None)
MOE_SIZES: dict[str, Any] = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=40)

SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("Llama", dict(tie_word_embeddings=False)),
    "llama_tied_llama3": ("Llama", dict(tie_word_embeddings=True, head_dim=16, rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    "llama_linear": ("Llama", dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0))),
    # max_position_embeddings 24 < prompt + 32 new tokens, so dynamic NTK rescales mid-generation.
    "llama_dynamic": ("Llama", dict(max_position_embeddings=24,
                                    rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0))),
    "mistral_window": ("Mistral", dict(sliding_window=8, num_key_value_heads=3)),
    "qwen2_tied": ("Qwen2", dict(tie_word_embeddings=True)),
    "qwen2_yarn": ("Qwen2", dict(max_position_embeddings=128, rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32))),
    "qwen3": ("Qwen3", dict(head_dim=16, tie_word_embeddings=False)),
    "mixtral": ("Mixtral", dict(num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)),
    "qwen2_moe": ("Qwen2Moe", dict(**MOE_SIZES, shared_expert_intermediate_size=48, norm_topk_prob=False,
                                   mlp_only_layers=[1], tie_word_embeddings=False)),
    "qwen3_moe": ("Qwen3Moe", dict(**{**MOE_SIZES, "num_experts_per_tok": 3}, norm_topk_prob=True, head_dim=16,
                                   tie_word_embeddings=False)),
}
DENSE = ["llama", "llama_tied_llama3", "llama_linear", "llama_dynamic", "mistral_window", "qwen2_tied", "qwen2_yarn",
         "qwen3"]
MOE = ["mixtral", "qwen2_moe", "qwen3_moe"]


@dataclass
class Checkpoint:
    """A saved tiny model: its HF config dict, its tensors by HF name, and the HF model itself."""

    name: str
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    hf: Any  # transformers PreTrainedModel in eval mode, eager attention


def build_checkpoint(name: str, dtype: torch.dtype, root: Path, seed: int = 0) -> Checkpoint:
    prefix, extra = SPECS[name]
    cfg = getattr(transformers, f"{prefix}Config")(**{**COMMON, **extra})
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}ForCausalLM")(cfg).to(dtype).eval()
    model.config._attn_implementation = "eager"
    model.config._experts_implementation = "eager"  # grouped_mm needs 16-byte strides; sizes here are odd
    out = root / f"{name}-{str(dtype).removeprefix('torch.')}"
    model.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    return Checkpoint(name, config, load_file(out / "model.safetensors"), model)
