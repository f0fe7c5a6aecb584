"""The scheduler process: the thin shell around core.apply (sockets, clocks, the catalog, the log).

Each loop iteration turns what arrived into events, appends them to the log in one transaction,
then applies them and sends the commands: nothing is acted on before it is durable. At start
the log is replayed (from the latest snapshot) and a Recovered event re-dispatches whatever was
in flight when the previous process died.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque

import zmq
import zmq.asyncio

from c2cq import curve, lifecycle, links, log
from c2cq.codec import Codec, encode
from c2cq.errors import WireError
from c2cq.rundir import RunDir
from c2cq.schemas.catalog import NodeCatalogToScheduler
from c2cq.schemas.client import CancelRequest, ClientToScheduler, ModelsQuery, RequestRejected, SubmitRequest
from c2cq.schemas.enums import ErrorCode
from c2cq.schemas.executor import ExecutorToScheduler, SliceReady
from c2cq.services.scheduler import core
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.catalog_view import CatalogView
from c2cq.services.scheduler.journal import Journal, log_path
from c2cq.services.scheduler.peers import Peers
from c2cq.services.scheduler.state import Config, State, ToClient, ToExecutor, ToLog
from c2cq.services.scheduler.validate import Limits
from c2cq.transport import GONE, SENT, make_socket, recv_batch, send_nowait, try_send

TICK_S = 0.25
CATALOG_REFRESH_S = 2.0
OUTBOX_PER_CLIENT = 10_000  # frames held for a client that is not connected (yet): bounded
OUTBOX_CLIENTS = 1_000
OUTBOX_TTL_S = 30.0  # a client gone this long is gone: its frames are dropped
# commands for an executor whose queue is at its high-water mark (congested, not gone) wait here,
# in order, and are retried; one that stays congested past this many is treated as lost
EXEC_OUTBOX_MAX = 50_000


class Shell:
    def __init__(self, rd: RunDir, state: State, journal: Journal, args: argparse.Namespace | None = None) -> None:
        self.rd, self.state, self.journal = rd, state, journal
        self.log = log.get()
        self.ctx = zmq.asyncio.Context()
        args = args or parse([])
        client_addr = args.clients or rd.client_addr
        if links.is_tcp(client_addr):  # remote clients over CURVE; this host's (gateway, CLI) keep the ipc socket
            self.clients = make_socket(self.ctx, zmq.ROUTER, bind=rd.address("client"), hwm=200_000)
            links.bind_also(self.ctx, self.clients, rd, args, client_addr)
        else:
            self.clients = make_socket(self.ctx, zmq.ROUTER, bind=client_addr, hwm=200_000)
        exec_addr = args.executors or rd.executor_addr
        self.executors = make_socket(self.ctx, zmq.ROUTER, bind=exec_addr, hwm=200_000,
                                     curve=links.server(rd, args, exec_addr), insecure=args.insecure)
        # the nodes' catalogs (many hosts): they report what their host has published, and hear the registry
        self.node_catalogs = None if not args.catalogs else make_socket(
            self.ctx, zmq.ROUTER, bind=args.catalogs, curve=links.server(rd, args, args.catalogs),
            insecure=args.insecure)
        self.node_codec: Codec = Codec(NodeCatalogToScheduler)
        self.catalog = CatalogView(self.ctx, rd.catalog_addr, self.log, with_files=self.node_catalogs is not None)
        self.client_codec: Codec = Codec(ClientToScheduler)
        self.exec_codec: Codec = Codec(ExecutorToScheduler)
        # frames for clients that were not reachable (e.g. not yet reconnected after a restart)
        self.outbox: dict[bytes, deque[list[bytes]]] = {}
        self.outbox_since: dict[bytes, float] = {}
        # commands for congested executors, in order: executor id → (its boot when queued, frames)
        self.exec_outbox: dict[str, tuple[str, deque[list[bytes]]]] = {}
        self.peers = Peers(curve.allowed_dir(rd.home), self.log)
        self.malformed, self.refusals = self.peers.malformed, self.peers.refusals

    # -- the one path every input takes: log, apply, send ----------------------------------------
    def ingest(self, events: list[ev.SchedEvent]) -> None:
        if not events:
            return
        self.journal.append(self.state, events)
        outs: list = []
        for e in events:
            outs += core.apply(self.state, e)[1]
        self.emit(outs)

    def emit(self, outs: list) -> None:
        failed: dict[str, str] = {}  # executor → why it is unreachable
        records: list[ev.SchedEvent] = []
        for o in outs:
            if isinstance(o, ToClient):
                self.to_client(o.client, [o.client, encode(o.msg)])
            elif isinstance(o, ToExecutor):
                why = self.to_executor(o.executor_id, [o.executor_id.encode(), encode(o.msg)])
                if why is not None:
                    failed.setdefault(o.executor_id, why)
            elif isinstance(o, ToLog):
                records.append(o.event)
        if records:  # derived records (controller steps): a no-op on replay, kept for the audit
            self.journal.append(self.state, records)
            self.state.applied += len(records)
        self.lost(failed)

    def lost(self, failed: dict[str, str]) -> None:
        if not failed:
            return
        for eid, why in failed.items():
            self.exec_outbox.pop(eid, None)
            self.log.warning("executor_unreachable", executor=eid, reason=why)
        self.ingest([ev.ExecutorUnreachable(at=time.monotonic(), executor_id=eid) for eid in failed])

    # -- executors: congested (queue at its HWM: keep and retry) is not gone (EHOSTUNREACH) --------
    def to_executor(self, eid: str, frames: list[bytes]) -> str | None:
        """Send or queue a command; None, or why the executor counts as unreachable."""
        box = self.exec_outbox.get(eid)
        if box is None:
            res = try_send(self.executors, frames)
            if res == SENT:
                return None
            if res == GONE:
                return "gone"
            x = self.state.executors.get(eid)
            box = self.exec_outbox[eid] = (x.boot_id if x is not None else "", deque())
            self.log.warning("executor_congested", executor=eid)
        if len(box[1]) >= EXEC_OUTBOX_MAX:
            return f"congested: {len(box[1])} commands waiting"
        box[1].append(frames)
        return None

    def flush_executors(self) -> None:
        """Retry queued commands in order; drop those of an executor since lost or restarted."""
        failed: dict[str, str] = {}
        for eid, (boot, box) in list(self.exec_outbox.items()):
            x = self.state.executors.get(eid)
            if x is None or x.state == "lost" or x.boot_id != boot:
                del self.exec_outbox[eid]
                self.log.warning("executor_outbox_dropped", executor=eid, dropped=len(box))
                continue
            while box:
                res = try_send(self.executors, box[0])
                if res != SENT:
                    if res == GONE:
                        failed[eid] = "gone"
                    break
                box.popleft()
            if not box:
                del self.exec_outbox[eid]
                self.log.info("executor_decongested", executor=eid)
        self.lost(failed)

    def to_client(self, ident: bytes, frames: list[bytes]) -> None:
        box = self.outbox.get(ident)
        if box is None and send_nowait(self.clients, frames):
            return
        if box is None:
            if len(self.outbox) >= OUTBOX_CLIENTS:
                self.drop_outbox(next(iter(self.outbox)))
            box = self.outbox[ident] = deque(maxlen=OUTBOX_PER_CLIENT)
            self.outbox_since[ident] = time.monotonic()
        box.append(frames)

    def flush_outbox(self, ident: bytes) -> None:
        box = self.outbox.get(ident)
        while box:
            if not send_nowait(self.clients, box[0]):
                if time.monotonic() - self.outbox_since[ident] > OUTBOX_TTL_S:
                    self.drop_outbox(ident)
                    self.abandon(ident)
                return
            box.popleft()
        self.drop_outbox(ident)

    def drop_outbox(self, ident: bytes) -> None:
        box = self.outbox.pop(ident, None)
        self.outbox_since.pop(ident, None)
        if box:
            self.log.warning("client_unreachable", dropped=len(box))

    def abandon(self, ident: bytes) -> None:
        """A client unreachable past OUTBOX_TTL_S is gone: cancel what it still has in flight, so no
        slice keeps working for nobody (logged as CancelAsked, like a cancel it sent itself). A
        client that comes back later finds those requests finished as cancelled."""
        rids = [rid for rid, r in self.state.requests.items() if r.client == ident and r.finished is None]
        if rids:
            self.log.warning("client_gone_requests_cancelled", requests=len(rids))
            self.ingest([ev.CancelAsked(at=time.monotonic(), client=ident, request_id=rid) for rid in rids])

    # -- loops ----------------------------------------------------------------------------------
    async def client_loop(self) -> None:
        while True:
            batch: list[ev.SchedEvent] = []
            for frames in await recv_batch(self.clients):
                if len(frames) != 2:
                    continue  # a raw peer sending odd multipart shapes: nothing to answer to
                ident, frame = frames
                if ident in self.outbox:
                    self.flush_outbox(ident)
                try:
                    msg = self.client_codec.decode(frame)
                except WireError as e:
                    self.malformed["client"](str(e)[:200])
                    self.to_client(ident, [ident, encode(RequestRejected(
                        request_id=None, code=ErrorCode.MALFORMED, message=f"malformed frame: {str(e)[:200]}"))])
                    continue
                if isinstance(msg, SubmitRequest):
                    info = await self.catalog.resolve(msg.model)
                    batch.append(ev.Submitted(at=time.monotonic(), client=ident, msg=msg, info=info))
                elif isinstance(msg, CancelRequest):
                    batch.append(ev.CancelAsked(at=time.monotonic(), client=ident, request_id=msg.request_id))
                elif isinstance(msg, ModelsQuery):  # the catalog is the shell's: answered here, not by the core
                    self.to_client(ident, [ident, encode(await self.catalog.reply(msg.nonce))])
                else:  # a query sees every message that came before it: a submit, then a status, shows it
                    if batch:
                        self.ingest(batch)
                        batch = []
                    self.emit(core.query(self.state, ident, msg))
            self.ingest(batch)

    def said(self, eid: str, msg, key: str) -> ev.ExecutorSaid | None:
        x = self.state.executors.get(eid)
        if self.peers.refused("executor", eid, x.peer_key if x is not None else "", key):
            return None
        if not isinstance(msg, SliceReady) or not key:
            return ev.ExecutorSaid(at=time.monotonic(), executor_id=eid, msg=msg)
        if x is None or x.boot_id != msg.boot_id or x.peer_key != key:
            self.log.info("executor_registered", executor=eid, host=msg.host, peer_key=key)
        return ev.ExecutorSaid(at=time.monotonic(), executor_id=eid, msg=msg, peer_key=key)

    async def executor_loop(self) -> None:
        while True:
            said = [self.said(eid, msg, key) for eid, _, msg, key in await self.peers.messages(self.executors, self.exec_codec,
                                                                                      "executor")]
            self.ingest([e for e in said if e is not None])  # first: a restarted executor's SliceReady voids what was queued for the old one
            if self.exec_outbox:  # an executor that speaks may have made room
                self.flush_executors()

    async def node_catalog_loop(self) -> None:
        """Each report (HostModels) is logged as HostReported and answered with the registry's files."""
        while True:
            batch: list[ev.SchedEvent] = []
            for _, ident, msg, key in await self.peers.messages(self.node_catalogs, self.node_codec, "catalog"):
                h = self.state.hosts.get(msg.host)
                if self.peers.refused("catalog", msg.host, h.peer_key if h is not None else "", key):
                    continue
                if h is None or (tuple(h.published), tuple(h.publishing), h.peer_key) != (msg.published,
                                                                                          msg.publishing, key):
                    if key and (h is None or h.peer_key != key):
                        self.log.info("host_registered", host=msg.host, peer_key=key)
                    batch.append(ev.HostReported(at=time.monotonic(), host=msg.host, published=msg.published,
                                                 publishing=msg.publishing, peer_key=key))
                send_nowait(self.node_catalogs, [ident, encode(self.catalog.files)])
            self.ingest(batch)

    async def tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if self.exec_outbox:
                self.flush_executors()
            self.ingest([ev.Ticked(at=time.monotonic())])
            for ident in list(self.outbox):
                self.flush_outbox(ident)
            self.journal.maybe_snapshot(self.state)
            if time.monotonic() - self.catalog.last_refresh > CATALOG_REFRESH_S:
                await self.catalog.refresh(force=True)

    def close(self) -> None:
        self.catalog.close()
        for s in (self.clients, self.executors, self.node_catalogs):
            if s is not None:
                s.close(linger=0)
        curve.stop_authenticator(self.ctx)  # its sockets are the Context's too: term() would wait on them
        self.ctx.term()


