"""The scheduler's peer-facing ROUTER sockets (executors, the nodes' catalogs): what arrived, with the
CURVE key of the peer that sent it, and the rule that a name registered with one key is not taken
over by another while the first is still allowed."""

from __future__ import annotations

import zmq
import zmq.asyncio

from c2cq import curve, log
from c2cq.codec import Codec
from c2cq.errors import AuthError, WireError
from c2cq.transport import Throttled, recv_batch


class Peers:
    def __init__(self, allowed, logger=None) -> None:
        self.allowed = allowed  # the allowed-keys folder: a key removed there hands its names over
        logger = logger or log.get()
        self.malformed = {name: Throttled(logger, "malformed_frames", socket=name) for name in ("client", "executor", "catalog")}
        self.refusals = {name: Throttled(logger, "peer_key_refused", socket=name) for name in ("executor", "catalog")}

    async def messages(self, sock: zmq.asyncio.Socket, codec: Codec, name: str) -> list[tuple[str, bytes, object, str]]:
        """What arrived on a peer-facing ROUTER socket: (peer name, routing id, message, the peer's CURVE
        public key — its User-Id — or "" on a socket without CURVE); frames that do not decode (or a
        routing id that is not UTF-8) are counted as malformed and dropped."""
        keyed = sock.getsockopt(zmq.MECHANISM) == zmq.CURVE
        out = []
        for frames in await recv_batch(sock, copy=False):  # Frames: a copy loses the User-Id
            if len(frames) != 2:
                continue
            ident, frame = frames[0].bytes, frames[1]
            try:
                out.append((ident.decode(), ident, codec.decode(frame.buffer), curve.peer_key(frame) if keyed else ""))
            except (WireError, UnicodeDecodeError, AuthError) as e:  # AuthError: no User-Id on a CURVE socket
                self.malformed[name](str(e)[:200])
        return out

    def refused(self, name: str, peer: str, recorded: str, key: str) -> bool:
        """A peer name (an executor id, a host) registered with one key and claimed by another is refused
        while the recorded key is still listed in the allowed folder: a stolen name does not take over a
        live peer's work. An operator who removes the old key there (rotated or revoked) lets the new key
        take the name over (its next SliceReady or report records it)."""
        if not key or not recorded or key == recorded or recorded.encode() not in curve.allowed_keys(self.allowed):
            return False
        self.refusals[name](str(AuthError(
            f"{name} {peer!r} is registered with key {recorded}; refused a peer with key {key} (remove the old key "
            f"from {self.allowed} to hand the name over)")))
        return True
