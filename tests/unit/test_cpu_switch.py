"""A CPU slice keeps the last models it served mapped and built: switching back reuses them (same tokens,
no new mapping), a republished file is mapped afresh, and the oldest beyond HELD_MODELS is let go."""

from __future__ import annotations

import os

import msgspec

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


def test_a_preloaded_model_is_switched_to_without_a_new_mapping(shm, monkeypatch):
    """Preload maps and builds the model beside the current one (which keeps serving), and the switch to
    it uses those layers: the same tokens as a model mapped at its switch. Evict lets a held model go."""
    infos = {n: publish_tiny(shm, n, seed) for n, seed in (("a", 1), ("b", 2))}
    cold = cpu.CpuBackend(threads=1)
    want = _generate(cold, infos["b"])
    b = cpu.CpuBackend(threads=1)
    first_a = _generate(b, infos["a"])
    b.preload(infos["b"])
    preloaded = b._held[cpu.file_key(infos["b"].shm.path)].model
    assert b.model.name == "a" and b.engine is not None  # the current model is still served
    b.preload(infos["b"])  # held already: kept as it is
    assert b._held[cpu.file_key(infos["b"].shm.path)].model is preloaded
    assert _generate(b, infos["b"]) == want and b.engine.model is preloaded
    assert cpu.file_key(infos["b"].shm.path) not in b._held  # served now, not held
    b.evict(infos["a"])
    assert not b._held
    assert _generate(b, infos["a"]) == first_a  # mapped afresh at its switch


def _tokenizer_json(*words: str) -> bytes:
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}},
                                      unk_token="<unk>")).to_str().encode()


def test_prepare_preloads_what_fits_and_parses_the_other_tokenizers(shm, monkeypatch):
    monkeypatch.setattr(cpu, "HELD_MODELS", 2)
    tok_x, tok_y = _tokenizer_json("x"), _tokenizer_json("y")
    infos = [publish_tiny(shm, n, seed, tok) for n, seed, tok in
             (("a", 1, tok_x), ("b", 2, None), ("c", 3, tok_y), ("d", 4, tok_x), ("e", 5, tok_y))]
    b = cpu.CpuBackend(threads=1)
    parsed = []
    monkeypatch.setattr(b.tokenizers, "prefetch", lambda tok: parsed.append(tok) if tok is not None else None)
    sim = msgspec.structs.replace(infos[0], name="sim", shm=None)  # a simulated model: nothing to map
    # a and b preloaded (HELD_MODELS); of the others' tokenizers y and x, once each
    assert b.prepare([sim, *infos]) == (2, 2)
    assert {k[0] for k in b._held} == {infos[0].shm.path, infos[1].shm.path}
    assert parsed == [tok_x, tok_y, tok_x]  # a's by its preload, then the two distinct ones of c, d, e
    monkeypatch.setattr(cpu, "PRELOAD_BYTES", 0)
    assert cpu.CpuBackend(threads=1).prepare(infos[:2]) == (0, 1)  # nothing fits: tokenizers only
    assert _generate(b, infos[1]) == _generate(cpu.CpuBackend(threads=1), infos[1])
