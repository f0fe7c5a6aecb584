"""Sampling: greedy, top-k, top-p masks and per-request seeds independent of the batch."""

from __future__ import annotations

import math

import pytest
import torch

from c2cq.errors import RequestError
from c2cq.services.executor.model.engine import Engine
from c2cq.services.executor.model.sampler import (ARGMAX_CHUNK, SamplingParams, argmax_rows, filter_logits,
                                                  new_generator, sample, sample_rows)

from .conftest import drain, prompt, token_ids

PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])
LOGITS = PROBS.log()


def test_top_p_keeps_the_smallest_nucleus():
    kept = lambda p: torch.isfinite(filter_logits(LOGITS, 0, p)).nonzero().flatten().tolist()  # noqa: E731
    assert kept(0.4) == [1]
    assert kept(0.7) == [1, 3]
    assert kept(0.9) == [1, 2, 3]
    assert kept(1.0) == [0, 1, 2, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sample_rows_gives_each_row_what_sample_gives_it(dtype):
    """Greedy rows through one argmax, seeded rows through their own streams, in any mix and order."""
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(1)).to(dtype)
    logits[3, 7] = logits[3, 9] = logits[3].max() + 1  # a tie: the first index, as argmax of one row
    params = [SamplingParams(), SamplingParams(temperature=0.8, seed=5), SamplingParams(),
              SamplingParams(), SamplingParams(temperature=1.3, top_k=4, seed=6)]
    got = sample_rows(logits, params, [new_generator(p.seed) for p in params])
    assert got == [sample(logits[i], p, new_generator(p.seed)) for i, p in enumerate(params)]
    assert got[3] == 7
    assert sample_rows(logits[:1], params[:1], [new_generator(0)]) == [int(logits[0].float().argmax())]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cols", [49152, 5 * ARGMAX_CHUNK + 904, 2 * ARGMAX_CHUNK + 1, 2 * ARGMAX_CHUNK, 50])
def test_argmax_rows_is_torch_argmax(dtype, cols):
    """The two-pass argmax against torch's: random rows, ties within and across chunks (the first wins), the
    maximum in the tail or in the last column, NaN (counted as the maximum, its first occurrence), -inf rows."""
    x = torch.randn(12, cols, generator=torch.Generator().manual_seed(cols)).to(dtype)
    top = float(x.float().max()) + 1
    x[1, [cols - 1, cols // 2]] = top  # a tie across chunks: the lower column
    x[2, cols - 1] = top  # the last column (the tail's last, where there is a tail)
    x[3, [ARGMAX_CHUNK % cols, (ARGMAX_CHUNK + 1) % cols]] = top  # a tie at a chunk's start
    x[4, [cols - 2, cols - 1]] = top  # a tie inside the tail
    x[5, [cols // 3, cols - 1]] = float("nan")
    x[6] = float("-inf")
    x[7, :] = top  # all equal: column 0
    x[8, cols // 2:] = float("-inf")
    x[9, ::7] = float("nan")
    got = argmax_rows(x)
    assert got.dtype == torch.long
    assert got.tolist() == torch.argmax(x.float(), dim=-1).tolist()
    assert got[1] == cols // 2 and got[7] == 0
    assert argmax_rows(x.t().contiguous().t()).tolist() == got.tolist()  # any strides


def test_top_k_masks_all_but_k():
    assert torch.isfinite(filter_logits(LOGITS, 2, 1.0)).nonzero().flatten().tolist() == [1, 3]


def test_samples_stay_in_the_nucleus_and_follow_its_renormalised_mass():
    params = SamplingParams(temperature=1.0, top_p=0.7)
    gen = new_generator(0)
    draws = [sample(LOGITS, params, gen) for _ in range(2000)]
    assert set(draws) == {1, 3}
    # kept mass renormalised: P(1) = 0.5 / 0.8 = 0.625; 2000 draws give a std of ~0.011, allow 4 std.
    assert abs(draws.count(1) / 2000 - 0.625) < 4 * math.sqrt(0.625 * 0.375 / 2000)


def test_greedy_and_top_k_one_pick_the_argmax():
    gen = new_generator(1)
    logits = torch.randn(307, generator=torch.Generator().manual_seed(5))
    best = int(logits.argmax())
    assert sample(logits, SamplingParams(), gen) == best
    assert all(sample(logits, SamplingParams(temperature=1.5, top_k=1), gen) == best for _ in range(20))


@pytest.mark.parametrize("kwargs, code", [
    (dict(max_tokens=0), "bad_max_tokens"), (dict(temperature=-1.0), "bad_sampling"),
    (dict(top_k=-1), "bad_sampling"), (dict(top_p=0.0), "bad_sampling"), (dict(stop=("",)), "bad_sampling"),
])
def test_bad_params_are_typed_errors(kwargs, code):
    with pytest.raises(RequestError) as err:
        SamplingParams(**kwargs)
    assert err.value.code == code


def _sampled(ck, rid_params, others=0, chunk=8):
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=64, block_size=4)
    for i in range(others):
        engine.add(f"other{i}", prompt(90 + i, 7 + i), SamplingParams(max_tokens=10, temperature=0.9, seed=i))
    for rid, params in rid_params.items():
        engine.add(rid, prompt(5, 12), params)
    outs = drain(engine, chunk)
    return {rid: token_ids(outs[rid]) for rid in rid_params}


def test_seed_reproducible_whatever_the_batch(checkpoints):
    ck = checkpoints("qwen2_tied")
    params = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.95, seed=1234)
    alone = _sampled(ck, {"s": params})["s"]
    crowded = _sampled(ck, {"s": params}, others=3, chunk=5)["s"]
    other_seed = _sampled(ck, {"s": SamplingParams(max_tokens=20, temperature=1.0, top_p=0.95, seed=99)})["s"]
    assert alone == crowded
    assert alone != other_seed


def test_top_k_one_equals_greedy_in_the_engine(checkpoints):
    ck = checkpoints("qwen3_moe")
    got = _sampled(ck, {"greedy": SamplingParams(max_tokens=16),
                        "k1": SamplingParams(max_tokens=16, temperature=0.8, top_k=1, seed=3)})
    assert got["greedy"] == got["k1"]
