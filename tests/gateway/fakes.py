"""In-process stand-ins for the scheduler client and the catalog, for tests of the app alone.

``FakeClient`` answers like ``c2cq.AsyncClient``: a Stream per submit fed with the scheduler's reply
messages (token ``k`` of every request is id ``k % 200`` with text ``"w{k} "``); unknown models and
bad parameters are rejected with the scheduler's codes.
"""

from __future__ import annotations

import asyncio

from c2cq.client import Stream
from c2cq.errors import PeerDeadError, RequestError
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.client import (ExecutorStatus, MetricFamily, MetricSeries, MetricsReply, RequestAccepted,
                                 RequestFinished, StatusReply, Timings, TokensEmitted, Usage)
from c2cq.schemas.enums import ErrorCode, FinishReason, ModelKind
from c2cq.services.gateway.models import ModelMeta
from .tiny import QWEN_TEMPLATE, byte_tokenizer, tokenizer_config

MODELS = {"tiny": QWEN_TEMPLATE, "plain": None}


def info(name: str) -> ModelInfo:
    return ModelInfo(name=name, kind=ModelKind.REAL, architecture="qwen2", parameters=1000, bytes=4000,
                     dtype="fp32", vocab_size=307, num_layers=3, hidden_size=72, max_context=256)


class FakeClient:
    def __init__(self, *, hold: bool = False, reject: str | None = None, burst: bool = False) -> None:
        self.hold = hold  # streams wait for release() before their tokens
        self.burst = burst  # every token at once (a consumer that fell behind)
        self.reject = reject  # reject every submit with this code
        self.release = asyncio.Event()
        self.submitted: list[dict] = []
        self.got = asyncio.Event()  # set at the first submit
        self.cancelled: list[str] = []
        self._streams: dict[str, Stream] = {}
        self._tasks: set[asyncio.Task] = set()
        self.dead = False  # metrics() raises PeerDeadError, as a client whose scheduler stopped answering

    async def submit(self, model, prompt=None, *, prompt_token_ids=None, request_id, max_tokens=16, **kw):
        self.submitted.append(dict(model=model, prompt=prompt, prompt_token_ids=prompt_token_ids,
                                   request_id=request_id, max_tokens=max_tokens, **kw))
        self.got.set()
        s = Stream(self, request_id, 5.0)
        self._streams[request_id] = s
        if model not in MODELS:
            s.queue.put_nowait(RequestError(ErrorCode.UNKNOWN_MODEL, f"unknown model {model!r}", request_id))
        elif self.reject:
            s.queue.put_nowait(RequestError(self.reject, f"rejected: {self.reject}", request_id))
        else:
            n_prompt = len(prompt_token_ids) if prompt_token_ids is not None else len(prompt.encode())
            t = asyncio.create_task(self._run(s, model, n_prompt, max_tokens))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        return s

    async def _run(self, s: Stream, model: str, n_prompt: int, max_tokens: int) -> None:
        s.queue.put_nowait(RequestAccepted(request_id=s.request_id, model=model))
        if self.hold:
            await self.release.wait()
        for k in range(max_tokens):
            if s.request_id in self.cancelled:
                return self._end(s, n_prompt, k, FinishReason.CANCELLED)
            s.queue.put_nowait(TokensEmitted(request_id=s.request_id, seq=k, token_ids=(k % 200,), text=f"w{k} "))
            if not self.burst:
                await asyncio.sleep(0)
        self._end(s, n_prompt, max_tokens, FinishReason.LENGTH)

    def _end(self, s: Stream, n_prompt: int, n: int, reason: FinishReason) -> None:
        s.queue.put_nowait(RequestFinished(request_id=s.request_id, finish_reason=reason,
                                           usage=Usage(prompt_tokens=n_prompt, completion_tokens=n),
                                           timings=Timings(queued_ms=0.0, ttft_ms=0.0, e2e_ms=0.0)))

    async def cancel(self, request_id: str) -> None:
        self.cancelled.append(request_id)

    async def metrics(self, timeout: float = 5.0) -> MetricsReply:
        if self.dead:
            raise PeerDeadError("the scheduler has not answered")
        series = (MetricSeries(labels=("tiny", "stop"), value=len(self.submitted)),)
        return MetricsReply(nonce=0, families=(MetricFamily(name="c2cq:request_success_total", kind="counter",
                                                            help="finished requests", labels=("model_name", "finished_reason"),
                                                            series=series),))

    async def status(self, timeout: float = 5.0) -> StatusReply:
        rows = (ExecutorStatus(executor_id="cpu0", state="ready", backend="cpu", device="cpu", model="tiny",
                               alpha=0.25, active_requests=0, queued_requests=0),)
        return StatusReply(nonce=0, executors=rows, requests_in_flight=0, requests_total=0)


class FakeCatalog:
    def __init__(self) -> None:
        self.tok = byte_tokenizer()

    async def models(self, *, fresh: bool = False):
        return {n: info(n) for n in MODELS}

    async def info(self, name: str):
        return info(name) if name in MODELS else None

    async def meta(self, i: ModelInfo) -> ModelMeta:
        t = MODELS[i.name]
        return ModelMeta(name=i.name, max_context=i.max_context, chat_template=t, tokenizer_config=tokenizer_config(t),
                         tokenizer=self.tok, created=0)
