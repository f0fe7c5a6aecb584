"""The one helper that makes every socket, batched receive, non-blocking send, throttled warnings.

Every socket gets linger 0, bounded high-water marks and, for ipc, a path under the run dir; a tcp
socket gets CURVE (c2cq.curve) or is refused, unless it is explicitly marked insecure.
Receiving awaits readiness once, then drains with NOBLOCK (one await per message caps at
~80k msg/s; draining reaches ~1M msg/s on ipc). A non-blocking send tells a full queue (a slow
peer: retry) from a gone peer.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import zmq
import zmq.asyncio

from c2cq.curve import HANDSHAKE_EVENTS, CurveClient, CurveServer
from c2cq.errors import ConfigError

DEFAULT_HWM = 20_000
MAX_BATCH = 512


def make_socket(
    ctx: zmq.asyncio.Context,
    kind: int,
    *,
    bind: str | None = None,
    connect: str | None = None,
    identity: bytes | None = None,
    hwm: int = DEFAULT_HWM,
    linger_ms: int = 0,
    curve: CurveServer | CurveClient | None = None,
    insecure: bool = False,
) -> zmq.asyncio.Socket:
    if (bind is None) == (connect is None):
        raise ValueError("make_socket: give exactly one of bind= or connect=")
    endpoint = bind or connect
    if curve is None and endpoint.startswith("tcp://") and not insecure:
        raise ConfigError(f"{endpoint}: a tcp endpoint needs CURVE keys (c2cq keys init), or --insecure")
    if curve is not None and not isinstance(curve, CurveServer if bind is not None else CurveClient):
        raise ConfigError(f"{endpoint}: a {'bound' if bind is not None else 'connecting'} socket takes "
                          f"{'CurveServer' if bind is not None else 'CurveClient'} keys")
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, 64 * 1024 * 1024)  # oversized frames are dropped by libzmq
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone peer raises, not vanishes
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted peer with the same identity takes over
    if curve is not None:
        try:
            curve.apply(ctx, sock)  # a server's ZAP authenticator is running before the bind
        except ConfigError:
            sock.close(linger=0)
            raise
    elif connect is not None and connect.startswith("tcp://"):
        sock.get_monitor_socket(HANDSHAKE_EVENTS)  # curve.handshake can then tell a plain peer refused too
    if bind is not None:
        if bind.startswith("ipc://"):
            Path(bind[len("ipc://"):]).parent.mkdir(parents=True, exist_ok=True)
        sock.bind(bind)
    else:
        sock.connect(connect)
    return sock


async def recv_batch(sock: zmq.asyncio.Socket, max_batch: int = MAX_BATCH, copy: bool = True) -> list[list]:
    """Wait for at least one multipart message, then take whatever else is already queued. With
    ``copy=False`` the parts are zmq.Frames, which keep their properties (a CURVE peer's User-Id)."""
    batch = [await sock.recv_multipart(copy=copy)]
    while len(batch) < max_batch:
        try:
            batch.append(sock.recv_multipart(flags=zmq.NOBLOCK, copy=copy).result())
        except zmq.Again:
            break
    return batch


SENT, FULL, GONE = "sent", "full", "gone"  # what try_send says


def try_send(sock: zmq.asyncio.Socket | zmq.Socket, frames: list[bytes]) -> str:
    """Send without blocking; SENT, FULL (EAGAIN: the peer's queue is at its high-water mark — it is
    there but slow: keep the message and retry) or GONE (EHOSTUNREACH from ROUTER_MANDATORY, or
    any other error: no such peer now).

    An asyncio socket does not raise here: it returns a Future that already holds the error, so
    the Future is what must be checked.
    """
    try:
        res = sock.send_multipart(frames, flags=zmq.NOBLOCK)
    except zmq.Again:  # a plain socket raises
        return FULL
    except zmq.ZMQError:
        return GONE
    if not isinstance(res, asyncio.Future):
        return SENT
    if not res.done():  # queued behind an awaited send on the same socket: it goes out in order
        res.add_done_callback(_retrieve)
        return SENT
    err = res.exception()
    if err is None:
        return SENT
    return FULL if isinstance(err, zmq.Again) else GONE


def send_nowait(sock: zmq.asyncio.Socket | zmq.Socket, frames: list[bytes]) -> bool:
    """Send without blocking; False when the peer is gone or its queue is full (see try_send)."""
    return try_send(sock, frames) == SENT


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # consumed: a late failure is not logged as "never retrieved"


class Throttled:
    """A warning that may recur at a high rate (a malformed frame on a socket): the first one is
    logged at once, later ones are counted and logged as one summary line at most once per
    ``interval_s`` — also when the burst ends (a timer on the running loop, if there is one)."""

    def __init__(self, log, event: str, interval_s: float = 1.0, clock=time.monotonic, **fields) -> None:
        self.log, self.event, self.interval_s, self.clock, self.fields = log, event, interval_s, clock, fields
        self.total = 0  # every occurrence, logged or not
        self._pending = 0  # occurrences since the last line
        self._last_error = ""
        self._last_line = -float("inf")
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, error: str) -> None:
        self.total += 1
        self._pending += 1
        self._last_error = error
        if self.clock() - self._last_line >= self.interval_s:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop: the next occurrence after the interval logs the summary
            self._timer = loop.call_later(max(0.0, self._last_line + self.interval_s - self.clock()), self.flush)

    def flush(self) -> None:
        """Log what was counted since the last line (nothing if nothing was)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        self.log.warning(self.event, count=self._pending, total=self.total, last_error=self._last_error,
                         **self.fields)
        self._pending = 0
        self._last_line = self.clock()
