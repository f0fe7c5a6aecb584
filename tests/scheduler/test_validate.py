"""Submission checks on prompt token ids: a prompt is refused exactly when one of its ids lies
outside [0, vocab) — the judgement of min() and max() over the ids, which the fast path (msgspec
in C) must give too — and a prompt too long for the context is refused as such."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as hs

from c2cq.schemas.client import SubmitRequest
from c2cq.schemas.enums import ErrorCode
from c2cq.services.catalog.sim_models import sim_model
from c2cq.services.scheduler.validate import Limits, check_submit

INFO = sim_model("m", 576, 30, 1536, 1000, max_context=64)


def check(ids: tuple) -> object:
    return check_submit(SubmitRequest(request_id="r", model="m", prompt_token_ids=ids, max_tokens=4), INFO, Limits())


@given(hs.lists(hs.integers(min_value=-3, max_value=1003) | hs.integers(min_value=-2**70, max_value=2**70),
                min_size=1, max_size=40))
def test_a_prompt_is_refused_exactly_when_an_id_is_outside_the_vocabulary(ids):
    no = check(tuple(ids))
    if all(0 <= t < INFO.vocab_size for t in ids):
        assert no is None
    else:
        bad = next(t for t in ids if not 0 <= t < INFO.vocab_size)
        assert no.code == ErrorCode.MALFORMED and f"token id {bad} outside" in no.message


def test_ids_that_are_not_ints_are_judged_as_before():
    assert check((1.5, 2)) is None  # within range, as min() and max() see it (a wire decode never gives these)
    assert check((True, 999)) is None
    assert check((2.0, 1000.5)).code == ErrorCode.MALFORMED


def test_a_prompt_too_long_is_refused_before_its_ids_are_read():
    no = check((-1,) * 64)
    assert no.code == ErrorCode.PROMPT_TOO_LONG and "64 tokens" in no.message
