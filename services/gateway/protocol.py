"""The OpenAI wire, as vLLM and the OpenAI API define it: request bodies, validation, response bodies.

Requests decode straight from the body bytes into msgspec Structs (unknown fields are ignored, as
the OpenAI API does for fields a server does not implement); every failure is a ``ParamError``
that names the parameter. Responses are plain dicts built by the functions at the bottom, encoded
once with msgspec's JSON encoder.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import msgspec

from c2cq.services.gateway.errors import ParamError

COMPLETION_DEFAULT_MAX_TOKENS = 16  # the OpenAI completions default


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class SLOBody(msgspec.Struct, kw_only=True):
    ttft_ms: float | None = None
    tpot_ms: float | None = None


class _Sampling(msgspec.Struct, kw_only=True):
    """Fields both endpoints share (OpenAI's, then c2cq's extensions)."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None
    logprobs: Any = None  # not implemented: anything but null/false is refused
    # c2cq / vLLM extensions
    top_k: int | None = None
    ignore_eos: bool = False
    slo: SLOBody | None = None


class CompletionRequest(_Sampling, kw_only=True):
    # a string, a list of strings, a list of token ids, or a list of token-id lists; one union may
    # hold one array type only, so the list's items are checked after decoding
    prompt: str | list[str | int | list[int]]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class ContentPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_Sampling, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    add_generation_prompt: bool = True  # vLLM's extension


_decoders = {t: msgspec.json.Decoder(t) for t in (CompletionRequest, ChatCompletionRequest)}
_encoder = msgspec.json.Encoder()
_AT = re.compile(r" - at `\$\.?([^`]*)`")
_FIELD = re.compile(r"field `([^`]+)`")


def encode(doc: Any) -> bytes:
    return _encoder.encode(doc)


def decode(body: bytes, kind: type) -> Any:
    """The request of ``kind`` in ``body``, or a ParamError naming the parameter at fault."""
    try:
        return _decoders[kind].decode(body)
    except msgspec.ValidationError as e:
        text = str(e)
        at, missing = _AT.search(text), _FIELD.search(text)
        param = at.group(1) if at else None
        if missing and "missing required field" in text:
            param = f"{param}.{missing.group(1)}" if param else missing.group(1)
        raise ParamError(f"invalid request: {_AT.sub('', text)}", param) from None
    except msgspec.DecodeError as e:
        raise ParamError(f"the body is not valid JSON: {e}", None, code="invalid_json") from None


# ---- validation (the bounds the gateway can check before the scheduler does) ------------------------


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_prompt_chars: int = 1_000_000  # the scheduler's own bound; a prompt list shares it
    max_prompts: int = 64  # prompts in one completions request
    max_messages: int = 1_000
    default_max_tokens: int = 1024  # chat requests that give none: at most this, and what the context leaves


def _finite(x: float) -> bool:
    return math.isfinite(x)


def check_sampling(r: _Sampling) -> None:
    if r.n != 1:
        raise ParamError(f"n must be 1 (c2cq returns one choice per prompt), got {r.n}", "n")
    if r.logprobs not in (None, False, 0):
        raise ParamError("logprobs are not supported", "logprobs")
    if r.temperature is not None and (not _finite(r.temperature) or r.temperature < 0):
        raise ParamError(f"temperature must be ≥ 0, got {r.temperature}", "temperature")
    if r.top_p is not None and (not _finite(r.top_p) or not 0 < r.top_p <= 1):
        raise ParamError(f"top_p must be in (0, 1], got {r.top_p}", "top_p")
    if r.top_k is not None and r.top_k < -1:
        raise ParamError(f"top_k must be -1 or 0 (off) or positive, got {r.top_k}", "top_k")
    if r.seed is not None and not -2**63 <= r.seed < 2**64:
        raise ParamError("seed is out of range", "seed")
    for s in stop_list(r):
        if not s:
            raise ParamError("stop strings must not be empty", "stop")
    if r.slo is not None:
        for name in ("ttft_ms", "tpot_ms"):
            v = getattr(r.slo, name)
            if v is not None and (not _finite(v) or v <= 0):
                raise ParamError(f"slo.{name} must be positive, got {v}", f"slo.{name}")
    if not r.model:
        raise ParamError("model must not be empty", "model")


def check_max_tokens(value: int | None, param: str) -> None:
    if value is not None and value <= 0:
        raise ParamError(f"{param} must be positive, got {value}", param)


def parse(body: bytes, kind: type) -> Any:
    """Decode and check the parts both endpoints share."""
    r = decode(body, kind)
    check_sampling(r)
    check_max_tokens(r.max_tokens, "max_tokens")
    check_max_tokens(getattr(r, "max_completion_tokens", None), "max_completion_tokens")
    return r


def stop_list(r: _Sampling) -> list[str]:
    return [r.stop] if isinstance(r.stop, str) else list(r.stop or ())