async def amain(args: argparse.Namespace) -> None:
    log.configure("scheduler")
    rd = RunDir.from_env(args.home)
    cfg = Config(limits=Limits(max_tokens=args.max_tokens_limit), heartbeat_timeout_s=args.heartbeat_timeout,
                 max_migrations=args.max_migrations)
    journal = Journal(log_path(rd), snapshot_every=args.snapshot_every)
    t0 = time.monotonic()
    state, replayed = journal.load(cfg)
    shell = Shell(rd, state, journal, args)
    shell.log.info("replayed", events=replayed, requests=len(state.requests), seconds=round(time.monotonic() - t0, 3))
    if state.applied:
        shell.ingest([ev.Recovered(at=time.monotonic())])
    stop = lifecycle.shutdown_flag()
    await shell.catalog.refresh(force=True)
    loops = [shell.client_loop(), shell.executor_loop(), shell.tick_loop()]
    if shell.node_catalogs is not None:
        loops.append(shell.node_catalog_loop())
    tasks = [asyncio.create_task(c) for c in loops]
    lifecycle.signal_ready()
    shell.log.info("ready", client=rd.client_addr, executors=rd.executor_addr, log=str(journal.log.path))
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    if stopper in done:
        shell.ingest([ev.Stopped(at=time.monotonic())])
        journal.maybe_snapshot(shell.state, force=True)
    for t in done:
        if t is not stopper and t.exception():
            raise t.exception()
    shell.close()
    journal.close()
    shell.log.info("stopped")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="c2cq-scheduler")
    p.add_argument("--home", default=None)
    p.add_argument("--max-tokens-limit", type=int, default=4096)
    p.add_argument("--heartbeat-timeout", type=float, default=3.0)
    p.add_argument("--max-migrations", type=int, default=3,
                   help="times a request may move to another executor when its executor is lost")
    p.add_argument("--snapshot-every", type=int, default=20_000, help="events between state snapshots")
    p.add_argument("--executors", default=None, metavar="ADDR",
                   help="where executors connect (default: the run dir's ipc socket; tcp://HOST:PORT for other hosts)")
    p.add_argument("--catalogs", default=None, metavar="ADDR",
                   help="where the nodes' catalogs connect (tcp://HOST:PORT; default none: one host)")
    p.add_argument("--clients", default=None, metavar="ADDR",
                   help="where clients connect (default: $C2CQ_CLIENT_ADDR, else the run dir's ipc socket)")
    links.add_args(p, links.SERVER_ROLE)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    lifecycle.run(lambda: amain(args))


if __name__ == "__main__":
    main()
