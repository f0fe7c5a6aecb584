"""Config validation, zero-copy weights, one registry of linear weights, bytes read per step."""

from __future__ import annotations

import copy

import pytest
import torch

from c2cq.errors import ModelError
from c2cq.kernels.linear import SplitWeight
from c2cq.services.executor.model.config import parse_config
from c2cq.services.executor.model.engine import Engine
from c2cq.services.executor.model.errors import ModelConfigError, UnsupportedArchitecture
from c2cq.services.executor.model.sampler import SamplingParams

from .conftest import prompt


def _with(config, **changes):
    out = copy.deepcopy(config)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("changes, key, kind", [
    (dict(architectures=["GPT2LMHeadModel"], model_type="gpt2"), "architectures", UnsupportedArchitecture),
    (dict(hidden_size=None), "hidden_size", ModelConfigError),
    (dict(num_key_value_heads=4), "num_key_value_heads", ModelConfigError),
    (dict(vocab_size="307"), "vocab_size", ModelConfigError),
    (dict(hidden_act="swish2"), "hidden_act", UnsupportedArchitecture),
    (dict(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}), "rope_parameters.rope_type",
     UnsupportedArchitecture),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}),
     "rope_parameters.low_freq_factor", ModelConfigError),
])
def test_bad_config_names_the_key(checkpoints, changes, key, kind):
    with pytest.raises(kind) as err:
        parse_config(_with(checkpoints("llama").config, **changes))
    assert err.value.key == key and isinstance(err.value, ModelError)


def test_legacy_rope_scaling_and_moe_keys(checkpoints):
    legacy = _with(checkpoints("llama").config, rope_parameters=None, rope_theta=5e5,
                   rope_scaling={"type": "linear", "factor": 4.0})
    rope = parse_config(legacy).rope
    assert (rope.rope_type, rope.theta, rope.factor) == ("linear", 5e5, 4.0)
    qwen3_moe = checkpoints("qwen3_moe").config
    renamed = _with(qwen3_moe, num_experts=qwen3_moe["num_local_experts"], num_local_experts=None)
    assert parse_config(renamed).moe == parse_config(qwen3_moe).moe


def test_missing_or_misshapen_tensor_is_named(checkpoints):
    ck = checkpoints("qwen3")
    tensors = dict(ck.tensors)
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    with pytest.raises(ModelConfigError, match="model.layers.1.self_attn.k_norm.weight"):
        Engine(ck.config, tensors, None, kv_blocks=4, block_size=4)
    tensors = dict(ck.tensors) | {"model.layers.0.mlp.up_proj.weight": torch.zeros(3, 72)}
    with pytest.raises(ModelConfigError, match="model.layers.0.mlp.up_proj"):
        Engine(ck.config, tensors, None, kv_blocks=4, block_size=4)


@pytest.mark.parametrize("name", ["llama_tied_llama3", "mixtral", "qwen2_moe"])
def test_weights_are_the_checkpoint_tensors_not_copies(checkpoints, name):
    ck = checkpoints(name, torch.bfloat16)
    seen: dict[str, torch.Tensor] = {}

    def make_linear(lname: str, w: torch.Tensor) -> SplitWeight:
        seen[lname] = w
        return SplitWeight.host_only(w)

    engine = Engine(ck.config, ck.tensors, None, kv_blocks=4, block_size=4, make_linear=make_linear)
    storages = {t.untyped_storage().data_ptr() for t in ck.tensors.values()}
    assert len(seen) == len(engine.model.weights) > 0
    for w in seen.values():
        assert w.dtype == torch.bfloat16 and w.untyped_storage().data_ptr() in storages
    if ck.config["tie_word_embeddings"]:
        assert seen["lm_head"].data_ptr() == ck.tensors["model.embed_tokens.weight"].data_ptr()


def test_dense_step_reads_every_weight_moe_step_reads_routed_experts(checkpoints):
    for name, full in (("llama", True), ("mixtral", False)):
        ck = checkpoints(name)
        engine = Engine(ck.config, ck.tensors, None, kv_blocks=8, block_size=4)
        engine.add("r", prompt(1, 1), SamplingParams(max_tokens=2))
        engine.step(4)
        embed_row = 72 * 4  # one token's fp32 embedding row
        read = engine.last_stats.weight_bytes - embed_row
        # Mixtral: one token routes to 2 of 4 experts, so exactly half the expert bytes are skipped.
        experts = sum(lin.nbytes for lin in engine.model.weights if ".experts." in lin.name)
        assert read == (engine.weight_bytes if full else engine.weight_bytes - experts // 2)
