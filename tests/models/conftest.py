"""Tiny random Hugging Face models of every supported architecture, saved and reloaded as checkpoints."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hf_models import DENSE, MOE, Checkpoint, build_checkpoint  # noqa: F401  (DENSE, MOE re-exported to tests)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory):
    """Cached builder: checkpoints(name, dtype=torch.float32) -> Checkpoint."""
    root = tmp_path_factory.mktemp("ckpt")
    cache: dict[tuple[str, torch.dtype], Checkpoint] = {}

    def get(name: str, dtype: torch.dtype = torch.float32) -> Checkpoint:
        if (name, dtype) not in cache:
            cache[(name, dtype)] = build_checkpoint(name, dtype, root)
        return cache[(name, dtype)]

    return get


def prompt(seed: int, n: int, vocab: int = 307) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def drain(engine: Any, chunk_tokens: int) -> dict[str, list[Any]]:
    """Step until every request finished; the StepOutputs per request id, in order."""
    outputs: dict[str, list[Any]] = {}
    for _ in range(10_000):
        if not engine.num_requests:
            return outputs
        for out in engine.step(chunk_tokens):
            outputs.setdefault(out.request_id, []).append(out)
    raise AssertionError("engine did not finish its requests")


def token_ids(outputs: list[Any]) -> list[int]:
    return [t for out in outputs for t in out.new_token_ids]
