"""Submission checks: every bad request gets a RequestRejected with a clear message."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Annotated

import msgspec

from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.client import RequestRejected, SubmitRequest
from c2cq.schemas.enums import ErrorCode


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_tokens: int = 4096  # the largest max_tokens a request may ask for
    max_prompt_chars: int = 1_000_000
    max_waiting: int = 10_000  # bounded queue of accepted requests with no executor yet
    max_request_id_len: int = 128


_isfinite = math.isfinite


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and _isfinite(x)


def check_submit(msg: SubmitRequest, info: ModelInfo | None, limits: Limits) -> RequestRejected | None:
    """None for a valid submission, else the rejection. Runs for every submission: the common
    (valid) path is a handful of comparisons; messages are built only for a rejection."""
    rid = msg.request_id
    if not rid or len(rid) > limits.max_request_id_len:
        return _reject(msg, ErrorCode.MALFORMED, f"request_id must be 1..{limits.max_request_id_len} characters")
    if info is None:
        return _reject(msg, ErrorCode.UNKNOWN_MODEL, f"unknown model {msg.model!r}")
    prompt, ids, max_tokens = msg.prompt, msg.prompt_token_ids, msg.max_tokens
    has_text = bool(prompt)
    has_ids = bool(ids)
    if has_text and has_ids:
        return _reject(msg, ErrorCode.MALFORMED, "give prompt or prompt_token_ids, not both")
    if not has_text and not has_ids:
        return _reject(msg, ErrorCode.EMPTY_PROMPT, "the prompt is empty")
    if has_text and len(prompt) > limits.max_prompt_chars:
        return _reject(msg, ErrorCode.PROMPT_TOO_LONG,
                       f"prompt of {len(prompt)} characters exceeds {limits.max_prompt_chars}")
    if has_ids:  # the length first: a prompt that cannot fit is refused without a pass over its ids
        if len(ids) >= info.max_context:
            return _reject(msg, ErrorCode.PROMPT_TOO_LONG,
                           f"prompt of {len(ids)} tokens does not fit the context of {info.max_context}")
        vocab = info.vocab_size
        if not _in_vocab(ids, vocab):
            bad = next(t for t in ids if not 0 <= t < vocab)
            return _reject(msg, ErrorCode.MALFORMED, f"token id {bad} outside the vocabulary of {vocab}")
    if max_tokens <= 0:
        return _reject(msg, ErrorCode.BAD_MAX_TOKENS, f"max_tokens must be positive, got {max_tokens}")
    if max_tokens > limits.max_tokens:
        return _reject(msg, ErrorCode.BAD_MAX_TOKENS, f"max_tokens {max_tokens} exceeds the limit of {limits.max_tokens}")
    if has_ids and len(ids) + max_tokens > info.max_context:
        return _reject(msg, ErrorCode.PROMPT_TOO_LONG, f"prompt plus max_tokens exceeds the context of {info.max_context}")
    s = msg.sampling
    if not _finite(s.temperature) or s.temperature < 0:
        return _reject(msg, ErrorCode.BAD_SAMPLING, f"temperature must be ≥ 0, got {s.temperature}")
    if s.top_k < 0:
        return _reject(msg, ErrorCode.BAD_SAMPLING, f"top_k must be ≥ 0, got {s.top_k}")
    if not _finite(s.top_p) or not 0 < s.top_p <= 1:
        return _reject(msg, ErrorCode.BAD_SAMPLING, f"top_p must be in (0, 1], got {s.top_p}")
    if s.stop_token_ids and any(not 0 <= t < info.vocab_size for t in s.stop_token_ids):
        return _reject(msg, ErrorCode.BAD_SAMPLING, "a stop token id is outside the vocabulary")
    if s.stop and any(x == "" for x in s.stop):
        return _reject(msg, ErrorCode.BAD_SAMPLING, "stop strings must not be empty")
    slo = msg.slo
    for name, v in (("ttft_ms", slo.ttft_ms), ("tpot_ms", slo.tpot_ms)):
        if v is not None and (not _finite(v) or v <= 0):
            return _reject(msg, ErrorCode.BAD_SLO, f"slo.{name} must be positive, got {v}")
    return None


@lru_cache(maxsize=64)
def _ids_of(vocab: int) -> type:
    return list[Annotated[int, msgspec.Meta(ge=0, lt=vocab)]]


def _in_vocab(ids: tuple[int, ...], vocab: int) -> bool:
    """0 <= every id < vocab, checked by msgspec in one pass in C (~3x faster than min() and max():
    this runs over every prompt's ids at every submission). What it refuses (an id out of range,
    or not an int at all) is judged again by min() and max(), so the answer is theirs."""
    try:
        msgspec.convert(ids, _ids_of(vocab))
    except msgspec.ValidationError:
        return min(ids) >= 0 and max(ids) < vocab
    return True


def _reject(msg: SubmitRequest, code: ErrorCode, text: str) -> RequestRejected:
    return RequestRejected(request_id=msg.request_id, code=code, message=text)
