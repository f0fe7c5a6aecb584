"""Generated models: a real c2cq model file with random weights from an architecture preset.

They make a catalog of several sizes and architectures without downloads (the demo, benchmarks).
Weights are drawn per tensor from a seeded generator (normal, std 0.02; norms 1), written through
the same atomic writer as converted checkpoints; the tokenizer comes from another model file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from c2cq.errors import ConfigError
from c2cq.services.catalog import layout
from c2cq.services.catalog.convert import ConvertResult
from c2cq.services.catalog.modelwrite import write_model_file
from c2cq.services.catalog.presets import PRESETS
from c2cq.services.catalog.validate import check_checkpoint, expected_tensors

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def preset_config(preset: str, *, vocab_size: int, eos_token_id: int | None, max_positions: int = 8192) -> dict[str, Any]:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} (one of {sorted(PRESETS)})")
    cfg = dict(PRESETS[preset], vocab_size=vocab_size, max_position_embeddings=max_positions,
               rms_norm_eps=1e-5, hidden_act="silu")
    if eos_token_id is not None:
        cfg["eos_token_id"] = eos_token_id
    return cfg


def _tensors(specs: list[tuple[str, str, tuple[int, ...]]], seed: int) -> Iterator[memoryview]:
    gen = torch.Generator().manual_seed(seed)
    for name, dtype, shape in specs:
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            t = torch.ones(shape, dtype=_DTYPES[dtype])
        else:
            t = (torch.randn(shape, generator=gen) * 0.02).to(_DTYPES[dtype])
        yield memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def write_random(dst: str | os.PathLike[str], config: dict[str, Any], meta: dict[str, Any], *, dtype: str = "fp32",
                 seed: int = 0, progress: bool = True, also: Path | None = None) -> ConvertResult:
    """Write a random-weight model of ``config`` to ``dst`` (atomically); ``meta`` holds tokenizer fields;
    ``also``: where to put a byte-identical copy, best effort (``modelwrite.Tee``)."""
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    config = dict(config, torch_dtype={"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype])
    required, _ = expected_tensors(config)
    order = layout.forward_order(required)
    specs = [(n, dtype, required[n]) for n in order]
    arch = check_checkpoint(config, {n: (d, s) for n, d, s in specs}, source="generated")
    full = {"config": config, "generation_config": meta.get("generation_config"),
            "tokenizer_json": meta.get("tokenizer_json"), "tokenizer_config": meta.get("tokenizer_config"),
            "chat_template": meta.get("chat_template")}
    index, size = write_model_file(Path(dst), specs, _tensors(specs, seed), full, progress=progress,
                                   source=f"generated:{arch}:seed={seed}", also=also)
    return ConvertResult(path=str(dst), architecture=arch, num_tensors=len(specs),
                         tensor_bytes=sum(e.nbytes for e in index.tensors), file_bytes=size,
                         checksum=index.checksum, seconds=0.0)


def approx_parameters(config: dict[str, Any]) -> int:
    required, _ = expected_tensors(config)
    return sum(math.prod(s) for s in required.values())
