"""The cpu backend: real models from the catalog's shared-memory files, on host cores.

Weights are zero-copy views of the published file (one read-only MAP_SHARED mapping), so a switch
adds no private memory: every executor on the host shares the same page-cache pages. On a CPU
both parts of every split weight are host memory, so α (the device-resident share) is 0 and every
byte a step reads is counted as host bytes. The slice's analog of a resident share, private packed
copies of the served model's weights that its GEMMs read faster, is made in the background of serving
(packing.py); ``packed_share`` says how far, and α as the scheduler sees it stays 0 (its cost model
would take the share for HBM).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from c2cq.errors import ConfigError, ModelError, RequestError
from c2cq.kernels.linear import cpu_has_native
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import ErrorCode
from c2cq.services.catalog.layout import ModelFile, read_layout
from c2cq.services.catalog.shm import map_shared, prefetch
from c2cq.services.executor.backend import StepResult
from c2cq.services.executor.engine_requests import EngineBackend, EngineRequests
from c2cq.services.executor.kv_shell import KVOptions, KVShell
from c2cq.services.executor.model import Engine
from c2cq.services.executor.model.config import parse_config
from c2cq.services.executor.model.model import Model
from c2cq.services.executor.model.engine import StepStats as EngineStats
from c2cq.services.executor.packing import DEFAULT_PACKED_BYTES, PACK_SHARE, Packer
from c2cq.services.executor.tokenizer_cache import TokenizerCache
from c2cq.supervisor.discover import CORES_ENV

DEFAULT_KV_BYTES = 512 * 2**20
BLOCK_SIZE = 16


def kv_bytes_per_token(config: dict, itemsize: int) -> int:
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * itemsize


def measure_read_bandwidth(nbytes: int = 64 * 2**20, repeats: int = 3) -> float:
    """Bytes/s of a large host-memory copy (what a CPU slice streams weights at)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def slice_cores() -> tuple[int, ...]:
    """The cores the supervisor gave this slice ($C2CQ_CPU_CORES, "0,1"); () when none were."""
    spec = os.environ.get(CORES_ENV, "").strip()
    try:
        return tuple(int(c) for c in spec.split(",")) if spec else ()
    except ValueError:
        raise ConfigError(f"${CORES_ENV}={spec!r}: expected core ids separated by commas") from None


def format_cores(cores: tuple[int, ...]) -> str:
    """"0-3", "5", "0-1,4": runs of consecutive ids."""
    runs: list[list[int]] = []
    for c in sorted(cores):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


# Models a slice keeps mapped and built after it switched away (their page tables stay filled, their
# fused views made): switching back costs an Engine and a KV pool, not a mapping, its page faults
# (60-135 ms per GB on tmpfs here) and the layers' set-up. They cost no memory but page tables
# (~2 MB per GB mapped): the pages are the catalog's shared ones. Six: the demo catalog and the switch
# benchmark's five models all held at once.
HELD_MODELS = 6
# At slice start the catalog's first models are preloaded (mapped, built, page tables filled on another core)
# while they fit in HELD_MODELS and this many mapped bytes (~8 MB of page tables): a first switch to one of
# them costs what a switch back does.
PRELOAD_BYTES = 4 << 30


def _shm_path(info: ModelInfo) -> str:
    if info.shm is None:
        raise RequestError(ErrorCode.BAD_MODEL, f"{info.name!r} has no weights in shared memory "
                           "(a simulated model? use --backend sim)")
    return info.shm.path


def file_key(path: str) -> tuple:
    """A published file's identity: a republished model (a new file renamed over it) is another key."""
    st = os.stat(path)
    return path, st.st_ino, st.st_size, st.st_mtime_ns


def _still_published(key: tuple) -> bool:
    try:
        return file_key(key[0]) == key
    except OSError:
        return False


