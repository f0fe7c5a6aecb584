"""Submission checks: every bad request gets a RequestRejected with a clear message."""

from __future__ import annotations

import math

import msgspec

from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.client import RequestRejected, SubmitRequest
from c2cq.schemas.enums import ErrorCode


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_tokens: int = 4096  # the largest max_tokens a request may ask for
    max_prompt_chars: int = 1_000_000
    max_waiting: int = 10_000  # bounded queue of accepted requests with no executor yet
    max_request_id_len: int = 128


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def check_submit(msg: SubmitRequest, info: ModelInfo | None, limits: Limits) -> RequestRejected | None:
    def reject(code: ErrorCode, text: str) -> RequestRejected:
        return RequestRejected(request_id=msg.request_id, code=code, message=text)

    if not msg.request_id or len(msg.request_id) > limits.max_request_id_len:
        return reject(ErrorCode.MALFORMED, f"request_id must be 1..{limits.max_request_id_len} characters")
    if info is None:
        return reject(ErrorCode.UNKNOWN_MODEL, f"unknown model {msg.model!r}")
    has_text = msg.prompt is not None and msg.prompt != ""
    has_ids = msg.prompt_token_ids is not None and len(msg.prompt_token_ids) > 0
    if has_text and has_ids:
        return reject(ErrorCode.MALFORMED, "give prompt or prompt_token_ids, not both")
    if not has_text and not has_ids:
        return reject(ErrorCode.EMPTY_PROMPT, "the prompt is empty")
    if has_text and len(msg.prompt) > limits.max_prompt_chars:
        return reject(ErrorCode.PROMPT_TOO_LONG, f"prompt of {len(msg.prompt)} characters exceeds {limits.max_prompt_chars}")
    if has_ids:
        bad = next((t for t in msg.prompt_token_ids if not 0 <= t < info.vocab_size), None)
        if bad is not None:
            return reject(ErrorCode.MALFORMED, f"token id {bad} outside the vocabulary of {info.vocab_size}")
        if len(msg.prompt_token_ids) >= info.max_context:
            return reject(ErrorCode.PROMPT_TOO_LONG, f"prompt of {len(msg.prompt_token_ids)} tokens does not fit the context of {info.max_context}")
    if msg.max_tokens <= 0:
        return reject(ErrorCode.BAD_MAX_TOKENS, f"max_tokens must be positive, got {msg.max_tokens}")
    if msg.max_tokens > limits.max_tokens:
        return reject(ErrorCode.BAD_MAX_TOKENS, f"max_tokens {msg.max_tokens} exceeds the limit of {limits.max_tokens}")
    if has_ids and len(msg.prompt_token_ids) + msg.max_tokens > info.max_context:
        return reject(ErrorCode.PROMPT_TOO_LONG, f"prompt plus max_tokens exceeds the context of {info.max_context}")
    s = msg.sampling
    if not _finite(s.temperature) or s.temperature < 0:
        return reject(ErrorCode.BAD_SAMPLING, f"temperature must be ≥ 0, got {s.temperature}")
    if s.top_k < 0:
        return reject(ErrorCode.BAD_SAMPLING, f"top_k must be ≥ 0, got {s.top_k}")
    if not _finite(s.top_p) or not 0 < s.top_p <= 1:
        return reject(ErrorCode.BAD_SAMPLING, f"top_p must be in (0, 1], got {s.top_p}")
    if any(not 0 <= t < info.vocab_size for t in s.stop_token_ids):
        return reject(ErrorCode.BAD_SAMPLING, "a stop token id is outside the vocabulary")
    if any(x == "" for x in s.stop):
        return reject(ErrorCode.BAD_SAMPLING, "stop strings must not be empty")
    for name in ("ttft_ms", "tpot_ms"):
        v = getattr(msg.slo, name)
        if v is not None and (not _finite(v) or v <= 0):
            return reject(ErrorCode.BAD_SLO, f"slo.{name} must be positive, got {v}")
    return None
