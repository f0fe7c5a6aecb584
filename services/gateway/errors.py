"""One function from every error the gateway can meet to an HTTP status and an OpenAI error body.

Body: ``{"error": {"message", "type", "param", "code"}}``. Overload (the scheduler's ``queue_full``,
``slo_unattainable``, ``no_executor``, the gateway's own concurrency bound) is 503 with
``Retry-After``: the ``openai`` client retries those by itself. Nothing else escapes as a traceback:
an unexpected exception is a 500 whose message names only its type.
"""

from __future__ import annotations

from typing import NamedTuple

from c2cq.errors import C2CQError, PeerDeadError, RequestError, RequestTimeout
from c2cq.schemas.enums import ErrorCode

RETRY_AFTER_S = 1


class GatewayError(C2CQError):
    """An error the gateway itself answers with (bad body, auth, bounds, overload)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("server_error" if status >= 500 else "invalid_request_error")


class ParamError(GatewayError):
    """A bad request parameter: 400 naming it."""

    def __init__(self, message: str, param: str | None, *, code: str | None = "invalid_parameter") -> None:
        super().__init__(400, message, param=param, code=code)


class HTTPError(NamedTuple):
    status: int
    body: dict
    headers: dict[str, str]


# scheduler / executor rejection codes: (status, param, OpenAI code)
_CODES: dict[str, tuple[int, str | None, str]] = {
    ErrorCode.UNKNOWN_MODEL: (404, "model", "model_not_found"),
    ErrorCode.EMPTY_PROMPT: (400, "prompt", "empty_prompt"),
    ErrorCode.PROMPT_TOO_LONG: (400, "prompt", "context_length_exceeded"),
    ErrorCode.BAD_MAX_TOKENS: (400, "max_tokens", "invalid_parameter"),
    ErrorCode.BAD_SAMPLING: (400, None, "invalid_parameter"),
    ErrorCode.BAD_SLO: (400, "slo", "invalid_parameter"),
    ErrorCode.MALFORMED: (400, None, "invalid_request"),
    ErrorCode.DUPLICATE_REQUEST: (409, None, "duplicate_request"),
    ErrorCode.QUEUE_FULL: (503, None, "queue_full"),
    ErrorCode.SLO_UNATTAINABLE: (503, "slo", "slo_unattainable"),
    ErrorCode.NO_EXECUTOR: (503, None, "no_executor"),
    ErrorCode.EXECUTOR_LOST: (503, None, "executor_lost"),
    ErrorCode.SHUTTING_DOWN: (503, None, "shutting_down"),
    ErrorCode.UNKNOWN_REQUEST: (404, None, "unknown_request"),
    ErrorCode.MODEL_IN_USE: (409, "model", "model_in_use"),
    ErrorCode.BAD_MODEL: (500, "model", "bad_model"),
    ErrorCode.INTERNAL: (500, None, "internal"),
}
_SAMPLING_PARAMS = ("temperature", "top_p", "top_k", "stop", "seed")


def _body(message: str, type_: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _retry(status: int) -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}


def http_error(exc: BaseException, *, prompt_param: str = "prompt") -> HTTPError:
    """The status, OpenAI body and headers for ``exc``; ``prompt_param``: what the prompt is called
    at this endpoint (``messages`` for chat)."""
    if isinstance(exc, GatewayError):
        return HTTPError(exc.status, _body(exc.message, exc.type, exc.param, exc.code), _retry(exc.status))
    if isinstance(exc, RequestError):
        status, param, code = _CODES.get(exc.code, (500, None, "internal"))
        if param == "prompt":
            param = prompt_param
        if exc.code == ErrorCode.BAD_SAMPLING:
            param = next((p for p in _SAMPLING_PARAMS if p in exc.message), None)
        type_ = "server_error" if status >= 500 else ("not_found_error" if status == 404 else "invalid_request_error")
        if exc.code == ErrorCode.UNKNOWN_MODEL:
            type_ = "invalid_request_error"
        return HTTPError(status, _body(exc.message, type_, param, code), _retry(status))
    if isinstance(exc, PeerDeadError):
        return HTTPError(503, _body(f"the scheduler is not answering: {exc}", "server_error", None, "unavailable"),
                         _retry(503))
    if isinstance(exc, RequestTimeout):
        return HTTPError(504, _body(str(exc), "server_error", None, "timeout"), {})
    return HTTPError(500, _body(f"internal error ({type(exc).__name__})", "server_error", None, "internal"), {})


def unauthorized() -> GatewayError:
    return GatewayError(401, "invalid or missing API key (send Authorization: Bearer KEY)", code="invalid_api_key")


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"the request body exceeds {limit} bytes", code="request_too_large")


def overloaded(limit: int) -> GatewayError:
    return GatewayError(503, f"the gateway is serving its limit of {limit} concurrent requests; retry",
                        code="queue_full")