@dataclass(eq=False)
class Held:
    """A mapped model file, the layers built on it, and the prefetch filling its page tables."""

    file: ModelFile
    model: Model
    stop: threading.Event
    fetching: threading.Thread

    @classmethod
    def open(cls, path: str) -> "Held":
        """Map the file, fill its page tables on another core, build its layers (views, no copy)."""
        mf = map_shared(path)
        stop = threading.Event()
        fetching = prefetch(mf, stop)
        return cls(mf, Model(parse_config(mf.config), mf.tensors()), stop, fetching)

    def close(self) -> None:
        """Unmap once no tensor view is left (and the prefetch has stopped). Unmapping a model's pages
        takes ~40 ms per GB it touched and munmap releases the GIL: done aside, no step waits for it."""
        self.stop.set()
        mf, fetching = self.file, self.fetching
        del self.model, self.file  # the layers' views of the mapping go with the last reference

        def unmap() -> None:
            fetching.join()
            mf.__exit__(None, None, None)

        threading.Thread(target=unmap, name="c2cq-unmap", daemon=True).start()


class CpuBackend(EngineBackend):
    name = "cpu"
    blocking = True

    def __init__(self, device: str = "cpu", threads: int = 0, kv_bytes: int = DEFAULT_KV_BYTES,
                 max_batch: int = 32, cores: tuple[int, ...] | None = None, kv: KVOptions = KVOptions(),
                 packed_bytes: int = DEFAULT_PACKED_BYTES) -> None:
        cores = slice_cores() if cores is None else cores
        if cores:
            os.sched_setaffinity(0, cores)  # this slice's share: no core is another CPU slice's
        threads = threads or len(cores) or 1
        torch.set_num_threads(threads)
        self.threads = threads
        self.device = f"{device} (cores {format_cores(cores)}, {threads} threads)" if cores else device
        self.memory_budget_bytes = kv_bytes
        self.link_bandwidth_bps = measure_read_bandwidth()
        if cpu_has_native(torch.bfloat16):  # oneDNN's first bf16 GEMM sets it up (~50 ms): not in a first request
            torch.nn.functional.linear(torch.ones(1, 64, dtype=torch.bfloat16), torch.ones(64, 64, dtype=torch.bfloat16))
        self.max_batch = max_batch
        self.model: ModelInfo | None = None
        self.engine: Engine | None = None
        self._current: tuple[tuple, Held] | None = None
        self._held: OrderedDict[tuple, Held] = OrderedDict()  # least recently served first
        self.requests = EngineRequests()
        self.kv = KVShell(kv)
        self._alpha_plan = 0.0
        self.tokenizers = TokenizerCache()
        self.packer = Packer(packed_bytes)
        self._lock = threading.Lock()  # _held and _current: a preload runs beside the step's thread

    # -- residency ---------------------------------------------------------------------------------
    def switch(self, info: ModelInfo) -> None:
        key = file_key(_shm_path(info))
        with self._lock:
            held = self._held.pop(key, None)  # before the current model joins the held ones (which may let one go)
            self._release()
        if held is None:  # not held (nor preloaded): map it and build its layers now
            held = Held.open(info.shm.path)
        mf, model = held.file, held.model
        self.tokenizers.prefetch(mf.tokenizer_json)  # parsed (if not yet) beside the prefill; first use waits
        blocks = self.kv.opts.device_blocks or max(
            1, self.memory_budget_bytes // (BLOCK_SIZE * kv_bytes_per_token(mf.config, model.dtype.itemsize)))
        self.engine = Engine(mf.config, {}, None, kv_blocks=blocks, block_size=BLOCK_SIZE, model=model,
                             host_kv_blocks=self.kv.opts.host_blocks)
        self.engine.tokenizer = self.tokenizers.get(mf.tokenizer_json)
        with self._lock:
            raced = self._held.pop(key, None)  # a preload of the same file that finished meanwhile
            self._current, self.model = (key, held), info
        self.packer.serve(held, model, info.name)  # packed from the next decode step on, never before
        if raced is not None and raced is not held:
            self._close(raced)

    def preload(self, info: ModelInfo) -> None:
        """Ahead of a switch (the scheduler's Preload, or a request queued behind another model's): map the
        file, build its layers, start parsing its tokenizer, warm its GEMMs, and hold it, so that the switch costs what a
        switch back to a held model does. Runs beside the step's thread; a model held or served is kept."""
        path = _shm_path(info)
        key = file_key(path)
        with self._lock:
            if key in self._held or (self._current is not None and self._current[0] == key):
                return
        held = Held.open(path)  # outside the lock: a switch or step meanwhile is not held up
        self.tokenizers.prefetch(held.file.tokenizer_json)
        held.model.warm()  # the GEMM primitives a first request would build (MoE experts: moe.py)
        with self._lock:
            if key in self._held or (self._current is not None and self._current[0] == key):
                self._close(held)  # a switch or another preload got there first
                return
            self._held[key] = held
            self._held.move_to_end(key, last=False)  # let go first: a guess must not push out what was served
            self._trim()

    def evict(self, info: ModelInfo) -> None:
        """Let a held model go (its mapping, page tables, layers); the one served stays."""
        if info.shm is None:
            return
        with self._lock:
            held = next((self._held.pop(k) for k in list(self._held) if k[0] == info.shm.path), None)
        if held is not None:
            self._close(held)

    def prepare(self, infos: list[ModelInfo], limit: int = 32) -> tuple[int, int]:
        """At slice start, for the catalog's models: preload those that fit in ``HELD_MODELS`` and
        ``PRELOAD_BYTES`` (catalog order), and parse the tokenizers of the others (up to the cache's size,
        reading at most ``limit`` model files' indexes), all beside whatever comes meanwhile. (models preloaded,
        distinct tokenizers started)."""
        real = [i for i in infos if i.shm is not None]
        preloaded, mapped = 0, 0
        started: list[bytes] = []
        for info in real[:limit]:
            if preloaded < HELD_MODELS and mapped + info.shm.size <= PRELOAD_BYTES:
                try:
                    self.preload(info)
                except (ModelError, RequestError, OSError):
                    continue  # removed since the list, or not a model file: its switch will say so
                preloaded, mapped = preloaded + 1, mapped + info.shm.size
                continue
            if len(started) >= self.tokenizers.size:
                continue
            try:
                mf = read_layout(info.shm.path)
            except ModelError:
                continue
            try:
                tok = mf.tokenizer_json
            finally:
                mf.close()
            if tok is not None and tok not in started:
                started.append(tok)
                self.tokenizers.prefetch(tok)
        return preloaded, len(started)

    def _release(self) -> None:
        """Stop serving the current model; it stays held (mapped, built) among the last ``HELD_MODELS``.
        The caller holds ``_lock``."""
        self.engine, self.model = None, None
        self.requests.clear()
        if self._current is not None:
            key, held = self._current
            self._held[key] = held
            self._current = None
        self._trim()

    def _trim(self) -> None:
        for key in [k for k in self._held if not _still_published(k)]:  # removed or republished: its memory
            self._close(self._held.pop(key))                              # goes once nothing maps it
        while len(self._held) > HELD_MODELS:
            self._close(self._held.popitem(last=False)[1])

    def _close(self, held: Held) -> None:
        self.packer.drop(held)
        held.close()

    def alpha(self) -> float:
        return 0.0

    def set_alpha(self, alpha: float) -> None:
        self._alpha_plan = min(max(alpha, 0.0), 1.0)  # kept for status; there is no device memory here

    # -- the step ----------------------------------------------------------------------------------
    def step(self, chunk_tokens: int) -> StepResult:
        res = self._step(chunk_tokens)
        if res.decode_tokens and not res.prefill_tokens:  # a first token never waits for packing
            self.packer.work(PACK_SHARE * res.busy_s)
        return res

    def idle(self) -> bool:
        """Nothing to run: pack one part of the served model's weights; False when none is left."""
        return self.packer.work(0.0)

    def packed_share(self) -> float:
        """The served model's packed share (a CPU slice's α, as packing.py makes it)."""
        return self.packer.share()

    def _count_bytes(self, res: StepResult, stats: EngineStats) -> None:
        res.bytes_host = stats.weight_bytes  # every weight is read from host memory here
