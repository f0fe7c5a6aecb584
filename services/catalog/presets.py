"""Architecture presets of generated models (torch-free, so the CLI can list them cheaply)."""

from __future__ import annotations

from typing import Any

_ROPE = {"rope_theta": 10000.0}
PRESETS: dict[str, dict[str, Any]] = {
    # dense Llama shape, ~ SmolLM2-360M minus some layers
    "llama-250m": dict(architectures=["LlamaForCausalLM"], hidden_size=960, intermediate_size=2560,
                       num_hidden_layers=20, num_attention_heads=15, num_key_value_heads=5,
                       tie_word_embeddings=True, **_ROPE),
    # Qwen3: q/k norm, explicit head_dim
    "qwen3-60m": dict(architectures=["Qwen3ForCausalLM"], hidden_size=512, intermediate_size=1536, head_dim=64,
                      num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                      tie_word_embeddings=True, **_ROPE),
    # Mixtral: 4 experts, top-2 routing
    "mixtral-4x20m": dict(architectures=["MixtralForCausalLM"], hidden_size=384, intermediate_size=1024,
                          num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
                          num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False, **_ROPE),
    # Qwen2: q/k/v biases
    "qwen2-500m": dict(architectures=["Qwen2ForCausalLM"], hidden_size=896, intermediate_size=4864,
                       num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       tie_word_embeddings=True, **_ROPE),
}
