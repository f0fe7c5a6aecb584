"""Small models for the gateway's tests: a byte-level tokenizer that fills the tiny models' vocabulary
(307 ids: 256 bytes, 3 chat specials, 48 plain added tokens), a Qwen-style chat template, and HF
folders with both (one without a template)."""

from __future__ import annotations

import json
from pathlib import Path

VOCAB = 307
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2's template, minus tool calls: a default system prompt, role checks through raise_exception
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'system' and loop.first %}\n"
    "    {%- elif message.role in ['user', 'assistant', 'system'] %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Unknown role: ' + message.role) }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


def byte_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.add_tokens([AddedToken(f"<w{i}>", special=False, normalized=False)
                    for i in range(VOCAB - len(vocab) - len(SPECIALS))])
    assert tok.get_vocab_size() == VOCAB
    return tok


def tokenizer_config(template: str | None) -> dict:
    doc = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
           "model_max_length": 256, "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    if template is not None:
        doc["chat_template"] = template
    return doc


def save_model(root: Path, spec: str, template: str | None, max_context: int | None = None) -> Path:
    """An HF folder: the tiny random ``spec`` model (tests/hf_models.py), the byte tokenizer, ``template``;
    ``max_context`` raises max_position_embeddings (plain RoPE: the weights do not depend on it)."""
    import torch

    from hf_models import build_checkpoint

    ck = build_checkpoint(spec, torch.float32, root)
    folder = root / f"{spec}-float32"
    byte_tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(template)))
    if max_context is not None:
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": max_context}))
    del ck
    return folder
