"""A CPU slice packs the weights of the model it serves in the background of serving: never before the
first token, a bounded piece after each decode step and while idle, with the same tokens as the plain
weights; a model let go takes its packed copies with it."""

from __future__ import annotations

import pytest
import torch

from c2cq.kernels.linear import can_pack
from backend_drive import generate
from c2cq.services.executor import cpu, kv_flags, packing

from .conftest import publish_tiny

PROMPTS = [[1, 2, 3, 4, 5], list(range(10, 40)), [7]]


def _run(b, info, max_tokens: int = 8) -> tuple[list[list[int]], list[float]]:
    """Tokens per prompt, and the packed share after each step."""
    shares: list[float] = []
    tokens, _ = generate(b, info, PROMPTS, max_tokens, chunk=64, switch=False,
                         each_step=lambda be: shares.append(be.packed_share()))
    return tokens, shares


def test_the_default_budget_is_the_flags_default():
    assert kv_flags.PACKED_MB << 20 == packing.DEFAULT_PACKED_BYTES


@pytest.mark.skipif(not can_pack(torch.float32), reason="this torch has no oneDNN weight packing")
def test_packing_follows_the_first_token_and_keeps_the_tokens(shm, monkeypatch):
    monkeypatch.setattr(packing, "PART_BYTES", 4096)  # many parts: packing spans steps
    info = publish_tiny(shm, "a", 1)
    plain = cpu.CpuBackend(threads=1, packed_bytes=0)
    plain.switch(info)
    want, plain_shares = _run(plain, info)
    assert set(plain_shares) == {0.0} and not plain.idle()
    b = cpu.CpuBackend(threads=1)
    b.packer.part_bytes = 4096
    b.switch(info)
    got, shares = _run(b, info)
    assert got == want
    assert shares[0] == 0.0 and 0.0 < shares[-1]  # the prefill step packs nothing; decode steps do
    assert shares == sorted(shares)
    while b.idle():  # idle: packs on to the end
        pass
    assert b.packed_share() == 1.0
    again, _ = _run(b, info)
    assert again == want
    # evicting the model, once another is served, drops its packed copies
    b.switch(publish_tiny(shm, "b", 2))
    assert b.packer.bytes > 0
    b.evict(info)
    assert b.packer.bytes == 0
