"""Checks a checkpoint against its HF config before conversion: architecture, tensor set, shapes, dtypes.

Pure: takes the config dict and ``name -> (dtype, shape)`` read from the safetensors headers, and raises
CheckpointError naming the offending architecture, tensor, config key or dtype.
"""

from __future__ import annotations

from typing import Any, Mapping

from c2cq.errors import ModelError

SUPPORTED_ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
    "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM",
})
SUPPORTED_DTYPES = frozenset({"bf16", "fp16", "fp32"})

Shape = tuple[int, ...]


class CheckpointError(ModelError):
    """A source checkpoint cannot be converted; the message names the file, tensor or config key."""


def architecture_of(config: Mapping[str, Any]) -> str:
    archs = config.get("architectures") or []
    if not archs:
        raise CheckpointError("config.json has no 'architectures' entry")
    arch = archs[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(f"unsupported architecture {arch!r} (supported: {sorted(SUPPORTED_ARCHITECTURES)})")
    return arch


def _int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckpointError(f"config key {key!r} must be a non-negative integer, got {value!r}")
    return value


def _num_experts(config: Mapping[str, Any]) -> int:
    for key in ("num_local_experts", "num_experts"):
        if config.get(key):
            return _int(config, key)
    return 0


def _is_sparse_layer(config: Mapping[str, Any], arch: str, layer: int) -> bool:
    if arch == "MixtralForCausalLM":
        return True
    if arch not in ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM") or _num_experts(config) == 0:
        return False
    step = _int(config, "decoder_sparse_step", 1) or 1
    return layer not in (config.get("mlp_only_layers") or []) and (layer + 1) % step == 0


def expected_tensors(config: Mapping[str, Any]) -> tuple[dict[str, Shape], dict[str, Shape]]:
    """``(required, optional)`` tensor shapes implied by the config; optional ones are checked if present."""
    arch = architecture_of(config)
    hidden = _int(config, "hidden_size")
    vocab = _int(config, "vocab_size")
    heads = _int(config, "num_attention_heads")
    if heads == 0:
        raise CheckpointError("config key 'num_attention_heads' must be positive")
    kv_heads = _int(config, "num_key_value_heads", heads)
    head_dim = _int(config, "head_dim", hidden // heads)
    layers = _int(config, "num_hidden_layers")
    inter = _int(config, "intermediate_size")
    q, kv = heads * head_dim, kv_heads * head_dim

    req: dict[str, Shape] = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    opt: dict[str, Shape] = {}
    (opt if config.get("tie_word_embeddings", False) else req)["lm_head.weight"] = (vocab, hidden)

    qkv_bias = bool(config.get("attention_bias", False))
    if arch in ("Qwen2ForCausalLM", "Qwen2MoeForCausalLM"):
        qkv_bias = bool(config.get("qkv_bias", True))
    o_bias = bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))
    experts = _num_experts(config)
    for i in range(layers):
        p = f"model.layers.{i}."
        req[p + "input_layernorm.weight"] = (hidden,)
        req[p + "post_attention_layernorm.weight"] = (hidden,)
        for name, shape in (("q_proj", (q, hidden)), ("k_proj", (kv, hidden)), ("v_proj", (kv, hidden)),
                            ("o_proj", (hidden, q))):
            req[p + f"self_attn.{name}.weight"] = shape
            bias_on = o_bias if name == "o_proj" else qkv_bias
            (req if bias_on else opt)[p + f"self_attn.{name}.bias"] = shape[:1]
        if arch in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"):
            req[p + "self_attn.q_norm.weight"] = (head_dim,)
            req[p + "self_attn.k_norm.weight"] = (head_dim,)
        if not _is_sparse_layer(config, arch, i):
            _mlp(req, opt, p + "mlp.", ("gate_proj", "up_proj", "down_proj"), inter, hidden, mlp_bias)
        elif arch == "MixtralForCausalLM":
            req[p + "block_sparse_moe.gate.weight"] = (experts, hidden)
            for e in range(experts):
                _mlp(req, opt, p + f"block_sparse_moe.experts.{e}.", ("w1", "w3", "w2"), inter, hidden, False)
        else:
            moe_inter = _int(config, "moe_intermediate_size")
            req[p + "mlp.gate.weight"] = (experts, hidden)
            for e in range(experts):
                _mlp(req, opt, p + f"mlp.experts.{e}.", ("gate_proj", "up_proj", "down_proj"), moe_inter, hidden, False)
            shared = _int(config, "shared_expert_intermediate_size", 0) if arch == "Qwen2MoeForCausalLM" else 0
            if shared:
                _mlp(req, opt, p + "mlp.shared_expert.", ("gate_proj", "up_proj", "down_proj"), shared, hidden, False)
                req[p + "mlp.shared_expert_gate.weight"] = (1, hidden)
    return req, opt


def _mlp(req: dict, opt: dict, prefix: str, names: tuple[str, str, str], inter: int, hidden: int, bias: bool) -> None:
    gate, up, down = names
    for name, shape in ((gate, (inter, hidden)), (up, (inter, hidden)), (down, (hidden, inter))):
        req[prefix + name + ".weight"] = shape
        (req if bias else opt)[prefix + name + ".bias"] = shape[:1]


def check_checkpoint(config: Mapping[str, Any], tensors: Mapping[str, tuple[str, Shape]], source: str = "") -> str:
    """Raise CheckpointError on the first problem; return the architecture. ``tensors``: name -> (dtype, shape)."""
    where = f"{source}: " if source else ""
    arch = architecture_of(config)
    for name, (dtype, _) in tensors.items():
        if dtype not in SUPPORTED_DTYPES:
            raise CheckpointError(f"{where}tensor {name} has unsupported dtype {dtype} (supported: bf16, fp16, fp32)")
    req, opt = expected_tensors(config)
    embed = tensors.get("model.embed_tokens.weight")
    if embed is not None and len(embed[1]) == 2 and embed[1][0] != config["vocab_size"]:
        raise CheckpointError(f"{where}config vocab_size={config['vocab_size']} disagrees with "
                              f"model.embed_tokens.weight of shape {list(embed[1])}")
    missing = [name for name in req if name not in tensors]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{where}missing tensors for {arch}: {', '.join(missing[:5])}{more}")
    for name, shape in (*req.items(), *opt.items()):
        got = tensors.get(name)
        if got is not None and tuple(got[1]) != shape:
            raise CheckpointError(f"{where}tensor {name} has shape {list(got[1])}, config implies {list(shape)}")
    return arch
