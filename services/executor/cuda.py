"""The cuda backend: real models from the catalog's shared memory, on a GPU or a MIG slice.

A switch maps the published file (no copy) and registers it with the GPU (pinned, device-visible:
services/executor/pinned.py); registrations are kept across switches, so a model seen before, or
pinned ahead with ``pin()``, switches without registering again. The engine is built at once:
every linear weight is a SplitWeight whose first rows are copied into HBM and whose other rows
HybridGEMM reads straight from the pinned mapping over the link; the tensors every step reads whole
(the embedding table, norms, biases) are copied into HBM; the paged KV cache lives in HBM, sized from
the slice's memory budget (services/executor/residency.py). All these copies are queued on the
compute stream, so the switch returns before they finish and the first step runs after them.

Progressive residency (the rows themselves: services/executor/cuda_rows.py): after a switch, a
background thread raises each weight's resident rows toward the plan's α (``set_alpha``) within the budget. It copies the next rows on its own CUDA
stream, a bounded chunk at a time, and between steps (under the lock a step holds) swaps the
layer's split for the larger one. A weight whose rows are all resident runs the plain HBM GEMM; a
lower α shrinks the resident rows between steps and frees their HBM.

StepStats: bytes read per step from host memory (the non-resident rows of the weights the step
used) and from HBM (resident rows, biases, embedding rows); the link bandwidth announced is a
pinned-host-to-device copy timed with CUDA events when the backend starts.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from c2cq import log
from c2cq.errors import ConfigError, RequestError
from c2cq.kernels.split import DEFAULT_ALIGN, SplitError
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import ErrorCode
from c2cq.services.executor.backend import StepResult
from c2cq.services.executor.cpu import BLOCK_SIZE, kv_bytes_per_token
from c2cq.services.executor.engine_requests import EngineBackend, EngineRequests
from c2cq.services.executor.kv_shell import KVOptions, KVShell
from c2cq.services.executor.model import Engine
from c2cq.services.executor.model.engine import StepStats as EngineStats
from c2cq.services.executor.pinned import CudaDriver, Driver, PinnedFile
from c2cq.services.executor.cuda_rows import Residency
from c2cq.services.executor.residency import EMBED, copied_whole, plan_memory
from c2cq.services.executor.tokenizer_cache import TokenizerCache

DEFAULT_CHUNK_BYTES = 64 << 20  # per residency copy: ~1 ms of an H100's PCIe link, ~0.15 ms of NVLink-C2C
PROBE_BYTES = 128 << 20


def torch_device(device: str) -> torch.device:
    """The torch device of an executor's ``--device``: ``cuda[:N]`` as given, anything else (a GPU or MIG
    UUID that CUDA_VISIBLE_DEVICES already selected) the first visible device."""
    if re.fullmatch(r"cuda(:\d+)?", device):
        d = torch.device(device)
        return d if d.index is not None else torch.device("cuda", 0)
    return torch.device("cuda", 0)


def measure_link_bandwidth(device: torch.device, nbytes: int = PROBE_BYTES, repeats: int = 5) -> float:
    """Bytes/s of a pinned host → device copy, timed with CUDA events (best of ``repeats`` after a warm-up)."""
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).fill_(1)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    stream = torch.cuda.current_stream(device)
    best = float("inf")
    for i in range(repeats + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        dst.copy_(src, non_blocking=True)
        end.record(stream)
        end.synchronize()
        if i:
            best = min(best, start.elapsed_time(end) / 1e3)
    del src, dst
    if hasattr(torch._C, "_host_emptyCache"):
        torch._C._host_emptyCache()  # give the probe's pinned buffer back
    return nbytes / best


@dataclass(frozen=True, slots=True)
class SwitchTimings:
    model: str
    pin_s: float  # registering the mapping (0 when it was registered before)
    build_s: float  # engine, HBM copies queued, KV cache
    total_s: float
    registered_now: bool


class CudaBackend(EngineBackend):
    name = "cuda"
    blocking = True

    def __init__(self, device: str = "cuda:0", *, memory_budget_bytes: int | None = None,
                 memory_fraction: float = 0.9, kv_bytes: int | None = None, kv_fraction: float = 0.25,
                 alpha: float = 1.0, switch_alpha: float = 0.0, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 align: int = DEFAULT_ALIGN, max_batch: int = 32, background: bool = True, keep_pinned: int = 16,
                 probe_bytes: int = PROBE_BYTES, driver: Driver | None = None, kv: KVOptions = KVOptions()) -> None:
        """``memory_budget_bytes`` (default ``memory_fraction`` of the device's free memory now) is what one
        model may hold in HBM: whole-copied tensors, KV cache (``kv_bytes``, else ``kv_fraction`` of what
        is left), resident weight rows. ``alpha`` is the plan until the scheduler sends one; a switch
        starts at ``switch_alpha`` (copied before its first step) and residency rises from there, in
        a thread (``background``) or one chunk before each step. ``keep_pinned`` mappings stay registered."""
        if not torch.cuda.is_available():
            raise ConfigError(
                f"the cuda backend needs a CUDA device, and torch sees none (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda or 'none'}): use --backend cpu on this host")
        for what, v in (("memory_fraction", memory_fraction), ("kv_fraction", kv_fraction), ("alpha", alpha),
                        ("switch_alpha", switch_alpha)):
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{what} must be in [0, 1], got {v}")
        if chunk_bytes <= 0 or align <= 0 or keep_pinned < 1:
            raise ConfigError("chunk_bytes, align and keep_pinned must be positive")
        self.device = device
        self.torch_device = torch_device(device)
        torch.cuda.set_device(self.torch_device)
        free, _ = torch.cuda.mem_get_info(self.torch_device)
        self.memory_budget_bytes = int(memory_budget_bytes if memory_budget_bytes is not None
                                       else free * memory_fraction)
        self.link_bandwidth_bps = measure_link_bandwidth(self.torch_device, probe_bytes)
        self.max_batch = max_batch
        self.log = log.get(backend="cuda", device=device)
        self._driver = driver or CudaDriver(self.torch_device.index)
        self._kv_bytes, self._kv_fraction = kv_bytes, kv_fraction
        self._switch_alpha, self._alpha_plan = switch_alpha, alpha
        self._chunk_bytes, self._align, self._keep_pinned = chunk_bytes, align, keep_pinned
        self.model: ModelInfo | None = None
        self.engine: Engine | None = None
        self._res: Residency | None = None
        self._pinned: OrderedDict[str, PinnedFile] = OrderedDict()  # by path, least recently used first
        self.requests = EngineRequests()
        self.kv = KVShell(kv)
        self.tokenizers = TokenizerCache()
        self.last_switch: SwitchTimings | None = None
        self.residency_error: str | None = None
        # A step, a switch and a residency commit each hold the lock: splits change only between steps.
        self._lock = threading.RLock()
        self._cv = threading.Condition()  # residency work to do, or residency settled
        self._closed = False
        self._copy_stream = torch.cuda.Stream(self.torch_device)
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._residency_loop, name="c2cq-residency", daemon=True)
            self._thread.start()

    # -- pinned mappings ---------------------------------------------------------------------------
    def _pin_path(self, path: str) -> tuple[PinnedFile, bool]:
        pf = self._pinned.get(path)
        if pf is not None:
            try:
                same = pf.inode == os.stat(path).st_ino
            except OSError:
                same = False
            if same:
                self._pinned.move_to_end(path)
                return pf, False
            self._unpin_path(path)  # republished under the same name: register the new file
        pf = PinnedFile(path, self._driver)
        self._pinned[path] = pf
        self.log.info("pinned", path=path, bytes=pf.size, register_s=round(pf.register_s, 4), read_only=pf.read_only)
        served = self.model.shm.path if self.model is not None and self.model.shm is not None else None
        for old in [p for p in self._pinned if p not in (path, served)][: max(0, len(self._pinned) - self._keep_pinned)]:
            self._unpin_path(old)  # least recently used first; never the one served or just pinned
        return pf, True

    def _unpin_path(self, path: str) -> None:
        pf = self._pinned.pop(path, None)
        if pf is not None:
            torch.cuda.synchronize(self.torch_device)  # no kernel or copy still reads the mapping
            pf.close()

    def pin(self, info: ModelInfo) -> float:
        """Register ``info``'s mapping ahead of a switch (a preload); seconds it took (0 if it was)."""
        if info.shm is None:
            raise RequestError(ErrorCode.BAD_MODEL, f"{info.name!r} has no weights in shared memory")
        with self._lock:
            pf, now = self._pin_path(info.shm.path)
            return pf.register_s if now else 0.0

    def unpin(self, info: ModelInfo) -> None:
        """Unregister ``info``'s mapping unless it is being served."""
        with self._lock:
            if info.shm is not None and not (self.model is not None and self.model.name == info.name):
                self._unpin_path(info.shm.path)

    # -- residency ---------------------------------------------------------------------------------
    def switch(self, info: ModelInfo) -> None:
        if info.shm is None:
            raise RequestError(ErrorCode.BAD_MODEL, f"{info.name!r} has no weights in shared memory "
                               "(a simulated model? use --backend sim)")
        t0 = time.perf_counter()
        torch.cuda.set_device(self.torch_device)  # this thread's device (Triton launches on it)
        with self._lock:
            self._release()
            pf, registered_now = self._pin_path(info.shm.path)
            t1 = time.perf_counter()
            host = pf.tensors()
            tensors, fixed = {}, 0
            for name, t in host.items():
                if copied_whole(name, tuple(t.shape)):  # queued on the compute stream; pinned: async DMA
                    tensors[name] = t.to(self.torch_device, non_blocking=True)
                    fixed += t.numel() * t.element_size()
                else:
                    tensors[name] = t
            if EMBED not in host:
                raise RequestError(ErrorCode.BAD_MODEL, f"{info.name!r} has no {EMBED}")
            block_bytes = BLOCK_SIZE * kv_bytes_per_token(pf.config, host[EMBED].element_size())
            try:
                kv_bytes = self.kv.opts.device_blocks * block_bytes or self._kv_bytes
                mem = plan_memory(self.memory_budget_bytes, fixed, block_bytes, kv_fraction=self._kv_fraction,
                                  kv_bytes=kv_bytes)
            except SplitError as e:
                raise RequestError(ErrorCode.BAD_MODEL, f"{info.name!r} does not fit this slice: {e}") from e
            res = Residency(self.torch_device, mem, self._align)
            engine = Engine(pf.config, tensors, None, kv_blocks=mem.kv_blocks, block_size=BLOCK_SIZE,
                            make_linear=res.make_linear, host_kv_blocks=self.kv.opts.host_blocks)
            engine.tokenizer = self.tokenizers.get(pf.tokenizer_json)
            res.bind(engine)
            res.plan(min(self._switch_alpha, self._alpha_plan))
            res.fill_now()
            res.plan(self._alpha_plan)
            self.engine, self.model, self._res = engine, info, res
            t2 = time.perf_counter()
            self.last_switch = SwitchTimings(info.name, t1 - t0 if registered_now else 0.0, t2 - t1, t2 - t0,
                                             registered_now)
        self._kick()

    def _release(self) -> None:
        with self._lock:
            self.engine, self.model, self._res = None, None, None
            self.requests.clear()

    def alpha(self) -> float:
        res = self._res
        return res.alpha if res is not None else 0.0

    def set_alpha(self, alpha: float) -> None:
        self._alpha_plan = min(max(alpha, 0.0), 1.0)
        self._kick()

    def _kick(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _replan(self, res: Residency) -> None:
        """Apply a changed plan (under the lock): new targets, and shrink at once what they lower."""
        if res.alpha_planned != self._alpha_plan:
            res.plan(self._alpha_plan)
        res.shrink()

    def advance_residency(self) -> bool:
        """One chunk of residency, synchronously: replan, copy, swap. False when nothing is left to do."""
        with self._lock:
            res = self._res
            if res is None:
                return False
            self._replan(res)
            inflight = res.issue(self._chunk_bytes, self._copy_stream)
            if inflight is None:
                return res.pending
            inflight.event.synchronize()
            res.commit(inflight)
            return True

    def _residency_loop(self) -> None:
        torch.cuda.set_device(self.torch_device)
        while True:
            with self._cv:
                while not self._closed and not self._needs_residency():
                    self._cv.notify_all()  # settled: wake wait_resident
                    self._cv.wait()
                if self._closed:
                    return
            res = None
            try:
                with self._lock:
                    res = self._res
                    if res is None:
                        continue
                    self._replan(res)
                    inflight = res.issue(self._chunk_bytes, self._copy_stream)
                if inflight is None:
                    continue
                inflight.event.synchronize()  # outside the lock: steps run while the rows copy
                with self._lock:
                    if self._res is res:  # not switched away meanwhile
                        res.commit(inflight)
            except Exception as e:  # residency stops at the α it reached; serving goes on
                self.residency_error = f"{type(e).__name__}: {e}"
                self.log.error("residency_failed", error=self.residency_error)
                with self._lock:
                    if res is not None and self._res is res:
                        res.stalled_at = self._alpha_plan

    def _needs_residency(self) -> bool:
        res, plan = self._res, self._alpha_plan
        return res is not None and res.stalled_at != plan and (res.alpha_planned != plan or res.pending)

    def wait_resident(self, timeout: float) -> bool:
        """Wait until residency has reached the plan (background mode); False on timeout."""
        if self._thread is None:
            raise ConfigError("wait_resident needs the background residency thread (background=True)")
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._needs_residency():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.notify_all()
                self._cv.wait(left)
        return True

    # -- the step ----------------------------------------------------------------------------------
    def step(self, chunk_tokens: int) -> StepResult:
        torch.cuda.set_device(self.torch_device)  # this thread's device (Triton launches on it)
        if self._thread is None:
            self.advance_residency()  # foreground mode: one chunk between steps
        with self._lock:
            return self._step(chunk_tokens)

    def _count_bytes(self, res: StepResult, stats: EngineStats) -> None:
        res.bytes_host = stats.weight_bytes_host
        res.bytes_hbm = stats.weight_bytes - stats.weight_bytes_host

    # -- shutdown ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop residency, drop the engine, unregister every mapping."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            self._release()
            for path in list(self._pinned):
                self._unpin_path(path)
