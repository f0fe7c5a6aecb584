"""The client library: ``AsyncClient`` (asyncio); the blocking ``Client`` is in c2cq.blocking.

One DEALER socket carries any number of concurrent requests; a reader task routes replies to
each request's stream. Errors arrive as typed exceptions, never as silence: a rejection is a
RequestError, a scheduler that stops answering is a PeerDeadError, a request that hears nothing
for ``timeout`` seconds is a RequestTimeout.

A tcp address (a control plane on another host: ``$C2CQ_CLIENT_ADDR``, ``c2cq --connect``) is
dialled with CURVE — the ``client`` keypair from the keys folder and the control plane's public
key (c2cq.links.remote_client), or ``curve=`` — and ``connect`` waits for the handshake: a wrong
server key, an unlisted client key or no server there is an AuthError within ``handshake_timeout``,
not a silent hang. ``insecure=True`` dials tcp in clear (a server with CURVE refuses it).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator

import zmq
import zmq.asyncio

from c2cq import curve as curve_keys
from c2cq import links
from c2cq.codec import Codec, encode
from c2cq.errors import PeerDeadError, RequestError, RequestTimeout, WireError
from c2cq.rundir import RunDir
from c2cq.schemas.client import (
    SLO,
    CancelRequest,
    MetricsQuery,
    MetricsReply,
    ModelsQuery,
    ModelsReply,
    Ping,
    Pong,
    RequestAccepted,
    RequestFinished,
    RequestRejected,
    SamplingParams,
    SchedulerToClient,
    StatusQuery,
    StatusReply,
    SubmitRequest,
    TokensEmitted,
)
from c2cq.schemas.enums import FinishReason
from c2cq.transport import make_socket, recv_batch, send_nowait

_END = object()


class Stream:
    """One request's replies, in order. Iterate for TokensEmitted; ``finished`` holds the end."""

    def __init__(self, client: "AsyncClient", request_id: str, timeout: float | None) -> None:
        self.client, self.request_id, self.timeout = client, request_id, timeout
        self.queue: asyncio.Queue = asyncio.Queue()
        self.accepted: RequestAccepted | None = None
        self.finished: RequestFinished | None = None
        self.received = 0  # tokens received so far
        self.first_token_at: float | None = None
        self.token_times: list[float] = []  # monotonic arrival time of each token batch
        self._done = False
        self._held = None  # an end that ``ready`` took off the queue, for the next __anext__

    def __aiter__(self) -> "Stream":
        return self

    @property
    def done(self) -> bool:
        """True once the stream has ended (finished, failed or timed out)."""
        return self._done

    async def __anext__(self) -> TokensEmitted:
        while True:
            if self._done:
                raise StopAsyncIteration
            if self._held is not None:
                item, self._held = self._held, None
            else:
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                    # arrives as an item does, and a cancelled reader must stop
                    async with asyncio.timeout(self.timeout):
                        item = await self.queue.get()
                except TimeoutError:
                    self._done = True
                    self.client._streams.pop(self.request_id, None)
                    raise RequestTimeout(f"request {self.request_id}: nothing heard for {self.timeout} s") from None
            out = self._take(item)
            if out is not None:
                return out

    def ready(self) -> list[TokensEmitted]:
        """The token batches that have already arrived, taken without waiting (a consumer that fell
        behind catches up in one step); the end, or an error, stays for the next ``__anext__``."""
        out: list[TokensEmitted] = []
        while not self._done and self._held is None and not self.queue.empty():
            item = self.queue.get_nowait()
            if isinstance(item, (TokensEmitted, RequestAccepted)):
                t = self._take(item)
                if t is not None:
                    out.append(t)
            else:
                self._held = item
        return out

    def _take(self, item) -> TokensEmitted | None:
        """One reply: the tokens it carries, None for one that carries none; the end raises."""
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if isinstance(item, RequestAccepted):
            self.accepted = item
            return None
        if isinstance(item, RequestFinished):
            self._done = True
            self.finished = item
            if item.finish_reason == FinishReason.ERROR:
                raise RequestError(item.error_code or "internal", item.message or "failed", self.request_id)
            raise StopAsyncIteration
        if isinstance(item, TokensEmitted):
            if item.seq + len(item.token_ids) <= self.received:
                return None  # a duplicate
            if item.seq != self.received:
                self._done = True
                raise RequestError("internal", f"token gap: expected {self.received}, got {item.seq}", self.request_id)
            now = time.monotonic()
            self.received += len(item.token_ids)
            self.first_token_at = self.first_token_at or now
            self.token_times.extend([now] * len(item.token_ids))
            return item
        return None

    async def text(self) -> str:
        return "".join([t.text async for t in self])

    async def cancel(self) -> None:
        await self.client.cancel(self.request_id)


