"""The blocking client: an AsyncClient on a private event loop in a daemon thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from c2cq.client import AsyncClient, Stream
from c2cq.schemas.client import MetricsReply, ModelsReply, StatusReply


@dataclass
class _Loop:
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread


class Client:
    """A blocking wrapper: the AsyncClient runs on a private event loop in a daemon thread."""

    def __init__(self, address: str | None = None, **kw) -> None:
        loop = asyncio.new_event_loop()
        t = threading.Thread(target=loop.run_forever, name="c2cq-client", daemon=True)
        t.start()
        self._l = _Loop(loop, t)
        self._async = AsyncClient(address, **kw)
        try:
            self._call(self._async.connect())
        except BaseException:  # e.g. an AuthError: the private loop goes too
            self._l.loop.call_soon_threadsafe(self._l.loop.stop)
            t.join(timeout=5)
            raise

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._l.loop).result()

    def generate(self, model: str, prompt: str | None = None, **kw) -> str:
        return self._call(self._async.generate(model, prompt, **kw))

    def stream(self, model: str, prompt: str | None = None, **kw) -> Iterator[str]:
        s = self._call(self._async.submit(model, prompt, **kw))
        while True:
            try:
                yield self._call(s.__anext__()).text
            except StopAsyncIteration:
                return

    def submit(self, model: str, prompt: str | None = None, **kw) -> Stream:
        return self._call(self._async.submit(model, prompt, **kw))

    def cancel(self, request_id: str) -> None:
        self._call(self._async.cancel(request_id))

    def status(self) -> StatusReply:
        return self._call(self._async.status())

    def close(self) -> None:
        self._call(self._async.close())
        self._l.loop.call_soon_threadsafe(self._l.loop.stop)
        self._l.thread.join(timeout=5)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def metrics(self) -> MetricsReply:
        return self._call(self._async.metrics())

    def models(self) -> ModelsReply:
        return self._call(self._async.models())
