"""The client library when the scheduler stops taking messages: typed errors, nothing left behind."""

from __future__ import annotations

import pytest

import c2cq.client
from c2cq.client import AsyncClient
from c2cq.errors import PeerDeadError


async def test_a_refused_submit_raises_peer_dead_and_keeps_no_stream(tmp_path, monkeypatch):
    # the socket queues while the scheduler is away (it may be restarting); once its queue is full a
    # send is refused (EAGAIN), which send_nowait reports as False
    monkeypatch.setattr(c2cq.client, "send_nowait", lambda sock, frames: False)
    async with AsyncClient(f"ipc://{tmp_path}/nobody.ipc", timeout=5) as c:
        with pytest.raises(PeerDeadError, match="not taking messages"):
            await c.submit("m", "hello", max_tokens=4)
        assert c._streams == {} and c._unanswered == {}


async def test_cancel_orphans_cancels_a_request_it_does_not_know_once(tmp_path):
    import asyncio

    import zmq
    import zmq.asyncio

    from c2cq.codec import Codec, encode
    from c2cq.schemas.client import CancelRequest, ClientToScheduler, StatusQuery, StatusReply, TokensEmitted

    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{tmp_path}/sched.ipc")
    codec = Codec(ClientToScheduler)
    try:
        async with AsyncClient(f"ipc://{tmp_path}/sched.ipc", identity=b"gw-1", cancel_orphans=True) as c:
            status = asyncio.create_task(c.status(timeout=5))
            ident, frame = await asyncio.wait_for(router.recv_multipart(), 5)
            query = codec.decode(frame)
            assert ident == b"gw-1" and isinstance(query, StatusQuery)
            for seq in range(3):  # a previous incarnation's request keeps streaming to this identity
                orphan = TokensEmitted(request_id="old-1", seq=seq, token_ids=(1,), text="x")
                await router.send_multipart([ident, encode(orphan)])
            await router.send_multipart([ident, encode(StatusReply(nonce=query.nonce, executors=(),
                                                                   requests_in_flight=1, requests_total=1))])
            await status
            got = codec.decode((await asyncio.wait_for(router.recv_multipart(), 5))[1])
            assert got == CancelRequest(request_id="old-1")
            while await router.poll(300):  # once, not at every token (a ping may come meanwhile)
                assert not isinstance(codec.decode((await router.recv_multipart())[1]), CancelRequest)
    finally:
        router.close(linger=0)
        ctx.term()


async def test_ready_takes_what_has_arrived_and_keeps_the_end_for_next():
    from c2cq.client import Stream
    from c2cq.schemas.client import RequestAccepted, RequestFinished, Timings, TokensEmitted, Usage

    s = Stream(client=None, request_id="r", timeout=5)
    tok = [TokensEmitted(request_id="r", seq=i, token_ids=(i,), text=str(i)) for i in range(3)]
    end = RequestFinished(request_id="r", finish_reason="length", usage=Usage(prompt_tokens=1, completion_tokens=3),
                          timings=Timings(queued_ms=0, ttft_ms=0, e2e_ms=0))
    for item in (RequestAccepted(request_id="r", model="m"), tok[0], tok[1], tok[1], tok[2], end):
        s.queue.put_nowait(item)
    assert await s.__anext__() == tok[0]
    assert s.ready() == [tok[1], tok[2]]  # the duplicate dropped, the end held
    assert s.finished is None and not s.done and s.received == 3
    with pytest.raises(StopAsyncIteration):
        await s.__anext__()
    assert s.finished == end and s.done and s.ready() == []
