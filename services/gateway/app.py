"""The routes: each translates an OpenAI request into client-library calls and the replies back.

``build_app(client, catalog, config)`` takes anything shaped like ``c2cq.AsyncClient`` and
``models.Catalog`` (tests hand it fakes). Requests are bounded (body bytes, prompt sizes,
concurrent requests); every failure leaves through ``errors.http_error``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from c2cq import log
from c2cq.schemas.client import TokensEmitted
from c2cq.services.gateway import protocol as P
from c2cq.services.gateway.chat_template import render
from c2cq.services.gateway.errors import GatewayError, ParamError, http_error, overloaded, too_large, unauthorized
from c2cq.services.gateway.metrics import render as render_metrics
from c2cq.services.gateway.streams import Batch, wait_disconnect

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Config:
    api_key: str | None = None
    metrics_auth: bool = False  # /health and /metrics need the key too
    max_body_bytes: int = 8 << 20
    max_concurrent: int = 1024  # requests in flight through this gateway; more get 503 + Retry-After
    limits: P.Limits = field(default_factory=P.Limits)
    health_cache_s: float = 0.5


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(P.encode(doc), status_code=status, headers=headers, media_type=JSON)


def error_response(exc: BaseException, prompt_param: str = "prompt") -> Response:
    e = http_error(exc, prompt_param=prompt_param)
    return _json(e.body, e.status, e.headers)


class Auth:
    """Bearer-key check (constant time) on /v1/*, and on /health and /metrics with ``metrics_auth``."""

    def __init__(self, app, config: Config) -> None:
        self.app, self.config = app, config
        self.expected = f"Bearer {config.api_key}".encode() if config.api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if self.expected is not None and scope["type"] == "http" and self._guarded(scope["path"]):
            got = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(got, self.expected):
                await error_response(unauthorized())(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _guarded(self, path: str) -> bool:
        return (path.startswith("/v1/") or path == "/v1"
                or (self.config.metrics_auth and path in ("/health", "/metrics")))


class Gateway:
    def __init__(self, client: Any, catalog: Any, config: Config) -> None:
        self.client, self.catalog, self.config = client, catalog, config
        self.in_flight = 0
        self._health: tuple[float, int, str] = (-1e9, 0, "")
        self.log = log.get()

    # -- shared steps -----------------------------------------------------------------------------
    async def body(self, request: Request) -> bytes:
        ctype = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
        if ctype != JSON and not ctype.endswith("+json"):
            raise GatewayError(415, f"content-type must be {JSON}, got {ctype!r}", code="unsupported_media_type")
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise too_large(limit)
        parts, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            parts.append(chunk)
        return b"".join(parts)

    def admit(self) -> None:
        if self.in_flight >= self.config.max_concurrent:
            raise overloaded(self.config.max_concurrent)
        self.in_flight += 1

    async def respond(self, request: Request, batch: Batch, stream: bool, first_chunks, build, chunk, tail,
                      prompt_param: str) -> Response:
        """The shared end of both endpoints: a JSON body, or SSE once the first event is in (so an error
        before any token is still a proper HTTP status)."""
        if not stream:
            waiter = asyncio.ensure_future(wait_disconnect(request.receive))
            work = asyncio.ensure_future(batch.collect())
            try:
                done, _ = await asyncio.wait([waiter, work], return_when=asyncio.FIRST_COMPLETED)
                if work not in done:  # the client went away: stop the slices working for it
                    work.cancel()
                    await batch.cancel()
                    return Response(status_code=499)
                return _json(build(work.result()))
            finally:
                waiter.cancel()
                work.cancel()
        events = batch.events()
        try:
            first = await anext(events)
        except BaseException:
            await batch.cancel()
            raise

        closed = False

        async def cleanup() -> None:  # once, from the stream's end or, if it never ran, after the response
            nonlocal closed
            if not closed:
                closed = True
                await batch.cancel()  # a no-op unless the client left (or an error ended it) early
                self.in_flight -= 1

        async def sse():
            try:
                for doc in first_chunks():
                    yield {"data": P.encode(doc).decode()}
                item = first
                while True:
                    doc = chunk(*item)
                    if doc is not None:
                        yield {"data": P.encode(doc).decode()}
                    try:
                        item = await anext(events)
                    except StopAsyncIteration:
                        break
                for doc in tail():
                    yield {"data": P.encode(doc).decode()}
            except Exception as e:  # noqa: BLE001 - after the headers an error is the stream's last event
                yield {"data": P.encode(http_error(e, prompt_param=prompt_param).body).decode()}
            finally:
                await cleanup()
            yield {"data": "[DONE]"}

        self.in_flight += 1  # held by the stream until it ends
        return EventSourceResponse(sse(), sep="\n", ping=15, headers={"Cache-Control": "no-cache"},
                                   background=BackgroundTask(cleanup))

    # -- /v1/completions --------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        return await self.guarded(request, self._completions, "prompt")

    async def _completions(self, request: Request) -> Response:
        r = P.parse(await self.body(request), P.CompletionRequest)
        prompts = P.prompts_of(r, self.config.limits)
        max_tokens = P.COMPLETION_DEFAULT_MAX_TOKENS if r.max_tokens is None else r.max_tokens
        await self.check_context(r.model, prompts, max_tokens)
        rid = uuid.uuid4().hex
        oid, created, model, usage_on = f"cmpl-{rid}", P.now_s(), r.model, P.include_usage(r)
        batch = await Batch(self.client).submit(model, prompts, rid, oid, P.submit_kwargs(r, max_tokens))

        def build(results):
            use = P.usage(batch.prompt_tokens(), batch.completion_tokens())
            return P.completion(oid, model, created, [(t, P.FINISH[f.finish_reason]) for t, f in results], use)

        def chunk(i, item):
            if isinstance(item, TokensEmitted):
                return P.completion_chunk(oid, model, created, i, item.text, None, usage_on)
            return P.completion_chunk(oid, model, created, i, "", P.FINISH[item.finish_reason], usage_on)

        def tail():
            if usage_on:
                yield P.usage_chunk(oid, "text_completion", model, created,
                                    P.usage(batch.prompt_tokens(), batch.completion_tokens()))

        return await self.respond(request, batch, r.stream, lambda: (), build, chunk, tail, "prompt")

    async def check_context(self, model: str, prompts: list[str | list[int]], max_tokens: int) -> None:
        """A text prompt that may not fit the model's context is tokenized here to tell (the scheduler
        checks token-id prompts; the executor sees text only as tokens). A byte-level or byte-fallback
        tokenizer makes at most one token per UTF-8 byte, so short prompts skip it."""
        info = await self.catalog.info(model)
        if info is None:
            raise GatewayError(404, f"unknown model {model!r}", param="model", code="model_not_found")
        if max_tokens >= info.max_context:
            raise ParamError(f"max_tokens {max_tokens} leaves no room for a prompt in the context of "
                             f"{info.max_context}", "max_tokens")
        for p in prompts:
            if isinstance(p, list) or len(p.encode()) + max_tokens + 8 <= info.max_context:
                continue
            meta = await self.catalog.meta(info)
            if meta.tokenizer is None:
                continue
            n = len((await asyncio.to_thread(meta.tokenizer.encode, p)).ids)
            if n + max_tokens > info.max_context:
                raise ParamError(f"the prompt is {n} tokens; with max_tokens {max_tokens} it exceeds the context "
                                 f"of {info.max_context}", "prompt", code="context_length_exceeded")

    # -- /v1/chat/completions ---------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self.guarded(request, self._chat, "messages")

    async def _chat(self, request: Request) -> Response:
        r = P.parse(await self.body(request), P.ChatCompletionRequest)
        messages = P.messages_of(r, self.config.limits)
        info = await self.catalog.info(r.model)
        if info is None:
            raise GatewayError(404, f"unknown model {r.model!r}", param="model", code="model_not_found")
        meta = await self.catalog.meta(info)
        text = render(meta.chat_template, messages, model=r.model, tokenizer_config=meta.tokenizer_config,
                      add_generation_prompt=r.add_generation_prompt)
        if meta.tokenizer is None:
            raise ParamError(f"model {r.model!r} has no tokenizer", "model")
        ids = meta.encode_rendered(text) if len(text) < 20_000 else await asyncio.to_thread(meta.encode_rendered, text)
        asked = r.max_completion_tokens if r.max_completion_tokens is not None else r.max_tokens
        room = meta.max_context - len(ids)
        if asked is not None and asked >= meta.max_context:
            which = "max_completion_tokens" if r.max_completion_tokens is not None else "max_tokens"
            raise ParamError(f"{which} {asked} leaves no room for the messages in the context of "
                             f"{meta.max_context}", which)
        if room <= 0 or (asked is not None and asked > room):
            raise ParamError(f"the rendered messages are {len(ids)} tokens; with "
                             f"{asked if asked is not None else 1} new tokens they exceed the context of "
                             f"{meta.max_context}", "messages", code="context_length_exceeded")
        max_tokens = asked if asked is not None else min(room, self.config.limits.default_max_tokens)
        rid = uuid.uuid4().hex
        oid, created, model, usage_on = f"chatcmpl-{rid}", P.now_s(), r.model, P.include_usage(r)
        batch = await Batch(self.client).submit(model, [ids], rid, oid, P.submit_kwargs(r, max_tokens))

        def build(results):
            (out, fin), = results
            use = P.usage(batch.prompt_tokens(), batch.completion_tokens())
            return P.chat(oid, model, created, out, P.FINISH[fin.finish_reason], use)

        def first_chunks():
            yield P.chat_chunk(oid, model, created, P.Delta(role="assistant", content=""), None, usage_on)

        def chunk(i, item):
            if isinstance(item, TokensEmitted):
                if not item.text:  # an incomplete character, held back by the detokenizer
                    return None
                return P.chat_chunk(oid, model, created, P.Delta(content=item.text), None, usage_on)
            return P.chat_chunk(oid, model, created, P.Delta(), P.FINISH[item.finish_reason], usage_on)

        def tail():
            if usage_on:
                yield P.usage_chunk(oid, "chat.completion.chunk", model, created,
                                    P.usage(batch.prompt_tokens(), batch.completion_tokens()))

        return await self.respond(request, batch, r.stream, first_chunks, build, chunk, tail, "messages")

    async def guarded(self, request: Request, handler, prompt_param: str) -> Response:
        """Admission (the concurrency bound), then the handler; every failure is an OpenAI error body."""
        try:
            self.admit()
        except GatewayError as e:
            return error_response(e)
        try:
            return await handler(request)
        except Exception as e:  # noqa: BLE001
            return self._fail(e, prompt_param)
        finally:
            self.in_flight -= 1

    def _fail(self, e: Exception, prompt_param: str) -> Response:
        resp = error_response(e, prompt_param)
        if resp.status_code >= 500:
            self.log.warning("request_failed", status=resp.status_code, error=f"{type(e).__name__}: {e}"[:300])
        return resp

    # -- models, health, metrics ------------------------------------------------------------------
    async def _placement(self) -> dict[str, list[dict]]:
        rep = await self.client.status(timeout=3.0)
        held: dict[str, list[dict]] = {}
        for e in rep.executors:
            if e.model is not None:
                held.setdefault(e.model, []).append({"slice": e.executor_id, "alpha": e.alpha, "state": e.state,
                                                     "active_requests": e.active_requests})
        return held

    def _model(self, info, held: dict[str, list[dict]], created: int) -> dict:
        return P.model_object(info.name, created, info.max_context, {
            "kind": str(info.kind), "architecture": info.architecture, "parameters": info.parameters,
            "dtype": info.dtype, "bytes": info.bytes, "slices": held.get(info.name, [])})

    async def list_models(self, request: Request) -> Response:
        try:
            models, held = await self.catalog.models(), await self._placement()
            return _json({"object": "list", "data": [self._model(m, held, 0) for m in models.values()]})
        except Exception as e:  # noqa: BLE001
            return self._fail(e, "model")

    async def get_model(self, request: Request) -> Response:
        try:
            info = await self.catalog.info(request.path_params["model"])
            if info is None:
                raise GatewayError(404, f"unknown model {request.path_params['model']!r}", param="model",
                                   code="model_not_found")
            return _json(self._model(info, await self._placement(), 0))
        except Exception as e:  # noqa: BLE001
            return self._fail(e, "model")

    async def health(self, request: Request) -> Response:
        at, ready, why = self._health
        if time.monotonic() - at > self.config.health_cache_s:
            try:
                rep = await self.client.status(timeout=2.0)
                ready, why = sum(e.state == "ready" for e in rep.executors), ""
            except Exception as e:  # noqa: BLE001 - the scheduler is down: not healthy
                ready, why = 0, f"scheduler: {e}"
            self._health = (time.monotonic(), ready, why)
        if ready:
            return _json({"status": "ok", "executors_ready": ready})
        return _json({"status": "unavailable", "executors_ready": 0, "reason": why or "no executor is ready"}, 503)

    async def metrics(self, request: Request) -> Response:
        """The scheduler's metrics (a scheduler that does not answer: 503 in the OpenAI shape)."""
        try:
            body, ctype = await render_metrics(self.client)
        except Exception as e:  # noqa: BLE001
            return self._fail(e, "model")
        return Response(body, media_type=ctype)


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(GatewayError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                       code=code))


async def _any_exception(request: Request, exc: Exception) -> Response:
    return error_response(exc)


def build_app(client: Any, catalog: Any, config: Config | None = None) -> Any:
    """The ASGI app (Starlette routes behind the auth check)."""
    config = config or Config()
    gw = Gateway(client, catalog, config)
    app = Starlette(routes=[
        Route("/v1/completions", gw.completions, methods=["POST"]),
        Route("/v1/chat/completions", gw.chat, methods=["POST"]),
        Route("/v1/models", gw.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", gw.get_model, methods=["GET"]),
        Route("/health", gw.health, methods=["GET"]),
        Route("/metrics", gw.metrics, methods=["GET"]),
    ], exception_handlers={HTTPException: _http_exception, Exception: _any_exception})
    app.state.gateway = gw
    return Auth(app, config)
