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
