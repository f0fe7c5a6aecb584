"""The scheduler requests behind one HTTP request: submit them, merge their token streams, cancel the
unfinished ones (a client that went away, an error in a sibling)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from c2cq.client import Stream
from c2cq.schemas.client import RequestFinished, TokensEmitted


class Batch:
    """The streams of one HTTP request, one per prompt (chat: always one)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.streams: list[Stream] = []

    async def submit(self, model: str, prompts: list[str | list[int]], rid: str, label: str,
                     kw: dict[str, Any]) -> "Batch":
        try:
            for i, p in enumerate(prompts):
                rid_i = rid if len(prompts) == 1 else f"{rid}-{i}"
                if isinstance(p, str):
                    s = await self.client.submit(model, p, request_id=rid_i, client_request_id=label, **kw)
                else:
                    s = await self.client.submit(model, prompt_token_ids=p, request_id=rid_i,
                                                 client_request_id=label, **kw)
                self.streams.append(s)
        except BaseException:
            await self.cancel()
            raise
        return self

    async def cancel(self) -> None:
        """Cancel every stream that has not finished (a no-op for those that have)."""
        for s in self.streams:
            if not s.done:
                try:
                    await self.client.cancel(s.request_id)
                except Exception:  # noqa: BLE001 - the scheduler is gone: nothing runs for us there either
                    pass

    def prompt_tokens(self) -> int:
        return sum(s.finished.usage.prompt_tokens for s in self.streams if s.finished is not None)

    def completion_tokens(self) -> int:
        return sum(s.finished.usage.completion_tokens for s in self.streams if s.finished is not None)

    async def events(self) -> AsyncIterator[tuple[int, TokensEmitted | RequestFinished]]:
        """(prompt index, tokens or the end) in arrival order; a failed request raises its error."""
        if len(self.streams) == 1:
            s = self.streams[0]
            async for t in s:
                more = s.ready()  # a backlog (the HTTP client reads slowly, the loop is busy): one chunk
                yield 0, (merge(t, more) if more else t)
            yield 0, s.finished
            return
        q: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, s: Stream) -> None:
            try:
                async for t in s:
                    q.put_nowait((i, t))
                q.put_nowait((i, s.finished))
            except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it
                q.put_nowait((i, e))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        try:
            left = len(tasks)
            while left:
                i, item = await q.get()
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, RequestFinished):
                    left -= 1
                yield i, item
        finally:
            for t in tasks:
                t.cancel()

    async def collect(self) -> list[tuple[str, RequestFinished]]:
        """Every stream's whole text and its end (non-streaming responses)."""
        texts: list[list[str]] = [[] for _ in self.streams]
        async for i, item in self.events():
            if isinstance(item, TokensEmitted):
                texts[i].append(item.text)
        return [("".join(t), s.finished) for t, s in zip(texts, self.streams)]


def merge(first: TokensEmitted, more: list[TokensEmitted]) -> TokensEmitted:
    """Consecutive token batches of one request as one."""
    ids, text = list(first.token_ids), [first.text]
    for t in more:
        ids.extend(t.token_ids)
        text.append(t.text)
    return TokensEmitted(request_id=first.request_id, seq=first.seq, token_ids=tuple(ids), text="".join(text))


async def wait_disconnect(receive) -> None:
    """Return when the HTTP client goes away (the body has been read already)."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
