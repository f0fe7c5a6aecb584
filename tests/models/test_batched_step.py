"""One batched step over many sequences gives each the tokens it gets alone, whatever the mix: different
prompt lengths and positions, decodes beside prefill chunks, block sizes, fragmented block tables, and
weights fused into one product (laid back to back as in the catalog's file) or not."""

from __future__ import annotations

import pytest
import torch

from c2cq.services.catalog.layout import forward_order
from c2cq.services.executor.model.engine import Engine
from c2cq.services.executor.model.sampler import SamplingParams

from .conftest import drain, prompt, token_ids

LENGTHS = [1, 2, 5, 13, 17, 31]  # one token (a single at once), inside one block, across several


def packed(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors copied back to back into one buffer in the file's forward order (no alignment
    padding between them), so q/k/v and gate/up lie adjacent as in a ``.c2cqm`` mapping."""
    names = forward_order(tensors)
    dtype = tensors[names[0]].dtype
    assert all(tensors[n].dtype == dtype for n in names)
    buf = torch.empty(sum(tensors[n].numel() for n in names), dtype=dtype)
    out, at = {}, 0
    for n in names:
        t = tensors[n]
        view = buf[at:at + t.numel()].view(t.shape)
        view.copy_(t)
        out[n], at = view, at + t.numel()
    return out


def _alone(config, tensors, ids, params, block_size):
    engine = Engine(config, tensors, None, kv_blocks=64, block_size=block_size)
    engine.add("r", ids, params)
    return token_ids(drain(engine, 64)["r"])


def _fragment(engine: Engine) -> None:
    """Leave every other block of the pool taken, so the batch's block tables are not runs of ids."""
    alloc = engine.cache.allocator
    taken = alloc.allocate(alloc.num_free)
    alloc.free(taken[::2])


@pytest.mark.parametrize("block_size,fused", [(1, True), (4, False), (16, True)], ids=["bs1-fused", "bs4", "bs16-fused"])
@pytest.mark.parametrize("name", ["llama", "mistral_window", "qwen3", "qwen2_tied", "mixtral"])
def test_a_batch_gives_each_sequence_its_tokens_alone(checkpoints, name, block_size, fused):
    ck = checkpoints(name)
    tensors = packed(ck.tensors) if fused else ck.tensors
    prompts = {f"r{i}": prompt(60 + i, n) for i, n in enumerate(LENGTHS)}
    params = {rid: SamplingParams(max_tokens=6 + 2 * i) for i, rid in enumerate(prompts)}
    expected = {rid: _alone(ck.config, ck.tensors, ids, params[rid], block_size) for rid, ids in prompts.items()}

    engine = Engine(ck.config, tensors, None, kv_blocks=2 * 64, block_size=block_size)
    if fused:  # the fused products do run (weights adjacent in memory become one Linear)
        assert any("+" in lin.name for lin in engine.model.weights)
    _fragment(engine)
    rids = list(prompts)
    got: dict[str, list[int]] = {}
    kinds = set()
    for step in range(300):
        if step < len(rids):  # one arrival per step: every step mixes new prompts with running decodes
            engine.add(rids[step], prompts[rids[step]], params[rids[step]])
        elif not engine.num_requests:
            break
        for out in engine.step(chunk_tokens=7):
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
        stats = engine.last_stats
        kinds.add((stats.prefill_tokens > 0, stats.decode_tokens > 1))
    assert got == expected
    assert (True, True) in kinds, "no step ran prefill chunks beside several decodes"


def test_fused_weights_are_views_of_the_checkpoint(checkpoints):
    """Fusing reads the packed tensors in place: the fused weight starts at q_proj's bytes, no copy."""
    ck = checkpoints("llama")
    tensors = packed(ck.tensors)
    engine = Engine(ck.config, tensors, None, kv_blocks=8, block_size=4)
    lin = next(lin for lin in engine.model.weights if lin.name.endswith("v_proj"))
    assert lin.weight.host.data_ptr() == tensors["model.layers.0.self_attn.q_proj.weight"].data_ptr()
    assert torch.equal(lin.weight.host[-ck.tensors["model.layers.0.self_attn.v_proj.weight"].shape[0]:],
                       ck.tensors["model.layers.0.self_attn.v_proj.weight"])
