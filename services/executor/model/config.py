"""The model's shape and options, parsed once from a Hugging Face config.json dict."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from c2cq.services.executor.model.errors import ModelConfigError, UnsupportedArchitecture

DENSE = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
         "Qwen3ForCausalLM": "qwen3"}
MOE = {"MixtralForCausalLM": "mixtral", "Qwen2MoeForCausalLM": "qwen2_moe", "Qwen3MoeForCausalLM": "qwen3_moe"}
FAMILIES = {**DENSE, **MOE}
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "relu")


@dataclass(frozen=True, slots=True)
class RopeConfig:
    rope_type: str
    theta: float
    head_dim: int
    max_position_embeddings: int
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 0
    attention_factor: float = 1.0  # yarn: cos/sin scale
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    truncate: bool = True  # yarn


@dataclass(frozen=True, slots=True)
class MoeConfig:
    num_experts: int
    top_k: int
    intermediate_size: int
    norm_topk_prob: bool
    shared_expert_intermediate_size: int  # 0: no shared expert
    sparse_layers: tuple[bool, ...]  # per layer: True when the MLP is the routed block
    router: str  # "mixtral" (fp32 weights) or "qwen" (weights cast back to the hidden dtype)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    hidden_act: str
    tie_word_embeddings: bool
    qk_norm: bool
    rope: RopeConfig
    sliding_windows: tuple[int | None, ...]  # per layer; None: full attention
    eos_token_ids: tuple[int, ...]
    moe: MoeConfig | None


def _get(hf: Mapping[str, Any], key: str, kind: type, default: Any = ...) -> Any:
    if key not in hf or hf[key] is None:
        if default is ...:
            raise ModelConfigError(key, "missing from the model config")
        return default
    value = hf[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ModelConfigError(key, f"expected {kind.__name__}, got {value!r}")
    return value


def _positive(hf: Mapping[str, Any], key: str, default: Any = ...) -> int:
    value = _get(hf, key, int, default)
    if value <= 0:
        raise ModelConfigError(key, f"must be positive, got {value}")
    return value


def _family(hf: Mapping[str, Any]) -> str:
    archs = hf.get("architectures") or []
    if not isinstance(archs, list):
        raise ModelConfigError("architectures", f"expected a list, got {archs!r}")
    for arch in archs:
        if arch in FAMILIES:
            return FAMILIES[arch]
    model_type = hf.get("model_type")
    if model_type in FAMILIES.values():
        return model_type
    raise UnsupportedArchitecture("architectures", f"{archs or model_type!r} is not one of {sorted(FAMILIES)}")


def _rope(hf: Mapping[str, Any], head_dim: int, max_pos: int) -> RopeConfig:
    params = hf.get("rope_parameters")
    key = "rope_parameters"
    if params is None:
        params, key = hf.get("rope_scaling") or {}, "rope_scaling"
    if not isinstance(params, Mapping):
        raise ModelConfigError(key, f"expected a dict, got {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise UnsupportedArchitecture(f"{key}.rope_type", f"{rope_type!r} is not one of {ROPE_TYPES}")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if not isinstance(theta, (int, float)) or theta <= 0:
        raise ModelConfigError("rope_theta", f"must be a positive number, got {theta!r}")
    factor = params.get("factor", 1.0)
    if rope_type != "default" and (not isinstance(factor, (int, float)) or factor < 1.0):
        raise ModelConfigError(f"{key}.factor", f"must be a number >= 1, got {factor!r}")
    original = params.get("original_max_position_embeddings", max_pos)
    if rope_type == "llama3":
        for name in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if not isinstance(params.get(name), (int, float)):
                raise ModelConfigError(f"{key}.{name}", "required for rope_type 'llama3'")
        if params["high_freq_factor"] <= params["low_freq_factor"]:
            raise ModelConfigError(f"{key}.high_freq_factor", "must exceed low_freq_factor")
    return RopeConfig(
        rope_type=rope_type, theta=float(theta), head_dim=head_dim, max_position_embeddings=max_pos,
        factor=float(factor), low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)), original_max_position_embeddings=int(original),
        attention_factor=_yarn_attention_factor(params, float(factor)) if rope_type == "yarn" else 1.0,
        beta_fast=float(params.get("beta_fast") or 32.0), beta_slow=float(params.get("beta_slow") or 1.0),
        truncate=bool(params.get("truncate", True)),
    )


def _yarn_attention_factor(params: Mapping[str, Any], factor: float) -> float:
    """YaRN's cos/sin scale: given, or 0.1·ln(factor)+1 (ratio of two such with mscale/mscale_all_dim)."""
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    m, m_all = params.get("mscale"), params.get("mscale_all_dim")
    return mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)


