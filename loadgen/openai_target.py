"""The loadgen's target for any OpenAI-compatible server (c2cq's gateway, vLLM, SGLang, …).

Each planned request is one ``POST {base}/completions`` with ``stream: true`` and
``stream_options.include_usage``, over one httpx.AsyncClient with no cap on connections (the
run stays open-loop); the SSE stream is read with httpx-sse. Token times come from the stream:
a chunk that carries text is a token's arrival. A server that streams several tokens in one
chunk says so in a usage with the chunk (vLLM's ``continuous_usage_stats``), or at the end
(the final usage chunk): tokens a chunk did not account for are put at the time of the last
chunk, and the final usage's count wins, so ``n_tokens`` is what the server says it produced.

An HTTP error before the stream (4xx, or 503 for an overloaded server) is a rejection, by the
error body's ``code`` (else its ``type``, else ``http_<status>``); an ``{"error": …}`` event in
the stream, any other 5xx, a stream cut short and a transport failure are errors. The server's
model switches are not visible over HTTP (``switched`` stays unknown).

Pure parts: :func:`request_body`, :class:`StreamTally` and :func:`error_code`; the shell is
:class:`OpenAITarget` and :func:`list_models`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import httpx
from httpx_sse import SSEError, aconnect_sse

from c2cq.errors import ConfigError
from c2cq.loadgen.report import Status
from c2cq.loadgen.runner import Clock, Observation, word_prompt
from c2cq.loadgen.workload import PlannedRequest

FINISHED_REASONS = ("stop", "length")


def request_body(req: PlannedRequest, *, send_slo: bool = True) -> dict:
    """The /v1/completions body of a planned request: its prompt (token ids where planned, else
    words), its output length with EOS ignored (vLLM's and c2cq's ``ignore_eos``), greedy, streamed
    with usage; its SLO targets as c2cq's ``slo`` extension unless ``send_slo`` is False."""
    prompt = req.prompt_ids.tolist() if req.prompt_ids is not None else word_prompt(req.prompt_tokens or 1)
    body = {"model": req.model, "prompt": prompt, "max_tokens": req.max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    if send_slo and (req.ttft_ms is not None or req.tpot_ms is not None):
        body["slo"] = {"ttft_ms": req.ttft_ms, "tpot_ms": req.tpot_ms}
    return body


@dataclass
class StreamTally:
    """What the SSE events of one completion said, as they came (``now``: the clock at each)."""

    times: list[float] = field(default_factory=list)  # one per token
    usage_tokens: int | None = None  # the final usage's completion_tokens
    finish_reason: str | None = None
    error: dict | None = None

    def on_event(self, data: dict, now: float) -> None:
        if not isinstance(data, dict):
            self.error = {"code": "bad_event", "message": f"an SSE event that is not an object: {data!r:.200}"}
            return
        if data.get("error") is not None:
            err = data["error"]
            self.error = err if isinstance(err, dict) else {"message": str(err)}
            return
        choices = data.get("choices") or ()
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        for ch in choices:
            text = ch.get("text")
            if text is None:  # a chat chunk
                text = (ch.get("delta") or {}).get("content")
            n = 1 if text else 0
            if n and usage is not None and isinstance(usage.get("completion_tokens"), int):
                n = max(0, usage["completion_tokens"] - len(self.times))  # a chunk that says how many it holds
            self.times.extend([now] * n)
            if ch.get("finish_reason"):
                self.finish_reason = ch["finish_reason"]
        if usage is not None and not choices and isinstance(usage.get("completion_tokens"), int):
            self.usage_tokens = usage["completion_tokens"]

    def token_times(self) -> tuple[float, ...]:
        """One arrival time per token; the final usage's count wins over the chunks'."""
        n = self.usage_tokens
        if n is None or n == len(self.times):
            return tuple(self.times)
        if n < len(self.times):
            return tuple(self.times[:n])
        return tuple(self.times) + (self.times[-1],) * (n - len(self.times)) if self.times else ()

    def observation(self, ended_at: float, done: bool) -> Observation:
        """The outcome once the stream ended (``done``: it ended with ``[DONE]``)."""
        times = self.token_times()
        if self.error is not None:
            code = str(self.error.get("code") or self.error.get("type") or "stream_error")
            return Observation(Status.ERROR, code, times, ended_at, None, str(self.error.get("message", code)))
        if self.finish_reason in FINISHED_REASONS:
            return Observation(Status.FINISHED, None, times, ended_at, None)
        if self.finish_reason is not None:  # abort, cancelled, …: ended by someone else
            return Observation(Status.ERROR, self.finish_reason, times, ended_at, None,
                               f"finish_reason {self.finish_reason!r}")
        why = "the stream ended with [DONE] but no finish_reason" if done else "the stream ended before [DONE]"
        return Observation(Status.ERROR, "stream_cut", times, ended_at, None, why)


def error_code(status: int, body: bytes) -> tuple[Status, str, str]:
    """(status, code, message) of an HTTP error reply: 4xx and 503 are rejections, other 5xx errors."""
    code, message = f"http_{status}", body[:300].decode("utf-8", "replace")
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        code = str(err.get("code") or err.get("type") or code)
        message = str(err.get("message") or message)
    rejected = 400 <= status < 500 or status == 503
    return (Status.REJECTED if rejected else Status.ERROR), code, message


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def check_base(url: str) -> str:
    """The base URL (``http://HOST:PORT/v1``) without its trailing slash."""
    u = httpx.URL(url)
    if u.scheme not in ("http", "https") or not u.host:
        raise ConfigError(f"--target {url!r}: expected http://HOST:PORT/v1")
    return url.rstrip("/")


def list_models(base: str, *, api_key: str | None = None, timeout: float = 10.0) -> list[str]:
    """The ids ``GET {base}/models`` lists, in its order."""
    try:
        r = httpx.get(f"{base}/models", headers=_headers(api_key), timeout=timeout)
    except httpx.HTTPError as e:
        raise ConfigError(f"no OpenAI-compatible server answers at {base} ({type(e).__name__}: {e})") from None
    if r.status_code != 200:
        raise ConfigError(f"GET {base}/models answered {r.status_code}: {r.text[:300]}")
    try:
        return [m["id"] for m in r.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"GET {base}/models did not list models: {r.text[:300]}") from None


class OpenAITarget:
    """Sends each request to ``{base}/completions`` and follows its stream to the end."""

    def __init__(self, base: str, *, api_key: str | None = None, timeout: float = 300.0,
                 send_slo: bool = True) -> None:
        self.url, self.send_slo = f"{check_base(base)}/completions", send_slo
        self.headers = _headers(api_key)
        # open loop: no cap on connections (httpx's default of 100 would queue the 101st request)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                      limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    async def __aenter__(self) -> "OpenAITarget":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.aclose()

    async def send(self, req: PlannedRequest, clock: Clock) -> Observation:
        tally, done = StreamTally(), False
        try:
            async with aconnect_sse(self.http, "POST", self.url, json=request_body(req, send_slo=self.send_slo),
                                    headers=self.headers) as source:
                r = source.response
                if r.status_code != 200:
                    status, code, message = error_code(r.status_code, await r.aread())
                    return Observation(status, code, (), clock.now(), None, message)
                async for sse in source.aiter_sse():
                    if sse.data == "[DONE]":
                        done = True
                        break
                    try:
                        tally.on_event(json.loads(sse.data), clock.now())
                    except ValueError:
                        tally.error = {"code": "bad_event", "message": f"not JSON: {sse.data[:200]!r}"}
                    if tally.error is not None:
                        break
        except asyncio.CancelledError:
            raise  # closing the connection tells the server the client went away
        except (httpx.HTTPError, SSEError) as e:
            return Observation(Status.ERROR, type(e).__name__, tally.token_times(), clock.now(), None,
                               f"{type(e).__name__}: {e}")
        return tally.observation(clock.now(), done)
