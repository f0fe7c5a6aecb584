"""Talking to the catalog from the CLI: over its socket when an instance runs, else in-process."""

from __future__ import annotations

import zmq

from c2cq.codec import Codec, encode
from c2cq.errors import ModelError, PeerDeadError
from c2cq.rundir import RunDir
from c2cq.schemas.catalog import CatalogError, FromCatalog
from c2cq.supervisor.manager import read_pid


def call(rd: RunDir, msg, timeout_s: float = 10.0):
    """Send one catalog message and return the reply; CatalogError replies raise ModelError."""
    if read_pid(rd) is not None:
        reply = _remote(rd, msg, timeout_s)
    else:
        from c2cq.services.catalog.store import CatalogStore

        store = CatalogStore(rd.catalog_dir, source="cli")
        try:
            reply = store.handle(msg)
        finally:
            store.close()
    if isinstance(reply, CatalogError):
        raise ModelError(f"{reply.code}: {reply.message}")
    return reply


def _remote(rd: RunDir, msg, timeout_s: float):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(rd.catalog_addr)
        sock.send(encode(msg))
        if not sock.poll(int(timeout_s * 1000)):
            raise PeerDeadError(f"the catalog at {rd.catalog_addr} did not answer within {timeout_s} s")
        return Codec(FromCatalog).decode(sock.recv())
    finally:
        sock.close()
        ctx.term()
