"""The catalog process: answers Describe/List/Register/Remove over a ROUTER socket."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket

import zmq
import zmq.asyncio

from c2cq import curve, lifecycle, links, log
from c2cq.codec import Codec, encode
from c2cq.errors import WireError
from c2cq.rundir import RunDir
from c2cq.schemas.catalog import CatalogError, ToCatalog
from c2cq.schemas.enums import ErrorCode
from c2cq.services.catalog.publish import Publisher
from c2cq.services.catalog.store import CatalogStore
from c2cq.services.catalog.uplink import Uplink
from c2cq.transport import Throttled, make_socket, recv_batch, send_nowait


async def amain(args: argparse.Namespace) -> None:
    logger = log.configure("catalog")
    rd = RunDir.from_env(args.home)
    store = CatalogStore(rd.catalog_dir)
    publisher = Publisher(store, rd.shm_dir, rd.model_roots, publish=not args.no_publish)
    publisher.publish_all()
    ctx = zmq.asyncio.Context()
    sock = make_socket(ctx, zmq.ROUTER, bind=rd.catalog_addr)
    up = None
    if args.join:
        up = make_socket(ctx, zmq.DEALER, connect=args.join, identity=f"catalog-{args.host}".encode(),
                         curve=links.client(rd, args, args.join), insecure=args.insecure)
        await curve.handshake(up, args.join, args.handshake_timeout)  # a refused key: a clear error, now
    codec: Codec = Codec(ToCatalog)
    stop = lifecycle.shutdown_flag()
    lifecycle.signal_ready()
    logger.info("ready", models=len(store.reg.models), addr=rd.catalog_addr)

    malformed = Throttled(logger, "malformed_frames")  # a flood of bad frames: one line a second
    registering = asyncio.Lock()  # one file registration at a time; everything else is answered meanwhile
    pending: set[asyncio.Task] = set()

    def answer(msg):
        try:
            return publisher.handle(msg)
        except Exception as e:  # a bad model file must not take the catalog down
            logger.exception("catalog_error", msg=type(msg).__name__)
            return CatalogError(code=ErrorCode.BAD_MODEL, message=f"{type(e).__name__}: {e}")

    async def registration(msg):
        """Check and publish the file on a thread (it may copy gigabytes), register it on the loop."""
        async with registering:
            try:
                return publisher.commit(msg, await asyncio.to_thread(publisher.prepare, msg))
            except Exception as e:
                logger.exception("catalog_error", msg=type(msg).__name__)
                return CatalogError(code=ErrorCode.BAD_MODEL, message=f"{type(e).__name__}: {e}")

    async def register(ident: bytes, msg) -> None:
        send_nowait(sock, [ident, encode(await registration(msg))])

    async def serve() -> None:
        while True:
            for frames in await recv_batch(sock):
                if len(frames) != 2:
                    continue
                ident, frame = frames
                try:
                    msg = codec.decode(frame)
                except WireError as e:
                    malformed(str(e)[:200])
                    send_nowait(sock, [ident, encode(CatalogError(code=ErrorCode.MALFORMED, message=str(e)[:200]))])
                    continue
                if publisher.is_file_registration(msg):
                    job = asyncio.create_task(register(ident, msg))
                    pending.add(job)
                    job.add_done_callback(pending.discard)
                    continue
                send_nowait(sock, [ident, encode(answer(msg))])

    tasks = [asyncio.create_task(serve())]
    if up is not None:
        link = Uplink(publisher, up, args.host, registration)
        tasks += [asyncio.create_task(link.reporter()), asyncio.create_task(link.receiver())]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    if pending:  # a registration's copy cannot be interrupted: let it finish and answer
        await asyncio.wait(pending)
    for s in (sock, up):
        if s is not None:
            s.close(linger=0)
    ctx.term()
    publisher.unpublish_all()
    store.close()
    for task in done:
        if task is not stopper and task.exception():
            raise task.exception()
    logger.info("stopped")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="c2cq-catalog")
    p.add_argument("--home", default=None)
    p.add_argument("--join", default=os.environ.get("C2CQ_JOIN_CATALOGS"), metavar="tcp://HOST:PORT",
                   help="a node's catalog: publish the control plane's registry, reporting to its scheduler")
    p.add_argument("--host", default=os.environ.get("C2CQ_NODE_NAME") or socket.gethostname(),
                   help="this host's name, as its executors announce it (default $C2CQ_NODE_NAME or the hostname)")
    p.add_argument("--no-publish", action="store_true",
                   help="a registry only (the control plane's): check and register files, publish none")
    p.add_argument("--handshake-timeout", type=float, default=10.0)
    links.add_args(p, links.CLIENT_ROLE)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    lifecycle.run(lambda: amain(args))


if __name__ == "__main__":
    main()
