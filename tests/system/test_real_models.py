"""Real models through the whole running system: catalog file → shared memory → cpu executor → client.

Oracle: transformers on the same random-initialised checkpoints. Greedy continuations of 32 tokens
must be identical token for token; last-position logits computed from the converted, shared-memory
mapped file must agree within the dtype's rounding bound (same rule as tests/models/test_parity.py).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
import torch

from c2cq.client import AsyncClient
from c2cq.rundir import RunDir
from c2cq.services.catalog.cli_add import add_path
from c2cq.services.catalog.shm import map_shared
from c2cq.services.executor.model.batch import FlatBatch
from c2cq.services.executor.model.engine import Engine
from c2cq.testing import Instance
from hf_models import build_checkpoint

# (spec, dtype): every architecture family, odd sizes (hidden 72, vocab 307), fp32 and bf16
CASES = [("llama", torch.float32), ("mistral_window", torch.float32), ("qwen2_tied", torch.float32),
         ("qwen3", torch.float32), ("mixtral", torch.float32), ("qwen2_moe", torch.float32),
         ("qwen3_moe", torch.float32), ("llama", torch.bfloat16), ("qwen3_moe", torch.bfloat16)]
K_MAX = 100  # the largest GEMM inner dimension of these models (intermediate_size)
NEW = 32


def model_name(spec: str, dtype: torch.dtype) -> str:
    return f"{spec.replace('_', '-')}-{str(dtype).removeprefix('torch.')}"


def prompt_ids(seed: int, n: int = 13, vocab: int = 307) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """HF checkpoints converted into a fresh home's catalog, with transformers' greedy references."""
    root = tmp_path_factory.mktemp("hf")
    home = Path(tmp_path_factory.mktemp("h"))
    rd = RunDir.from_env(str(home))
    refs: dict[str, tuple[list[int], list[int]]] = {}
    hf = {}
    for i, (spec, dtype) in enumerate(CASES):
        ck = build_checkpoint(spec, dtype, root)
        name = model_name(spec, dtype)
        add_path(rd, root / f"{spec}-{str(dtype).removeprefix('torch.')}", name, progress=False)
        ids = prompt_ids(100 + i)
        with torch.no_grad():
            out = ck.hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW)
        refs[name] = (ids, out[0, len(ids):].tolist())
        hf[name] = ck.hf
    return home, refs, hf


@pytest.fixture(scope="module")
def cpu_instance(catalog):
    home = catalog[0]
    inst = Instance(home, slices=2, backend="cpu")
    inst.up()
    try:
        yield inst
    finally:
        inst.teardown()


async def greedy(client: AsyncClient, model: str, ids: list[int]) -> list[int]:
    s = await client.submit(model, prompt_token_ids=ids, max_tokens=NEW, ignore_eos=True)
    tokens = [t for batch in [b async for b in s] for t in batch.token_ids]
    assert s.finished.finish_reason == "length", s.finished
    return tokens


def test_greedy_through_the_system_matches_transformers(catalog, cpu_instance):
    _, refs, _ = catalog

    async def run():
        async with AsyncClient(home=str(cpu_instance.home), timeout=300) as c:
            return await asyncio.gather(*(greedy(c, name, ids) for name, (ids, _) in refs.items()))

    got = dict(zip(refs, asyncio.run(run())))
    bad = {name: (got[name], ref) for name, (_, ref) in refs.items() if got[name] != ref}
    assert not bad, f"greedy outputs differ from transformers for {sorted(bad)}"


def test_three_models_two_slices_switch(catalog, cpu_instance):
    """Six concurrent requests over three models and two slices: at least one slice must switch,
    which each request's RequestFinished records (the executor that served it, and whether it switched)."""
    _, refs, _ = catalog
    models = ["llama-float32", "qwen3-float32", "mixtral-float32"]

    async def one(c: AsyncClient, model: str):
        s = await c.submit(model, prompt_token_ids=refs[model][0], max_tokens=NEW, ignore_eos=True)
        tokens = [t for batch in [b async for b in s] for t in batch.token_ids]
        return tokens, s.finished.executor, s.finished.switched

    async def run():
        async with AsyncClient(home=str(cpu_instance.home), timeout=300) as c:
            return await asyncio.gather(*(one(c, m) for m in models for _ in range(2)))

    outs = asyncio.run(run())
    assert [t for t, _, _ in outs] == [refs[m][1] for m in models for _ in range(2)]
    served: dict[str, set[str]] = {}
    for (_, executor, _), model in zip(outs, [m for m in models for _ in range(2)]):
        served.setdefault(executor, set()).add(model)
    assert set(served) <= {"exec-0", "exec-1"}
    assert any(len(ms) > 1 for ms in served.values()), f"no slice served two models: {served}"
    assert sum(switched for _, _, switched in outs) >= 3, "each model needed at least one switch"


@pytest.mark.parametrize("spec,dtype", CASES, ids=[model_name(s, d) for s, d in CASES])
def test_last_logits_from_the_mapped_file(catalog, spec, dtype):
    home, refs, hf = catalog
    name = model_name(spec, dtype)
    mf = map_shared(RunDir.from_env(str(home)).catalog_dir / "models" / f"{name}.c2cqm")
    engine = Engine(mf.config, mf.tensors(), mf.tokenizer_json, kv_blocks=8, block_size=4)
    ids = refs[name][0]
    table = engine.cache.new_table()
    table.grow(engine.cache.allocator, len(ids))
    ours = engine.model.forward(FlatBatch.build([(ids, 0, table)], [True]), engine.cache)[0]
    with torch.no_grad():
        ref = hf[name](torch.tensor([ids])).logits[0, -1]
    assert ours.dtype == dtype
    # Both sides round every op to `dtype` but reduce in different orders; the error grows ~ sqrt(K):
    # tolerance = eps(dtype) · sqrt(K_max) · |logits|max (fp32 ~3.5e-6; bf16 ~0.2; a bug moves logits by O(1)).
    tol = torch.finfo(dtype).eps * math.sqrt(K_MAX) * ref.float().abs().max().item()
    torch.testing.assert_close(ours.float(), ref.float(), rtol=0.0, atol=tol)
