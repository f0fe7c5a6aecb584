"""The scheduler's view of the catalog: the models it can serve (asked of the catalog process, kept
while it does not answer) and, with node catalogs, the registry's files they replicate."""

from __future__ import annotations

import asyncio
import time

import zmq
import zmq.asyncio

from c2cq.codec import Codec, encode
from c2cq.errors import WireError
from c2cq.schemas.catalog import CatalogError, FromCatalog, ListFiles, ListModels, ModelFiles, ModelInfo, ModelListReply
from c2cq.schemas.client import ModelEntry, ModelsReply
from c2cq.transport import make_socket

ASK_TIMEOUT_S = 2.0
FRESH_S = 0.2  # a refresh this recent is not repeated (a burst of submits for unknown names asks once)
RETRY_S = 1.0  # after a failed refresh, the last answer stands this long: a dead catalog does not stall
#                every client frame for its timeout


class CatalogView:
    def __init__(self, ctx: zmq.asyncio.Context, address: str, logger, with_files: bool) -> None:
        self.sock = make_socket(ctx, zmq.DEALER, connect=address)
        self.log, self.with_files = logger, with_files
        self.codec: Codec = Codec(FromCatalog)
        self.models: dict[str, ModelInfo] = {}
        self.files = ModelFiles(files=())
        self.error: str | None = None  # why the last refresh failed
        self.last_refresh = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self, force: bool = False) -> str | None:
        """Ask the catalog for its models (and the registry's files) unless it was moments ago; returns
        why it could not (the models last heard stay), else None."""
        async with self._lock:
            if not force and time.monotonic() - self.last_refresh < (RETRY_S if self.error else FRESH_S):
                return self.error
            try:
                reply = await self._ask(ListModels(), ModelListReply)
                files = await self._ask(ListFiles(), ModelFiles) if self.with_files else None
            except (TimeoutError, WireError) as e:
                self.log.warning("catalog_unavailable", error=str(e) or type(e).__name__)
                self.error = f"the catalog did not answer: {str(e) or type(e).__name__}"
                return self.error
            finally:
                self.last_refresh = time.monotonic()
            if isinstance(reply, ModelListReply):
                self.models = {m.name: m for m in reply.models}
            if isinstance(files, ModelFiles):
                self.files = files
            self.error = reply.message if isinstance(reply, CatalogError) else None
            return self.error

    async def _ask(self, msg, kind: type):
        await self.sock.send(encode(msg))
        while True:  # skip stale replies of an earlier timed-out query
            reply = self.codec.decode(await asyncio.wait_for(self.sock.recv(), timeout=ASK_TIMEOUT_S))
            if isinstance(reply, (kind, CatalogError)):
                return reply

    async def resolve(self, name: str) -> ModelInfo | None:
        if name not in self.models:
            await self.refresh()
        return self.models.get(name)

    async def reply(self, nonce: int) -> ModelsReply:
        """The catalog's models as of now; what was last heard, with the error, when it does not answer."""
        error = await self.refresh()
        rows = tuple(ModelEntry(name=m.name, kind=str(m.kind), architecture=m.architecture, parameters=m.parameters,
                                dtype=m.dtype, vocab_size=m.vocab_size, max_context=m.max_context)
                     for m in sorted(self.models.values(), key=lambda m: m.name))
        return ModelsReply(nonce=nonce, models=rows, error=error)

    def close(self) -> None:
        self.sock.close(linger=0)