class AsyncClient:
    def __init__(self, address: str | None = None, *, home: str | None = None, timeout: float | None = 300.0,
                 ping_interval: float = 1.0, dead_after: float = 10.0, identity: bytes | None = None,
                 cancel_orphans: bool = False, curve: curve_keys.CurveClient | None = None, insecure: bool = False,
                 handshake_timeout: float = 10.0) -> None:
        rd = RunDir.from_env(home)
        self.address = address or rd.client_addr
        self._home, self.curve, self.insecure, self.handshake_timeout = rd.home, curve, insecure, handshake_timeout
        self.timeout, self.ping_interval, self.dead_after = timeout, ping_interval, dead_after
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._streams: dict[str, Stream] = {}
        self._status: dict[int, asyncio.Future] = {}
        self._nonce = itertools.count(1)
        self._codec: Codec = Codec(SchedulerToClient)
        self._tasks: list[asyncio.Task] = []
        self._last_heard = time.monotonic()
        self._dead: PeerDeadError | None = None
        # a stable routing id: a restarted scheduler routes to it from its log after we reconnect. A
        # long-lived service (the gateway) passes its own, the same across its restarts, with
        # cancel_orphans: replies for requests this process does not know (a previous incarnation's,
        # cut off by a crash) cancel them, so nothing keeps running for nobody
        self.identity = identity or f"c2cq-client-{uuid.uuid4().hex}".encode()
        self.cancel_orphans = cancel_orphans
        self._orphans: dict[str, None] = {}  # request ids cancelled as orphans (bounded, oldest dropped)
        self._unanswered: dict[str, tuple[SubmitRequest, float]] = {}  # submits with no reply yet

    async def connect(self) -> "AsyncClient":
        if self._sock is None:
            keys = self.curve
            if keys is None and not self.insecure:
                keys = links.remote_client(self._home, self.address)
            ctx = zmq.asyncio.Context()
            try:
                sock = make_socket(ctx, zmq.DEALER, connect=self.address, hwm=100_000, identity=self.identity,
                                   curve=keys, insecure=self.insecure)
            except BaseException:
                ctx.term()
                raise
            if links.is_tcp(self.address):
                try:
                    await curve_keys.handshake(sock, self.address, self.handshake_timeout)
                except BaseException:
                    sock.close(linger=0)
                    ctx.term()
                    raise
            self._ctx, self._sock = ctx, sock
            self._last_heard = time.monotonic()
            self._tasks = [asyncio.create_task(self._reader()), asyncio.create_task(self._watchdog())]
        return self

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._sock is not None:
            self._sock.close(linger=0)
            self._ctx.term()
            self._sock = self._ctx = None

    # -- background -----------------------------------------------------------------------------
    async def _reader(self) -> None:
        while True:
            for frames in await recv_batch(self._sock):
                self._last_heard = time.monotonic()
                try:
                    msg = self._codec.decode(frames[-1])
                except WireError:
                    continue
                if isinstance(msg, (Pong,)):
                    continue
                if isinstance(msg, (StatusReply, MetricsReply, ModelsReply)):
                    fut = self._status.pop(msg.nonce, None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                    continue
                rid = getattr(msg, "request_id", None)
                self._unanswered.pop(rid, None)
                stream = self._streams.get(rid) if rid is not None else None
                if stream is None:
                    if self.cancel_orphans and isinstance(msg, (TokensEmitted, RequestAccepted)):
                        self._cancel_orphan(rid)
                    continue
                if isinstance(msg, RequestRejected):
                    self._streams.pop(rid, None)
                    stream.queue.put_nowait(RequestError(msg.code, msg.message, rid))
                elif isinstance(msg, RequestFinished):
                    self._streams.pop(rid, None)
                    stream.queue.put_nowait(msg)
                else:
                    stream.queue.put_nowait(msg)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            if not self._streams and not self._status:
                self._last_heard = time.monotonic()
                continue
            silent = time.monotonic() - self._last_heard
            if silent > self.dead_after:
                self._fail_all(PeerDeadError(f"the scheduler at {self.address} has not answered for {silent:.1f} s"))
            try:
                if silent > self.ping_interval:
                    self._send(Ping(nonce=next(self._nonce)))
                self._resubmit()
            except PeerDeadError:
                pass  # queue full: the silence check above ends the streams if it lasts

    def _resubmit(self) -> None:
        """Send again a submit nothing was heard about (lost in a scheduler restart); the scheduler
        treats a repeated submit of the same id from the same client as the same request."""
        now = time.monotonic()
        for rid, (msg, sent) in list(self._unanswered.items()):
            if rid not in self._streams:
                del self._unanswered[rid]
            elif now - sent > 2 * self.ping_interval:
                self._unanswered[rid] = (msg, now)
                self._send(msg)

    def _cancel_orphan(self, rid: str) -> None:
        if rid in self._orphans:
            return
        self._orphans[rid] = None
        if len(self._orphans) > 10_000:
            del self._orphans[next(iter(self._orphans))]
        try:
            self._send(CancelRequest(request_id=rid))
        except PeerDeadError:
            del self._orphans[rid]  # try again at its next token

    def _fail_all(self, err: PeerDeadError) -> None:
        for rid, stream in list(self._streams.items()):
            stream.queue.put_nowait(err)
        self._streams.clear()
        self._unanswered.clear()
        for fut in self._status.values():
            if not fut.done():
                fut.set_exception(err)
        self._status.clear()

    def _send(self, msg) -> None:
        # on a zmq.asyncio socket a NOBLOCK send reports EAGAIN through the returned future, not by raising
        if not send_nowait(self._sock, [encode(msg)]):
            raise PeerDeadError(f"the scheduler at {self.address} is not taking messages (queue full)")

    # -- API ------------------------------------------------------------------------------------
    async def submit(self, model: str, prompt: str | None = None, *, prompt_token_ids: list[int] | None = None,
                     max_tokens: int = 128, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                     seed: int | None = None, stop: list[str] | tuple[str, ...] = (),
                     stop_token_ids: list[int] | tuple[int, ...] = (), ignore_eos: bool = False,
                     slo: SLO | dict | None = None, client_request_id: str | None = None,
                     request_id: str | None = None) -> Stream:
        await self.connect()
        rid = request_id or uuid.uuid4().hex
        if isinstance(slo, dict):
            slo = SLO(**slo)
        msg = SubmitRequest(
            request_id=rid, model=model, prompt=prompt,
            prompt_token_ids=tuple(prompt_token_ids) if prompt_token_ids is not None else None,
            max_tokens=max_tokens,
            sampling=SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=tuple(stop),
                                    stop_token_ids=tuple(stop_token_ids), ignore_eos=ignore_eos),
            slo=slo or SLO(), client_request_id=client_request_id)
        stream = Stream(self, rid, self.timeout)
        self._streams[rid] = stream
        self._unanswered[rid] = (msg, time.monotonic())
        try:
            self._send(msg)
        except PeerDeadError:
            self._streams.pop(rid, None)
            self._unanswered.pop(rid, None)
            raise
        return stream

    async def stream(self, model: str, prompt: str | None = None, **kw) -> AsyncIterator[str]:
        s = await self.submit(model, prompt, **kw)
        async for t in s:
            yield t.text

    async def generate(self, model: str, prompt: str | None = None, **kw) -> str:
        return await (await self.submit(model, prompt, **kw)).text()

    async def cancel(self, request_id: str) -> None:
        self._send(CancelRequest(request_id=request_id))

    async def cancel_all(self) -> None:
        """Cancel every request of this client still streaming (a service that stops)."""
        for rid in list(self._streams):
            try:
                self._send(CancelRequest(request_id=rid))
            except PeerDeadError:
                return

    async def status(self, timeout: float = 5.0) -> StatusReply:
        return await self._ask(StatusQuery, "status", timeout)

    async def _ask(self, query, what: str, timeout: float):
        """Send a read-only query and wait for the reply with its nonce."""
        await self.connect()
        nonce = next(self._nonce)
        fut = asyncio.get_running_loop().create_future()
        self._status[nonce] = fut
        self._send(query(nonce=nonce))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._status.pop(nonce, None)
            raise PeerDeadError(f"no {what} reply from {self.address} within {timeout} s") from None

    async def metrics(self, timeout: float = 5.0) -> MetricsReply:
        """The scheduler's metrics now: every request whichever client sent it (see
        c2cq.services.scheduler.metrics for the names and what a scheduler restart does to them)."""
        return await self._ask(MetricsQuery, "metrics", timeout)

    async def models(self, timeout: float = 5.0) -> ModelsReply:
        """The models the scheduler can serve (its view of the catalog), from any host it is reachable from."""
        return await self._ask(ModelsQuery, "models", timeout)


def __getattr__(name: str):  # the blocking Client lives beside this module (c2cq.blocking)
    if name == "Client":
        from c2cq.blocking import Client

        return Client
    raise AttributeError(name)