def _sliding_windows(hf: Mapping[str, Any], family: str, num_layers: int) -> tuple[int | None, ...]:
    window = hf.get("sliding_window")
    if not window:
        return (None,) * num_layers
    if not isinstance(window, int) or window < 0:
        raise ModelConfigError("sliding_window", f"expected a positive int, got {window!r}")
    layer_types = hf.get("layer_types")
    if family in ("mistral", "mixtral"):
        return (window,) * num_layers
    if not hf.get("use_sliding_window", False):
        return (None,) * num_layers
    if layer_types is not None:
        if not isinstance(layer_types, list) or len(layer_types) != num_layers:
            raise ModelConfigError("layer_types", f"expected a list of {num_layers} layer types")
        return tuple(window if t == "sliding_attention" else None for t in layer_types)
    first = _get(hf, "max_window_layers", int, num_layers)
    return tuple(window if i >= first else None for i in range(num_layers))


def _eos(hf: Mapping[str, Any]) -> tuple[int, ...]:
    eos = hf.get("eos_token_id")
    if eos is None:
        return ()
    ids = eos if isinstance(eos, list) else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ModelConfigError("eos_token_id", f"expected an int or a list of ints, got {eos!r}")
    return tuple(ids)


def _moe(hf: Mapping[str, Any], family: str, num_layers: int) -> MoeConfig | None:
    if family not in MOE.values():
        return None
    if family == "mixtral":
        n = _positive(hf, "num_local_experts")
        top_k = _positive(hf, "num_experts_per_tok")
        size = _positive(hf, "intermediate_size")
        sparse = (True,) * num_layers
        return MoeConfig(n, _check_top_k(top_k, n), size, True, 0, sparse, "mixtral")
    # Hugging Face checkpoints say "num_experts"; Transformers v5 saves Qwen3-MoE's as "num_local_experts".
    n = _positive(hf, "num_experts" if "num_experts" in hf else "num_local_experts")
    top_k = _positive(hf, "num_experts_per_tok")
    size = _positive(hf, "moe_intermediate_size")
    step = _positive(hf, "decoder_sparse_step", 1)
    only_mlp = _get(hf, "mlp_only_layers", list, [])
    sparse = tuple(i not in only_mlp and (i + 1) % step == 0 for i in range(num_layers))
    shared = _positive(hf, "shared_expert_intermediate_size") if family == "qwen2_moe" else 0
    norm = _get(hf, "norm_topk_prob", bool, family == "qwen3_moe")
    return MoeConfig(n, _check_top_k(top_k, n), size, norm, shared, sparse, "qwen")


def _check_top_k(top_k: int, n: int) -> int:
    if top_k > n:
        raise ModelConfigError("num_experts_per_tok", f"{top_k} exceeds the number of experts {n}")
    return top_k


def parse_config(hf: Mapping[str, Any]) -> ModelConfig:
    """Validate a Hugging Face config dict and derive the runtime's frozen config from it."""
    if not isinstance(hf, Mapping):
        raise ModelConfigError("config", f"expected a dict, got {type(hf).__name__}")
    family = _family(hf)
    hidden = _positive(hf, "hidden_size")
    heads = _positive(hf, "num_attention_heads")
    kv_heads = _positive(hf, "num_key_value_heads", heads)
    if heads % kv_heads:
        raise ModelConfigError("num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads}")
    if hf.get("head_dim") is None and hidden % heads:
        raise ModelConfigError("num_attention_heads", f"{heads} does not divide hidden_size {hidden}")
    head_dim = _positive(hf, "head_dim", hidden // heads)
    if head_dim % 2:
        raise ModelConfigError("head_dim", f"must be even for rotary embeddings, got {head_dim}")
    num_layers = _positive(hf, "num_hidden_layers")
    act = _get(hf, "hidden_act", str, "silu")
    if act not in ACTIVATIONS:
        raise UnsupportedArchitecture("hidden_act", f"{act!r} is not one of {ACTIVATIONS}")
    eps = _get(hf, "rms_norm_eps", float, 1e-6)
    if eps <= 0:
        raise ModelConfigError("rms_norm_eps", f"must be positive, got {eps}")
    max_pos = _positive(hf, "max_position_embeddings", 4096)
    moe = _moe(hf, family, num_layers)
    return ModelConfig(
        family=family, vocab_size=_positive(hf, "vocab_size"), hidden_size=hidden, num_layers=num_layers,
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        intermediate_size=_positive(hf, "intermediate_size") if moe is None else _get(hf, "intermediate_size", int, 0),
        rms_norm_eps=eps, hidden_act=act, tie_word_embeddings=_get(hf, "tie_word_embeddings", bool, False),
        qk_norm=family in ("qwen3", "qwen3_moe"), rope=_rope(hf, head_dim, max_pos),
        sliding_windows=_sliding_windows(hf, family, num_layers), eos_token_ids=_eos(hf), moe=moe,
    )
