"""The one mapping from errors to HTTP statuses and OpenAI bodies: a case per code."""

from __future__ import annotations

import pytest

from c2cq.errors import PeerDeadError, RequestError, RequestTimeout
from c2cq.schemas.enums import ErrorCode
from c2cq.services.gateway.errors import ParamError, http_error, overloaded, too_large, unauthorized

CASES = [  # (code, status, param at /v1/completions, OpenAI code)
    (ErrorCode.UNKNOWN_MODEL, 404, "model", "model_not_found"),
    (ErrorCode.EMPTY_PROMPT, 400, "prompt", "empty_prompt"),
    (ErrorCode.PROMPT_TOO_LONG, 400, "prompt", "context_length_exceeded"),
    (ErrorCode.BAD_MAX_TOKENS, 400, "max_tokens", "invalid_parameter"),
    (ErrorCode.BAD_SLO, 400, "slo", "invalid_parameter"),
    (ErrorCode.MALFORMED, 400, None, "invalid_request"),
    (ErrorCode.DUPLICATE_REQUEST, 409, None, "duplicate_request"),
    (ErrorCode.QUEUE_FULL, 503, None, "queue_full"),
    (ErrorCode.SLO_UNATTAINABLE, 503, "slo", "slo_unattainable"),
    (ErrorCode.NO_EXECUTOR, 503, None, "no_executor"),
    (ErrorCode.EXECUTOR_LOST, 503, None, "executor_lost"),
    (ErrorCode.SHUTTING_DOWN, 503, None, "shutting_down"),
    (ErrorCode.UNKNOWN_REQUEST, 404, None, "unknown_request"),
    (ErrorCode.MODEL_IN_USE, 409, "model", "model_in_use"),
    (ErrorCode.BAD_MODEL, 500, "model", "bad_model"),
    (ErrorCode.INTERNAL, 500, None, "internal"),
]


def test_every_code_has_a_case():
    assert {c for c, *_ in CASES} | {ErrorCode.BAD_SAMPLING} == set(ErrorCode)


@pytest.mark.parametrize("code,status,param,oa_code", CASES)
def test_rejection_codes(code, status, param, oa_code):
    e = http_error(RequestError(code, f"because {code}", "r1"))
    assert e.status == status
    assert e.body == {"error": {"message": f"because {code}", "type": e.body["error"]["type"], "param": param,
                                "code": oa_code}}
    assert e.body["error"]["type"] == ("server_error" if status >= 500 else
                                       "not_found_error" if status == 404 and code != ErrorCode.UNKNOWN_MODEL
                                       else "invalid_request_error")
    assert (e.headers == {"Retry-After": "1"}) == (status == 503)


def test_prompt_is_called_messages_at_chat():
    assert http_error(RequestError(ErrorCode.PROMPT_TOO_LONG, "long"), prompt_param="messages").body["error"][
        "param"] == "messages"


@pytest.mark.parametrize("text,param", [("temperature must be ≥ 0", "temperature"),
                                        ("top_p must be in (0, 1]", "top_p"),
                                        ("top_k must be ≥ 0", "top_k"), ("stop strings must not be empty", "stop")])
def test_bad_sampling_names_the_parameter(text, param):
    e = http_error(RequestError(ErrorCode.BAD_SAMPLING, text))
    assert e.status == 400 and e.body["error"]["param"] == param


def test_gateway_errors():
    assert http_error(unauthorized()).status == 401
    assert http_error(unauthorized()).body["error"]["code"] == "invalid_api_key"
    assert http_error(too_large(10)).status == 413
    e = http_error(overloaded(4))
    assert e.status == 503 and e.headers == {"Retry-After": "1"} and e.body["error"]["code"] == "queue_full"
    p = http_error(ParamError("bad", "max_tokens"))
    assert p.status == 400 and p.body["error"]["param"] == "max_tokens"


def test_peer_failures_and_the_unexpected():
    dead = http_error(PeerDeadError("gone"))
    assert dead.status == 503 and "Retry-After" in dead.headers
    assert http_error(RequestTimeout("slow")).status == 504
    boom = http_error(ZeroDivisionError("secret detail"))
    assert boom.status == 500 and "secret" not in boom.body["error"]["message"]
