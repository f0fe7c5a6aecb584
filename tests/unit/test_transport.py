"""transport.send_nowait reports a gone peer or a full queue as False, on asyncio sockets as on plain ones.

zmq.asyncio sockets do not raise from a NOBLOCK send: they return a Future holding the error.
A send_nowait that only caught exceptions said True for every send, so the scheduler never saw an
unreachable executor or client, and every such send logged "Future exception was never retrieved".
"""

from __future__ import annotations

import asyncio
import gc

import pytest
import zmq
import zmq.asyncio

from c2cq.transport import make_socket, recv_batch, send_nowait


@pytest.fixture
def addr(tmp_path):
    return f"ipc://{tmp_path}/t.ipc"


def unretrieved(loop_errors: list[dict]) -> list[dict]:
    return [c for c in loop_errors if "never retrieved" in str(c.get("message", ""))]


async def _router_to_a_gone_peer(addr: str) -> tuple[bool, bool, list[dict]]:
    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    ctx = zmq.asyncio.Context()
    router = make_socket(ctx, zmq.ROUTER, bind=addr)
    peer = make_socket(ctx, zmq.DEALER, connect=addr, identity=b"peer")
    try:
        await peer.send(b"hello")
        (ident, body), = await recv_batch(router)
        assert (ident, body) == (b"peer", b"hello")
        reachable = send_nowait(router, [b"peer", b"back"])
        assert await peer.recv() == b"back"
        gone = send_nowait(router, [b"nobody", b"x"])  # ROUTER_MANDATORY: EHOSTUNREACH
        gc.collect()
        await asyncio.sleep(0)
        return reachable, gone, errors
    finally:
        router.close(linger=0)
        peer.close(linger=0)
        ctx.term()


def test_an_asyncio_router_send_to_an_unknown_peer_is_false_and_logs_nothing(addr):
    reachable, gone, errors = asyncio.run(_router_to_a_gone_peer(addr))
    assert reachable is True
    assert gone is False
    assert unretrieved(errors) == []


async def _full_queue(addr: str) -> tuple[list[bool], list[dict]]:
    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    ctx = zmq.asyncio.Context()
    sock = make_socket(ctx, zmq.DEALER, connect=addr, hwm=3)  # nobody listens: the pipe fills at the HWM
    try:
        results = [send_nowait(sock, [b"m%d" % i]) for i in range(10)]
        gc.collect()
        await asyncio.sleep(0)
        return results, errors
    finally:
        sock.close(linger=0)
        ctx.term()


def test_a_full_queue_is_false(addr):
    results, errors = asyncio.run(_full_queue(addr))
    assert results[0] is True
    assert results[-1] is False  # backpressure is visible, not absorbed
    assert unretrieved(errors) == []


def test_a_plain_socket_too(addr):
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(addr)
    try:
        assert send_nowait(router, [b"nobody", b"x"]) is False
    finally:
        router.close()
        ctx.term()
