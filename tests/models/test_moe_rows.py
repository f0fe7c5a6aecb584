"""MoE experts on a CPU: rows padded to a few counts (so oneDNN's per-count primitives repeat) give
the same outputs as unpadded rows, and warming those counts changes no output and counts no bytes."""

from __future__ import annotations

import pytest
import torch

from c2cq.services.executor.model import moe
from c2cq.services.executor.model.engine import Engine
from c2cq.services.executor.model.moe import MoeBlock, padded_rows
from c2cq.services.executor.model.sampler import SamplingParams

from .conftest import drain, prompt, token_ids


def test_padded_counts_are_few_and_at_most_a_quarter_more():
    for n in range(1, 2049):
        p = padded_rows(n)
        assert n <= p and (n <= moe.PAD_FROM and p == n or p <= 1.25 * n), (n, p)
        assert padded_rows(p) == p  # a padded count is its own
    assert len({padded_rows(n) for n in range(1, 65)}) == 20  # 1..4, then four per octave


def _moe_blocks(engine: Engine) -> list[MoeBlock]:
    return [layer.mlp for layer in engine.model.layers if isinstance(layer.mlp, MoeBlock)]


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_padded_expert_rows_change_no_output(checkpoints, name, monkeypatch):
    ck = checkpoints(name)
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=8, block_size=4)
    block = _moe_blocks(engine)[0]
    x = torch.randn(37, ck.config["hidden_size"], generator=torch.Generator().manual_seed(3))
    padded = block(x)
    monkeypatch.setattr(moe, "padded_rows", lambda n: n)
    plain = block(x)
    # each row's product is the same sum over K: only oneDNN's blocking for another M may round differently
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-6)


def test_warm_changes_no_token_and_counts_no_bytes(checkpoints):
    ck = checkpoints("mixtral")
    ids, params = prompt(5, 13), SamplingParams(max_tokens=6)

    def run(warm: bool) -> tuple[list[int], int]:
        engine = Engine(ck.config, ck.tensors, None, kv_blocks=16, block_size=4)
        if warm:
            engine.model.warm()
        counted = engine.model.weights.counter.bytes  # what the first step would report as read
        engine.add("r", ids, params)
        return token_ids(drain(engine, 64)["r"]), counted

    (cold, none), (warm, counted) = run(False), run(True)
    assert warm == cold and len(cold) == 6
    assert none == counted == 0  # warming read through no counted Linear
