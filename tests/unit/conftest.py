"""Fixtures of the cpu and cuda backend tests: a tiny random model published to shared memory as the catalog
does; a fake CUDA driver for registering host memory."""

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
from c2cq.services.executor.pinned import READ_ONLY

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


class FakeDriver:
    """cuMemHostRegister and its kin as a driver would answer: refusing read-only or every registration on demand."""

    def __init__(self, refuse_read_only: bool = False, refuse_all: bool = False) -> None:
        self.refuse_read_only, self.refuse_all = refuse_read_only, refuse_all
        self.registered: dict[int, tuple[int, int]] = {}  # ptr → (size, flags)
        self.calls: list[tuple] = []

    def register(self, ptr: int, size: int, flags: int) -> int:
        self.calls.append(("register", ptr, size, flags))
        if self.refuse_all or (self.refuse_read_only and flags & READ_ONLY):
            return 801
        self.registered[ptr] = (size, flags)
        return 0

    def unregister(self, ptr: int) -> int:
        self.calls.append(("unregister", ptr))
        return 0 if self.registered.pop(ptr, None) is not None else 713

    def error(self, code: int) -> str:
        return {801: "CUDA_ERROR_NOT_SUPPORTED", 713: "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED"}[code]
