"""Each kind of bad checkpoint gives a CheckpointError that names the problem, and nothing is written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from c2cq.errors import C2CQError
from c2cq.services.catalog.convert import convert_hf
from c2cq.services.catalog.validate import CheckpointError, check_checkpoint, expected_tensors

K_PROJ = "model.layers.1.self_attn.k_proj.weight"


def _rewrite(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _expect(src: Path, tmp_path: Path, *needles: str) -> None:
    dst = tmp_path / "bad.c2cqm"
    with pytest.raises(CheckpointError) as info:
        convert_hf(src, dst, progress=False)
    for needle in needles:
        assert needle in str(info.value)
    assert isinstance(info.value, C2CQError)
    assert not dst.exists() and not list(tmp_path.glob("bad.c2cqm.tmp-*"))


def test_unsupported_architecture(make_hf_dir, tmp_path):
    src = make_hf_dir("llama")
    _edit_config(src, architectures=["GPT2LMHeadModel"])
    _expect(src, tmp_path, "unsupported architecture", "GPT2LMHeadModel")


def test_missing_tensor(make_hf_dir, tmp_path):
    src = make_hf_dir("llama")
    _rewrite(src, lambda s: s.pop(K_PROJ))
    _expect(src, tmp_path, "missing tensors", K_PROJ)


def test_missing_expert(make_hf_dir, tmp_path):
    src = make_hf_dir("mixtral")
    name = "model.layers.0.block_sparse_moe.experts.2.w3.weight"
    _rewrite(src, lambda s: s.pop(name))
    _expect(src, tmp_path, "missing tensors", name)


def test_misshaped_tensor(make_hf_dir, tmp_path):
    src = make_hf_dir("qwen3")
    _rewrite(src, lambda s: s.__setitem__(K_PROJ, torch.zeros(48, 64, dtype=torch.bfloat16)))
    _expect(src, tmp_path, K_PROJ, "[48, 64]", "[32, 64]")


def test_config_disagrees_with_weights(make_hf_dir, tmp_path):
    src = make_hf_dir("llama")
    _edit_config(src, vocab_size=100)
    _expect(src, tmp_path, "vocab_size=100", "model.embed_tokens.weight", "[96, 64]")


def test_unsupported_dtype(make_hf_dir, tmp_path):
    src = make_hf_dir("llama")
    _rewrite(src, lambda s: s.__setitem__(K_PROJ, s[K_PROJ].to(torch.float64)))
    _expect(src, tmp_path, K_PROJ, "unsupported dtype F64")


def test_truncated_safetensors(make_hf_dir, tmp_path):
    src = make_hf_dir("llama", max_shard_size="40KB")
    shard = sorted(src.glob("*.safetensors"))[-1]
    os.truncate(shard, shard.stat().st_size - 100)
    _expect(src, tmp_path, "truncated", shard.name)


def test_shard_listed_in_index_is_missing(make_hf_dir, tmp_path):
    src = make_hf_dir("llama", max_shard_size="40KB")
    shard = sorted(src.glob("*.safetensors"))[0]
    shard.unlink()
    _expect(src, tmp_path, shard.name, "missing")


def test_no_config(make_hf_dir, tmp_path):
    src = make_hf_dir("llama")
    (src / "config.json").unlink()
    _expect(src, tmp_path, "no config.json")


def test_bad_config_value_names_the_key():
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "vocab_size": 96, "num_attention_heads": 4,
           "num_hidden_layers": "two", "intermediate_size": 80}
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        expected_tensors(cfg)


def _cfg(**extra):
    return {"architectures": ["Qwen2MoeForCausalLM"], "hidden_size": 8, "vocab_size": 10, "num_attention_heads": 2,
            "num_key_value_heads": 1, "num_hidden_layers": 4, "intermediate_size": 12, "num_experts": 2,
            "moe_intermediate_size": 6, "shared_expert_intermediate_size": 0, **extra}


def test_qwen_moe_dense_layers_follow_the_config():
    req, opt = expected_tensors(_cfg(mlp_only_layers=[0], decoder_sparse_step=2))
    # layer 0: listed as dense; layer 1: sparse ((1+1) % 2 == 0); layer 2: dense by step; layer 3: sparse
    assert "model.layers.0.mlp.gate_proj.weight" in req and "model.layers.0.mlp.gate.weight" not in req
    assert req["model.layers.1.mlp.experts.1.down_proj.weight"] == (8, 6)
    assert "model.layers.2.mlp.up_proj.weight" in req
    assert req["model.layers.3.mlp.gate.weight"] == (2, 8)
    assert req["model.layers.0.self_attn.q_proj.bias"] == (8,)  # Qwen2 attention has q/k/v biases


def test_tied_embeddings_make_lm_head_optional():
    cfg = _cfg(architectures=["LlamaForCausalLM"], tie_word_embeddings=True)
    req, opt = expected_tensors(cfg)
    assert "lm_head.weight" not in req and opt["lm_head.weight"] == (10, 8)
    tensors = {n: ("fp32", s) for n, s in req.items()}
    assert check_checkpoint(cfg, tensors) == "LlamaForCausalLM"
    tensors["lm_head.weight"] = ("fp32", (10, 9))
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        check_checkpoint(cfg, tensors)
