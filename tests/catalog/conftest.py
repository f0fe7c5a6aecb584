"""Fixtures: tiny random HF checkpoints (Llama, Qwen3, Mixtral, Qwen2-MoE) written with save_pretrained."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import pytest
import torch

from c2cq.services.catalog.fs import huge_page_size_of

TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
_COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2)


def _model(arch: str) -> torch.nn.Module:
    import transformers as tf

    if arch == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**_COMMON))
    if arch == "qwen3":
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(**_COMMON, head_dim=16))
    if arch == "mixtral":
        return tf.MixtralForCausalLM(tf.MixtralConfig(**_COMMON, num_local_experts=3, num_experts_per_tok=2))
    if arch == "qwen2moe":
        return tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(**_COMMON, num_experts=3, num_experts_per_tok=2,
                                                        moe_intermediate_size=32, shared_expert_intermediate_size=48))
    raise ValueError(arch)


def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


@pytest.fixture
def make_hf_dir(tmp_path: Path) -> Callable[..., Path]:
    """``make_hf_dir(arch, dtype=torch.bfloat16, max_shard_size=None) -> folder`` with weights and tokenizer files."""
    counter = iter(range(1000))

    def make(arch: str, dtype: torch.dtype = torch.bfloat16, max_shard_size: str | None = None) -> Path:
        torch.manual_seed(0)
        folder = tmp_path / f"{arch}-{next(counter)}"
        model = _model(arch).to(dtype)
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(folder, safe_serialization=True, **kwargs)
        (folder / "tokenizer.json").write_text(_tokenizer_json())
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE, "eos_token": "world"}))
        return folder

    return make


def _hugetlbfs_with_room(need: int) -> Path | None:
    """A writable hugetlbfs mount with ``need`` bytes of free huge pages ($C2CQ_TEST_HUGETLBFS first)."""
    candidates = [os.environ["C2CQ_TEST_HUGETLBFS"]] if os.environ.get("C2CQ_TEST_HUGETLBFS") else [
        line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if line.split()[2] == "hugetlbfs"]
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    free = int(meminfo.get("HugePages_Free", "0").split()[0]) * int(meminfo.get("Hugepagesize", "0 kB").split()[0]) << 10
    for mount in candidates:
        if huge_page_size_of(mount) and os.access(mount, os.W_OK) and free >= need:
            return Path(mount)
    return None


@pytest.fixture
def huge_dir():
    mount = _hugetlbfs_with_room(64 << 20)
    if mount is None:
        pytest.skip("no writable hugetlbfs mount with 64 MiB of free huge pages (set C2CQ_TEST_HUGETLBFS)")
    path = mount / f"c2cq-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
