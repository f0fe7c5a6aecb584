"""A node's catalog and the control plane (``c2cq run catalog --join tcp://…``).

The cluster's registry is the control plane's catalog. A node's catalog dials the scheduler's
catalogs socket and says which models its host has published (HostModels: at start, on every
change, every REPORT_S); the scheduler answers with the registry's files (ModelFiles), and the node
publishes each into its host's shared memory from the model store every node mounts — through the
same checked registration as a local `models add` (only files under its own folders) — and
unpublishes what the registry no longer lists. The node's own registry is a replica, rebuilt from
the control plane's whenever it differs.
"""

from __future__ import annotations

import asyncio

import msgspec
import zmq.asyncio

from c2cq import log
from c2cq.codec import Codec, encode
from c2cq.errors import WireError
from c2cq.schemas.catalog import CatalogError, HostModels, ModelFiles, RegisterModel, RemoveModel, SchedulerToNodeCatalog
from c2cq.services.catalog.publish import Publisher

REPORT_S = 1.0


def plan(local: dict, files: ModelFiles, in_store) -> tuple[list[RegisterModel], list[str]]:
    """(registrations to make, names to remove) so the local registry matches ``files`` (pure).
    A local entry that differs from the registry's (another file) is removed, then registered again."""
    want = {f.info.name: msgspec.structs.replace(f, path=in_store(f.path) if f.path else None) for f in files.files}
    removes = [n for n, e in local.items() if n not in want or (e.path, e.info) != (want[n].path, want[n].info)]
    adds = [f for n, f in want.items() if n not in local or n in removes]
    return adds, removes


class Uplink:
    def __init__(self, publisher: Publisher, sock: zmq.asyncio.Socket, host: str, register) -> None:
        self.publisher, self.sock, self.host = publisher, sock, host
        self.register = register  # async (RegisterModel) -> reply: the catalog's checked registration
        self.publishing: dict[str, None] = {}
        self.codec: Codec = Codec(SchedulerToNodeCatalog)
        self.log = log.get()
        self._files: ModelFiles | None = None
        self._changed = asyncio.Event()

    def report(self) -> None:
        msg = HostModels(host=self.host, published=tuple(sorted(self.publisher.published)),
                         publishing=tuple(self.publishing))
        self.sock.send(encode(msg))  # DEALER: queued while the control plane is away

    async def reporter(self) -> None:
        while True:
            self.report()
            try:
                await asyncio.wait_for(self._changed.wait(), REPORT_S)
            except TimeoutError:
                pass
            self._changed.clear()

    async def receiver(self) -> None:
        while True:
            try:
                files = self.codec.decode(await self.sock.recv())
            except WireError as e:
                self.log.warning("malformed_frames", socket="control", error=str(e)[:200])
                continue
            if files != self._files:
                await self.sync(files)

    async def sync(self, files: ModelFiles) -> None:
        adds, removes = plan(self.publisher.store.reg.models, files, self.publisher.in_store)
        for name in removes:
            self.publisher.handle(RemoveModel(name=name))
            self.log.info("unpublished", model=name, reason="not in the control plane's registry")
        self.publishing = {f.info.name: None for f in adds}
        self._changed.set()
        ok = True
        for f in adds:
            reply = await self.register(f)
            self.publishing.pop(f.info.name, None)
            if isinstance(reply, CatalogError):
                ok = False
                self.log.error("publish_failed", model=f.info.name, error=reply.message)
            self._changed.set()
        self._files = files if ok else None  # a failure is tried again at the next answer
