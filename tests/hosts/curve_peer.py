"""A CURVE server or client run inside a network namespace by tests/hosts/test_curve_netns.py.

server MODE KEYS ADDR IFACE: a ROUTER on ADDR (CURVE, or plain with MODE=insecure) that echoes
each message with the sender's key, and on STOP answers whether MARKER crossed IFACE in clear
(read from an AF_PACKET socket opened before the bind).
client ROLE SERVER_ROLE KEYS ADDR: handshake, one marked message, STOP; exit 3 on AuthError.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import zmq
import zmq.asyncio

from c2cq import curve
from c2cq.errors import AuthError
from c2cq.transport import make_socket

MARKER = b"plaintext-marker-5d1e"


async def server(mode: str, keys: str, addr: str, iface: str) -> None:
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # every frame on the link
    raw.bind((iface, 0))
    raw.setblocking(False)
    ctx = zmq.asyncio.Context()
    opts = ({"curve": curve.CurveServer(keys=curve.load_keypair(Path(keys), "control"), allowed=Path(keys) / "allowed")}
            if mode == "secure" else {"insecure": True})
    sock = make_socket(ctx, zmq.ROUTER, bind=addr, **opts)
    print("ready", flush=True)
    seen = bytearray()
    while True:
        ident, body = await sock.recv_multipart(copy=False)
        if body.bytes == b"STOP":
            while True:
                try:
                    seen.extend(raw.recv(65536))
                except BlockingIOError:
                    break
            await sock.send_multipart([ident.bytes, b"seen" if MARKER in seen else b"clean"])
            break
        who = curve.peer_key(body) if mode == "secure" else "-"
        await sock.send_multipart([ident.bytes, body.bytes + b" from " + who.encode()])
    curve.stop_authenticator(ctx)
    ctx.destroy(linger=1000)


async def client(role: str, server_role: str, keys: str, addr: str) -> int:
    ctx = zmq.asyncio.Context()
    k = Path(keys)
    if role == "insecure":
        sock = make_socket(ctx, zmq.DEALER, connect=addr, insecure=True)
    else:
        cl = curve.CurveClient(keys=curve.load_keypair(k, role), server_key=curve.load_keypair(k, server_role).public)
        sock = make_socket(ctx, zmq.DEALER, connect=addr, curve=cl)
    try:
        if role != "insecure":
            await curve.handshake(sock, addr, timeout_s=5)
        await sock.send(MARKER + b" hello")
        print((await asyncio.wait_for(sock.recv(), 10)).decode(), flush=True)
        await sock.send(b"STOP")
        print((await asyncio.wait_for(sock.recv(), 10)).decode(), flush=True)
        return 0
    except AuthError as e:
        print(f"AuthError: {e}", flush=True)
        return 3
    finally:
        ctx.destroy(linger=0)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server(*sys.argv[2:6]))
    else:
        sys.exit(asyncio.run(client(*sys.argv[2:6])))
