"""The executor process: one per slice. Runs a backend (sim, cpu, cuda) behind the protocol."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time
import uuid

# read by OpenMP when torch loads (later, in make_backend): threads that sleep between parallel regions
# instead of spinning on cores other slices need (the supervisor sets it too, with the thread count)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# oneDNN (torch's bf16 GEMM on CPUs with bf16 instructions) JITs a kernel per GEMM shape, 1-9 ms each the
# first time, and keeps 1024: a slice serving a few models (5 shapes each) at every batch size from 1 to
# 32 plus prefill chunks needs more than that, or a switch back pays the JIT again
os.environ.setdefault("ONEDNN_PRIMARY_CACHE_CAPACITY", "8192")

import zmq
import zmq.asyncio

from c2cq import curve, lifecycle, links, log
from c2cq.codec import Codec, encode
from c2cq.errors import WireError
from c2cq.rundir import RunDir
from c2cq.schemas import executor as m
from c2cq.schemas.catalog import (
    CatalogError, DescribeModel, FromCatalog, ListModels, ModelInfo, ModelInfoReply, ModelListReply,
)
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.services.executor.backend import Backend, StepResult
from c2cq.services.executor.kv_flags import add_kv_flags, kv_options
from c2cq.services.executor.slice import SliceQueue
from c2cq.transport import Throttled, make_socket, recv_batch

HEARTBEAT_S = 0.5
ANNOUNCE_S = 5.0
STATS_S = 0.1


class Executor:
    def __init__(self, rd: RunDir, executor_id: str, backend: Backend, link_group: str | None = None,
                 args: argparse.Namespace | None = None) -> None:
        self.id, self.backend = executor_id, backend
        self.host = getattr(args, "host", None)  # announced when it joined a control plane on another host
        self.link_group = link_group  # slices of one group share a host link (announced in SliceReady)
        self.boot_id = uuid.uuid4().hex[:12]
        self.log = log.get(executor=executor_id)
        self.ctx = zmq.asyncio.Context()
        self.join = getattr(args, "join", None) or rd.executor_addr
        self.sched = make_socket(self.ctx, zmq.DEALER, connect=self.join, identity=executor_id.encode(),
                                 curve=links.client(rd, args, self.join) if args is not None else None,
                                 insecure=getattr(args, "insecure", False))
        self.catalog = make_socket(self.ctx, zmq.DEALER, connect=rd.catalog_addr)
        self.codec: Codec = Codec(m.SchedulerToExecutor)
        self.malformed = Throttled(self.log, "malformed_frames")  # a flood of bad frames: one line a second
        self.catalog_codec: Codec = Codec(FromCatalog)
        self.queue = SliceQueue()
        self.models: dict[str, ModelInfo] = {}
        self.seq = 0
        self.chunk_tokens = 512
        self.draining = False
        self.wake = asyncio.Event()
        self._catalog_lock = asyncio.Lock()
        self._stats = StepResult()
        self._stats_steps = 0
        self._stats_since = time.monotonic()
        self._preloading: set[str] = set()  # models a preload is mapping and building now
        self._tasks: set[asyncio.Task] = set()  # background work (preloads), referenced until done

    # -- events out -----------------------------------------------------------------------------
    def emit(self, cls, **fields) -> None:
        self.seq += 1
        msg = cls(source=self.id, seq=self.seq, ts_ns=time.monotonic_ns(), **fields)
        self.sched.send(encode(msg))  # DEALER: queued up to the HWM while the scheduler is away

    def announce(self) -> None:
        b = self.backend
        self.emit(m.SliceReady, executor_id=self.id, boot_id=self.boot_id, backend=b.name, device=b.device,
                  memory_budget_bytes=b.memory_budget_bytes, link_bandwidth_bps=b.link_bandwidth_bps,
                  max_batch=b.max_batch, link_group=self.link_group, host=self.host)

    def fail(self, req_id: str, code: ErrorCode, message: str) -> None:
        self.emit(m.RequestCompleted, request_id=req_id, finish_reason=FinishReason.ERROR, prompt_tokens=0,
                  completion_tokens=0, error_code=code, message=message)

    # -- the catalog ----------------------------------------------------------------------------
    async def describe(self, name: str) -> ModelInfo | str:
        if name in self.models:
            return self.models[name]
        async with self._catalog_lock:
            await self.catalog.send(encode(DescribeModel(name=name)))
            try:
                while True:
                    reply = self.catalog_codec.decode(await asyncio.wait_for(self.catalog.recv(), 5.0))
                    if isinstance(reply, ModelInfoReply) and reply.info.name == name:
                        self.models[name] = reply.info
                        return reply.info
                    if isinstance(reply, CatalogError):
                        return reply.message
            except (TimeoutError, WireError) as e:
                return f"catalog unavailable: {e or type(e).__name__}"

    async def list_models(self) -> tuple[ModelInfo, ...]:
        """Every model the catalog has (empty when it does not answer in time)."""
        async with self._catalog_lock:
            await self.catalog.send(encode(ListModels()))
            try:
                while True:
                    reply = self.catalog_codec.decode(await asyncio.wait_for(self.catalog.recv(), 5.0))
                    if isinstance(reply, ModelListReply):
                        return reply.models
            except (TimeoutError, WireError):
                return ()

    # -- ahead of a switch (backends that can: cpu) -----------------------------------------------
    def background(self, work) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def preload(self, model: str) -> None:
        """Map and build ``model`` and parse its tokenizer beside the current work, for its switch to come."""
        preload = getattr(self.backend, "preload", None)
        if preload is None or model in self._preloading or model == self.queue.model:
            return
        self._preloading.add(model)
        try:
            info = await self.describe(model)
            if not isinstance(info, str) and info.shm is not None:
                await asyncio.to_thread(preload, info)
        except Exception as e:  # a preload is a guess: failing it costs the switch its head start, nothing else
            self.log.warning("preload_failed", model=model, error=str(e))
        finally:
            self._preloading.discard(model)

    async def evict(self, model: str) -> None:
        evict = getattr(self.backend, "evict", None)
        info = self.models.get(model)
        if evict is not None and info is not None and model != self.queue.model:
            await asyncio.to_thread(evict, info)

    async def prepare(self) -> None:
        """At start: what the backend can make ready for the catalog's models (cpu: preloads, tokenizers)."""
        prepare = getattr(self.backend, "prepare", None)
        if prepare is not None:
            models = list(await self.list_models())
            preloaded, tokenizers = await asyncio.to_thread(prepare, models)
            self.log.info("prepared", models=len(models), preloaded=preloaded, tokenizers=tokenizers)

    # -- commands in ----------------------------------------------------------------------------
    def on_command(self, cmd) -> None:
        if isinstance(cmd, m.AssignRequest):
            if self.draining:
                self.fail(cmd.request_id, ErrorCode.SHUTTING_DOWN, "the executor is draining")
            elif self.queue.admit(cmd):
                self.backend.add(cmd)
            elif self.queue.running:  # it waits behind another model's requests: make its switch cheap meanwhile
                self.background(self.preload(cmd.model))
        elif isinstance(cmd, m.AbortRequest):
            if self.queue.remove(cmd.request_id) == "running":
                self.backend.abort(cmd.request_id)
        elif isinstance(cmd, m.ApplyPlan):
            self.chunk_tokens = max(1, cmd.chunk_tokens)
            self.backend.set_alpha(cmd.alpha)
        elif isinstance(cmd, m.Drain):
            self.draining = True
        elif isinstance(cmd, m.PreloadModel):
            self.background(self.preload(cmd.model))
        elif isinstance(cmd, m.EvictModel):
            self.background(self.evict(cmd.model))
        self.wake.set()

    async def recv_loop(self) -> None:
        while True:
            for frames in await recv_batch(self.sched):
                try:
                    cmd = self.codec.decode(frames[-1])
                except WireError as e:
                    self.malformed(str(e)[:200])
                    continue
                self.on_command(cmd)

    # -- work -----------------------------------------------------------------------------------
    async def switch_if_idle(self) -> None:
        nxt = self.queue.next_switch()
        if nxt is None:
            return
        model, reqs = nxt
        info = await self.describe(model)
        if isinstance(info, str):
            for r in reqs:
                self.queue.remove(r.request_id)
                self.fail(r.request_id, ErrorCode.UNKNOWN_MODEL, info)
            self.queue.model = None
            return
        t0 = time.monotonic()
        try:
            if self.backend.blocking:
                await asyncio.to_thread(self.backend.switch, info)
            else:
                self.backend.switch(info)
        except Exception as e:  # a model this backend cannot load fails its requests, not the executor
            self.log.error("switch_failed", model=model, error=str(e))
            code = getattr(e, "code", None) or ErrorCode.BAD_MODEL
            for r in reqs:
                self.queue.remove(r.request_id)
                self.fail(r.request_id, code, f"cannot load {model!r}: {e}")
            self.queue.model = None
            return
        self.emit(m.ModelResident, model=model, alpha=self.backend.alpha(),
                  bytes_resident=int(self.backend.alpha() * info.bytes), switched_s=time.monotonic() - t0)
        for r in reqs:
            if r.request_id in self.queue.running:
                self.backend.add(r)

    async def work_loop(self) -> None:
        while True:
            await self.switch_if_idle()
            if not self.backend.has_work():
                self.flush_stats()
                self.wake.clear()
                if not self.queue.pending:
                    await self.idle_work()
                    await self.wake.wait()
                continue
            t0 = time.monotonic()
            if self.backend.blocking:
                res = await asyncio.to_thread(self.backend.step, self.chunk_tokens)
            else:
                res = self.backend.step(self.chunk_tokens)
                await asyncio.sleep(max(0.0, res.busy_s - (time.monotonic() - t0)))
            self.publish(res)

    async def idle_work(self) -> None:
        """What the backend does while nothing is to run (cpu: packing the served model's weights), a
        bounded piece at a time until something arrives."""
        idle = getattr(self.backend, "idle", None)
        while idle is not None and not self.wake.is_set() and await asyncio.to_thread(idle):
            pass

    def publish(self, res: StepResult) -> None:
        for o in res.outputs:
            if o.request_id not in self.queue.running:
                continue  # aborted while the step ran
            if o.token_ids:
                self.emit(m.TokensProduced, request_id=o.request_id, index=o.index, token_ids=o.token_ids, text=o.text)
            if o.finish is not None:
                self.queue.remove(o.request_id)
                self.emit(m.RequestCompleted, request_id=o.request_id, finish_reason=o.finish,
                          prompt_tokens=o.prompt_tokens, completion_tokens=o.index + len(o.token_ids),
                          error_code=(o.code or ErrorCode.INTERNAL) if o.error else None, message=o.error)
        self._stats.accumulate(res)
        self._stats_steps += 1
        if time.monotonic() - self._stats_since >= STATS_S:
            self.flush_stats()

    def flush_stats(self) -> None:
        """Send the window's StepStats (also when the slice goes idle, so its last KV figures are known)."""
        s = self._stats
        if self._stats_steps:
            self.emit(m.StepStats, step_s=s.busy_s / self._stats_steps, tokens=s.prefill_tokens + s.decode_tokens,
                      prefill_tokens=s.prefill_tokens, decode_tokens=s.decode_tokens, batch=len(self.queue.running),
                      bytes_hbm=s.bytes_hbm, bytes_host=s.bytes_host, model=self.queue.model,
                      **s.kv_stats())
            self._stats, self._stats_steps, self._stats_since = StepResult(), 0, time.monotonic()

    async def heartbeat_loop(self) -> None:
        last_announce = time.monotonic()
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            self.emit(m.Heartbeat, executor_id=self.id, boot_id=self.boot_id, active=len(self.queue.running),
                      waiting=len(self.queue.pending), draining=self.draining)
            if time.monotonic() - last_announce > ANNOUNCE_S:
                self.announce()
                last_announce = time.monotonic()

    def close(self) -> None:
        self.sched.close(linger=0)
        self.catalog.close(linger=0)
        self.ctx.term()


