"""Fixtures of the cpu backend tests: a tiny random model published to shared memory as the catalog does."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
import pytest

from c2cq.schemas.refs import ShmRef
from c2cq.services.catalog.describe import describe_file
from c2cq.services.catalog.shm import publish
from c2cq.services.catalog.synth import write_random

TINY = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 136, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "rope_theta": 10000.0, "max_position_embeddings": 128}


@pytest.fixture()
def shm(tmp_path):
    folder = Path("/dev/shm") / f"c2cq-unit-cpu-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    yield tmp_path, folder
    shutil.rmtree(folder, ignore_errors=True)


def publish_tiny(shm, name: str, seed: int, tokenizer_json: bytes | None = None):
    """A random fp32 TINY model published under ``name``: its ModelInfo, as the catalog describes it."""
    files, folder = shm
    meta = {"tokenizer_json": tokenizer_json} if tokenizer_json else {}
    write_random(files / f"{name}-{seed}.c2cqm", TINY, meta, dtype="fp32", seed=seed, progress=False)
    path = publish(files / f"{name}-{seed}.c2cqm", folder, name)
    return msgspec.structs.replace(describe_file(name, path), shm=ShmRef(path=str(path), size=path.stat().st_size))
