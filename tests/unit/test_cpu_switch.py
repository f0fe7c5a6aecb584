"""A CPU slice keeps the last models it served mapped and built: switching back reuses them (same tokens,
no new mapping), a republished file is mapped afresh, and the oldest beyond HELD_MODELS is let go."""

from __future__ import annotations

import os

from c2cq.schemas.client import SamplingParams as WireSampling
from c2cq.schemas.executor import AssignRequest
from c2cq.services.executor import cpu

from .conftest import publish_tiny

PROMPTS = [[1, 2, 3, 4, 5], list(range(10, 40)), [7]]


def _generate(b, info) -> list[list[int]]:
    b.switch(info)
    for i, p in enumerate(PROMPTS):
        b.add(AssignRequest(request_id=f"r{i}", model=info.name, prompt_token_ids=tuple(p), max_tokens=6,
                            sampling=WireSampling(ignore_eos=True)))
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(PROMPTS))}
    for _ in range(200):
        if not b.has_work():
            break
        for o in b.step(32).outputs:
            assert o.error is None, o.error
            tokens[o.request_id].extend(o.token_ids)
    return [tokens[f"r{i}"] for i in range(len(PROMPTS))]


def test_switching_back_reuses_the_held_model(shm, monkeypatch):
    monkeypatch.setattr(cpu, "HELD_MODELS", 2)
    infos = {n: publish_tiny(shm, n, seed) for n, seed in (("a", 1), ("b", 2), ("c", 3))}
    b = cpu.CpuBackend(threads=1)
    first = {n: _generate(b, infos[n]) for n in ("a", "b")}
    model_a = b._held[cpu.file_key(infos["a"].shm.path)].model
    model_b = b.engine.model
    assert _generate(b, infos["a"]) == first["a"] and b.engine.model is model_a  # held: reused as it was
    assert _generate(b, infos["c"]) != first["a"]
    assert _generate(b, infos["b"]) == first["b"] and b.engine.model is model_b
    # served a, b, a, c, b: two held besides the current one, none was let go yet
    assert {k[0] for k in b._held} == {infos["a"].shm.path, infos["c"].shm.path}
    _generate(b, publish_tiny(shm, "d", 4))  # a is the least recently served: let go
    assert {k[0] for k in b._held} == {infos["c"].shm.path, infos["b"].shm.path}


def test_a_republished_model_is_mapped_afresh(shm):
    b = cpu.CpuBackend(threads=1)
    old = publish_tiny(shm, "m", 1)
    before = _generate(b, old)
    held = b.engine.model
    b.switch(publish_tiny(shm, "other", 2))
    os.unlink(old.shm.path)  # the catalog publishes new content under the same name: a new file
    new = publish_tiny(shm, "m", 5)
    after = _generate(b, new)
    assert b.engine.model is not held and after != before
    assert all(k[0] != old.shm.path or k == cpu.file_key(new.shm.path) for k in b._held)  # the old one let go