def make_backend(args: argparse.Namespace) -> Backend:
    if args.backend == "sim":
        from c2cq.services.executor.sim import SimBackend, SliceProfile

        return SimBackend(SliceProfile(time_scale=args.sim_time_scale), device=args.device or f"sim:{args.id}")
    if args.backend == "cpu":
        from c2cq.services.executor.cpu import CpuBackend

        return CpuBackend(device=args.device or "cpu", threads=args.threads, kv=kv_options(args),
                          packed_bytes=args.packed_mb << 20)
    if args.backend == "cuda":
        from c2cq.services.executor.cuda import CudaBackend

        return CudaBackend(device=args.device or os.environ.get("CUDA_VISIBLE_DEVICES") or _visible_slice(args).device,
                           kv=kv_options(args))
    raise SystemExit(f"unknown backend {args.backend!r}")


def _visible_slice(args: argparse.Namespace):
    """A container's executor (one pod per MIG slice): its slice from NVIDIA_VISIBLE_DEVICES, else NVML.
    CUDA sees only that device, and the slice's parent GPU is its link group."""
    from c2cq.supervisor.discover import executor_slice

    found = executor_slice()
    args.link_group = args.link_group or found.link_group
    return found


async def amain(args: argparse.Namespace) -> None:
    log.configure(f"executor-{args.id}")
    rd = RunDir.from_env(args.home)
    if not args.id:
        raise SystemExit("c2cq executor: error: no --id (or $C2CQ_EXECUTOR_ID)")
    if not args.join:
        args.host = None  # one host: the supervisor's executors announce none
    ex = Executor(rd, args.id, make_backend(args), link_group=args.link_group or None, args=args)
    if links.is_tcp(ex.join):
        await curve.handshake(ex.sched, ex.join, args.handshake_timeout)  # a refused key: a clear error, now
    stop = lifecycle.shutdown_flag()
    ex.announce()
    tasks = [asyncio.create_task(c) for c in (ex.recv_loop(), ex.work_loop(), ex.heartbeat_loop())]
    ex.background(ex.prepare())
    lifecycle.signal_ready()
    ex.log.info("ready", backend=args.backend, boot_id=ex.boot_id, kv_policy=args.kv_policy, kv_blocks=args.kv_blocks,
                kv_host_blocks=args.kv_host_blocks)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    ex.close()
    for t in done:
        if t is not stopper and t.exception():
            raise t.exception()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="c2cq-executor")
    p.add_argument("--home", default=None)
    p.add_argument("--id", default=os.environ.get("C2CQ_EXECUTOR_ID"),
                   help="its name at the scheduler (default $C2CQ_EXECUTOR_ID: a pod's name)")
    p.add_argument("--join", default=os.environ.get("C2CQ_JOIN"), metavar="tcp://HOST:PORT",
                   help="the scheduler's executors socket on the control plane (default: this host's ipc socket)")
    p.add_argument("--host", default=os.environ.get("C2CQ_NODE_NAME") or socket.gethostname(),
                   help="this host's name, as its catalog reports it (default $C2CQ_NODE_NAME or the hostname)")
    p.add_argument("--handshake-timeout", type=float, default=10.0)
    links.add_args(p, links.CLIENT_ROLE)
    p.add_argument("--backend", choices=("sim", "cpu", "cuda"), default="sim")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=0, help="cpu: torch threads (0: one per core of $C2CQ_CPU_CORES)")
    p.add_argument("--sim-time-scale", type=float, default=1.0)
    add_kv_flags(p)
    p.add_argument("--link-group", default=os.environ.get("C2CQ_LINK_GROUP"),
                   help="slices of one group share a host link (the supervisor passes C2CQ_LINK_GROUP)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    lifecycle.run(lambda: amain(args))


if __name__ == "__main__":
    main()
