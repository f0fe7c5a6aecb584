"""The scheduler process: the thin shell around core.handle (sockets, clocks, the catalog)."""

from __future__ import annotations

import argparse
import asyncio
import time

import zmq
import zmq.asyncio

from c2cq import lifecycle, log
from c2cq.codec import Codec, encode
from c2cq.errors import WireError
from c2cq.rundir import RunDir
from c2cq.schemas.catalog import CatalogError, FromCatalog, ListModels, ModelInfo, ModelListReply
from c2cq.schemas.client import ClientToScheduler, RequestRejected, SubmitRequest
from c2cq.schemas.enums import ErrorCode
from c2cq.schemas.executor import ExecutorToScheduler
from c2cq.services.scheduler import core
from c2cq.services.scheduler.state import State, ToClient, ToExecutor
from c2cq.services.scheduler.validate import Limits
from c2cq.transport import make_socket, recv_batch, send_nowait

TICK_S = 0.25
CATALOG_REFRESH_S = 2.0


class Shell:
    def __init__(self, rd: RunDir, state: State) -> None:
        self.rd, self.state = rd, state
        self.log = log.get()
        self.ctx = zmq.asyncio.Context()
        self.clients = make_socket(self.ctx, zmq.ROUTER, bind=rd.client_addr, hwm=200_000)
        self.executors = make_socket(self.ctx, zmq.ROUTER, bind=rd.executor_addr, hwm=200_000)
        self.catalog = make_socket(self.ctx, zmq.DEALER, connect=rd.catalog_addr)
        self.client_codec: Codec = Codec(ClientToScheduler)
        self.exec_codec: Codec = Codec(ExecutorToScheduler)
        self.catalog_codec: Codec = Codec(FromCatalog)
        self.models: dict[str, ModelInfo] = {}
        self._last_refresh = 0.0
        self._catalog_lock = asyncio.Lock()

    # -- output ---------------------------------------------------------------------------------
    def emit(self, outs: list) -> None:
        failed: list[str] = []
        for o in outs:
            if isinstance(o, ToClient):
                if not send_nowait(self.clients, [o.client, encode(o.msg)]):
                    self.log.warning("client_send_failed", msg=type(o.msg).__name__)
            elif isinstance(o, ToExecutor):
                if not send_nowait(self.executors, [o.executor_id.encode(), encode(o.msg)]):
                    failed.append(o.executor_id)
        for eid in dict.fromkeys(failed):
            self.log.warning("executor_unreachable", executor=eid)
            self.emit(core.handle(self.state, core.SendFailed(eid), time.monotonic()))

    # -- the catalog ----------------------------------------------------------------------------
    async def refresh_models(self, force: bool = False) -> None:
        async with self._catalog_lock:
            if not force and time.monotonic() - self._last_refresh < 0.2:
                return
            self._last_refresh = time.monotonic()
            await self.catalog.send(encode(ListModels()))
            try:
                while True:  # skip stale replies of an earlier timed-out query
                    frame = await asyncio.wait_for(self.catalog.recv(), timeout=2.0)
                    reply = self.catalog_codec.decode(frame)
                    if isinstance(reply, (ModelListReply, CatalogError)):
                        break
            except (TimeoutError, WireError) as e:
                self.log.warning("catalog_unavailable", error=str(e) or type(e).__name__)
                return
            if isinstance(reply, ModelListReply):
                self.models = {m.name: m for m in reply.models}

    async def resolve(self, name: str) -> ModelInfo | None:
        if name not in self.models:
            await self.refresh_models()
        return self.models.get(name)

    # -- loops ----------------------------------------------------------------------------------
    async def client_loop(self) -> None:
        while True:
            for frames in await recv_batch(self.clients):
                if len(frames) != 2:
                    continue  # a raw peer sending odd multipart shapes: nothing to answer to
                ident, frame = frames
                try:
                    msg = self.client_codec.decode(frame)
                except WireError as e:
                    self.log.warning("malformed_frame", socket="client", error=str(e)[:200])
                    send_nowait(self.clients, [ident, encode(RequestRejected(
                        request_id=None, code=ErrorCode.MALFORMED, message=f"malformed frame: {str(e)[:200]}"))])
                    continue
                info = await self.resolve(msg.model) if isinstance(msg, SubmitRequest) else None
                self.emit(core.handle(self.state, core.FromClient(ident, msg, info), time.monotonic()))

    async def executor_loop(self) -> None:
        while True:
            for frames in await recv_batch(self.executors):
                if len(frames) != 2:
                    continue
                ident, frame = frames
                try:
                    msg = self.exec_codec.decode(frame)
                    eid = ident.decode()
                except (WireError, UnicodeDecodeError) as e:
                    self.log.warning("malformed_frame", socket="executor", error=str(e)[:200])
                    continue
                self.emit(core.handle(self.state, core.FromExecutor(eid, msg), time.monotonic()))

    async def tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.emit(core.handle(self.state, core.Tick(), time.monotonic()))
            if time.monotonic() - self._last_refresh > CATALOG_REFRESH_S:
                await self.refresh_models(force=True)

    def close(self) -> None:
        for s in (self.clients, self.executors, self.catalog):
            s.close(linger=0)
        self.ctx.term()


async def amain(args: argparse.Namespace) -> None:
    log.configure("scheduler")
    rd = RunDir.from_env(args.home)
    state = State(limits=Limits(max_tokens=args.max_tokens_limit), heartbeat_timeout_s=args.heartbeat_timeout)
    shell = Shell(rd, state)
    stop = lifecycle.shutdown_flag()
    await shell.refresh_models(force=True)
    tasks = [asyncio.create_task(c) for c in (shell.client_loop(), shell.executor_loop(), shell.tick_loop())]
    lifecycle.signal_ready()
    shell.log.info("ready", client=rd.client_addr, executors=rd.executor_addr)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    for t in done:
        if t is not stopper and t.exception():
            raise t.exception()
    shell.close()
    shell.log.info("stopped")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="c2cq-scheduler")
    p.add_argument("--home", default=None)
    p.add_argument("--max-tokens-limit", type=int, default=4096)
    p.add_argument("--heartbeat-timeout", type=float, default=3.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    lifecycle.run(lambda: amain(args))


if __name__ == "__main__":
    main()