def prompts_of(r: CompletionRequest, limits: Limits) -> list[str | list[int]]:
    """The request's prompts, each a string or a list of token ids."""
    p = r.prompt
    if isinstance(p, str):
        prompts: list = [p]
    elif p and all(isinstance(x, int) for x in p):
        prompts = [list(p)]
    elif p and all(isinstance(x, str) for x in p):
        prompts = list(p)
    elif p and all(isinstance(x, list) for x in p):
        prompts = [list(x) for x in p]
    else:
        raise ParamError("prompt must be a string, a list of strings, a list of token ids or a list of "
                         "token-id lists (not empty, not mixed)", "prompt")
    if len(prompts) > limits.max_prompts:
        raise ParamError(f"at most {limits.max_prompts} prompts in one request, got {len(prompts)}", "prompt")
    size = 0
    for x in prompts:
        if not x:
            raise ParamError("a prompt is empty", "prompt")
        size += len(x)
    if size > limits.max_prompt_chars:
        raise ParamError(f"the prompt is {size} characters or tokens long; the limit is {limits.max_prompt_chars}",
                         "prompt", code="context_length_exceeded")
    if r.echo:
        raise ParamError("echo is not supported", "echo")
    if r.best_of not in (None, 1):
        raise ParamError("best_of must be 1", "best_of")
    if r.suffix:
        raise ParamError("suffix is not supported", "suffix")
    return prompts


def messages_of(r: ChatCompletionRequest, limits: Limits) -> list[dict[str, Any]]:
    """The messages as the chat template reads them: text parts joined into one string."""
    if not r.messages:
        raise ParamError("messages must not be empty", "messages")
    if len(r.messages) > limits.max_messages:
        raise ParamError(f"at most {limits.max_messages} messages, got {len(r.messages)}", "messages")
    out, size = [], 0
    for i, m in enumerate(r.messages):
        content = m.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise ParamError(f"content part of type {part.type!r} is not supported (text only)",
                                     f"messages[{i}].content[{j}]")
                texts.append(part.text)
            content = "\n".join(texts)
        size += len(content or "")
        doc: dict[str, Any] = {"role": m.role, "content": content if content is not None else ""}
        if m.name is not None:
            doc["name"] = m.name
        out.append(doc)
    if size > limits.max_prompt_chars:
        raise ParamError(f"the messages hold {size} characters; the limit is {limits.max_prompt_chars}",
                         "messages", code="context_length_exceeded")
    return out


def submit_kwargs(r: _Sampling, max_tokens: int) -> dict[str, Any]:
    """The sampling part of ``AsyncClient.submit``'s arguments (OpenAI's defaults where absent)."""
    top_k = r.top_k if r.top_k is not None and r.top_k > 0 else 0
    slo = {"ttft_ms": r.slo.ttft_ms, "tpot_ms": r.slo.tpot_ms} if r.slo is not None else None
    return dict(max_tokens=max_tokens, temperature=1.0 if r.temperature is None else float(r.temperature),
                top_p=1.0 if r.top_p is None else float(r.top_p), top_k=top_k, seed=r.seed, stop=stop_list(r),
                ignore_eos=r.ignore_eos, slo=slo)


def include_usage(r: _Sampling) -> bool:
    return bool(r.stream and r.stream_options is not None and r.stream_options.include_usage)


# ---- responses (msgspec Structs: UNSET fields are left out of the JSON, None ones are null) ---------

FINISH = {"stop": "stop", "length": "length", "cancelled": "abort", "error": "error"}
UNSET = msgspec.UNSET


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(msgspec.Struct, kw_only=True):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class Completion(msgspec.Struct, kw_only=True):
    id: str
    object: str
    created: int
    model: str
    choices: list
    usage: Usage | None | msgspec.UnsetType = UNSET


class Delta(msgspec.Struct, kw_only=True):
    role: str | msgspec.UnsetType = UNSET
    content: str | msgspec.UnsetType = UNSET


class AssistantMessage(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    content: str = ""


class ChatChoice(msgspec.Struct, kw_only=True):
    index: int
    message: AssistantMessage | msgspec.UnsetType = UNSET
    delta: Delta | msgspec.UnsetType = UNSET
    logprobs: None = None
    finish_reason: str | None = None


class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    created: int
    max_model_len: int
    c2cq: dict  # c2cq's own: kind, architecture, size, and which slices hold it at what alpha
    object: str = "model"
    owned_by: str = "c2cq"
    root: str | None = None
    parent: None = None


def now_s() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def _chunk_usage(with_usage: bool):
    return None if with_usage else UNSET  # include_usage: every chunk says "usage": null but the last


def completion(rid: str, model: str, created: int, choices: list[tuple[str, str]], use: Usage) -> Completion:
    return Completion(id=rid, object="text_completion", created=created, model=model, usage=use,
                      choices=[CompletionChoice(index=i, text=t, finish_reason=f) for i, (t, f) in enumerate(choices)])


def completion_chunk(rid: str, model: str, created: int, index: int, text: str, finish: str | None,
                     with_usage: bool) -> Completion:
    return Completion(id=rid, object="text_completion", created=created, model=model, usage=_chunk_usage(with_usage),
                      choices=[CompletionChoice(index=index, text=text, finish_reason=finish)])


def chat(rid: str, model: str, created: int, text: str, finish: str, use: Usage) -> Completion:
    return Completion(id=rid, object="chat.completion", created=created, model=model, usage=use,
                      choices=[ChatChoice(index=0, message=AssistantMessage(content=text), finish_reason=finish)])


def chat_chunk(rid: str, model: str, created: int, delta: Delta, finish: str | None, with_usage: bool) -> Completion:
    return Completion(id=rid, object="chat.completion.chunk", created=created, model=model,
                      usage=_chunk_usage(with_usage), choices=[ChatChoice(index=0, delta=delta, finish_reason=finish)])


def usage_chunk(rid: str, obj: str, model: str, created: int, use: Usage) -> Completion:
    return Completion(id=rid, object=obj, created=created, model=model, choices=[], usage=use)


def model_object(name: str, created: int, max_context: int, extra: dict) -> ModelCard:
    return ModelCard(id=name, created=created, max_model_len=max_context, root=name, c2cq=extra)
