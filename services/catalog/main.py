"""The catalog process: answers Describe/List/Register/Remove over a ROUTER socket."""

from __future__ import annotations

import argparse
import asyncio

import zmq
import zmq.asyncio

from c2cq import lifecycle, log
from c2cq.codec import Codec, encode
from c2cq.errors import WireError
from c2cq.rundir import RunDir
from c2cq.schemas.catalog import CatalogError, ToCatalog
from c2cq.schemas.enums import ErrorCode
from c2cq.services.catalog.publish import Publisher
from c2cq.services.catalog.store import CatalogStore
from c2cq.transport import Throttled, make_socket, recv_batch, send_nowait


async def amain(args: argparse.Namespace) -> None:
    logger = log.configure("catalog")
    rd = RunDir.from_env(args.home)
    store = CatalogStore(rd.catalog_dir)
    publisher = Publisher(store, rd.shm_dir, rd.model_roots)
    publisher.publish_all()
    ctx = zmq.asyncio.Context()
    sock = make_socket(ctx, zmq.ROUTER, bind=rd.catalog_addr)
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

    async def register(ident: bytes, msg) -> None:
        """Check and publish the file on a thread (it may copy gigabytes), register it on the loop."""
        async with registering:
            try:
                reply = publisher.commit(msg, await asyncio.to_thread(publisher.prepare, msg))
            except Exception as e:
                logger.exception("catalog_error", msg=type(msg).__name__)
                reply = CatalogError(code=ErrorCode.BAD_MODEL, message=f"{type(e).__name__}: {e}")
        send_nowait(sock, [ident, encode(reply)])

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

    task = asyncio.create_task(serve())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    if pending:  # a registration's copy cannot be interrupted: let it finish and answer
        await asyncio.wait(pending)
    sock.close(linger=0)
    ctx.term()
    publisher.unpublish_all()
    store.close()
    if task in done and task.exception():
        raise task.exception()
    logger.info("stopped")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="c2cq-catalog")
    p.add_argument("--home", default=None)
    args = p.parse_args(argv)
    lifecycle.run(lambda: amain(args))


if __name__ == "__main__":
    main()
