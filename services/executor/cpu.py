"""The cpu backend: real models from the catalog's shared-memory files, on host cores.

Weights are zero-copy views of the published file (one read-only MAP_SHARED mapping), so a switch
adds no private memory: every executor on the host shares the same page-cache pages. On a CPU
both parts of every split weight are host memory, so α (the device-resident share) is 0 and every
byte a step reads is counted as host bytes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

import torch
from tokenizers import Tokenizer

from c2cq.errors import RequestError
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.schemas.executor import AssignRequest
from c2cq.services.catalog.shm import map_shared
from c2cq.services.executor.backend import Output, StepResult
from c2cq.services.executor.model import Engine, SamplingParams
from c2cq.services.executor.model.detokenizer import load_tokenizer

DEFAULT_KV_BYTES = 512 * 2**20
BLOCK_SIZE = 16
# Tokenizers kept across switches, keyed by their tokenizer.json bytes (exact; hashing 3.4 MB costs
# ~1 ms, blake2b 6 ms): parsing one is most of a small model's switch (SmolLM2's: ~0.25 s, holding
# the GIL); each entry holds ~6 MB of tokenizer and its 3.4 MB of JSON.
TOKENIZER_CACHE = 8


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


class CpuBackend:
    name = "cpu"
    blocking = True

    def __init__(self, device: str = "cpu", threads: int = 1, kv_bytes: int = DEFAULT_KV_BYTES,
                 max_batch: int = 32) -> None:
        torch.set_num_threads(max(1, threads))
        self.device = device
        self.memory_budget_bytes = kv_bytes
        self.link_bandwidth_bps = measure_read_bandwidth()
        self.max_batch = max_batch
        self.model: ModelInfo | None = None
        self.engine: Engine | None = None
        self._file = None
        self._produced: dict[str, int] = {}  # request id → index of its next output token
        self._prompt_lens: dict[str, int] = {}
        self._failed: list[Output] = []  # requests ended at add() (refused, or nothing left), reported by the next step
        self._alpha_plan = 0.0
        self._tokenizers: OrderedDict[bytes, Tokenizer] = OrderedDict()
        # add/abort arrive on the event loop while a step runs in a worker thread: they are queued
        # here and applied by the next step, in the step's thread, in arrival order
        self._inbox: deque[tuple[str, object]] = deque()

    # -- residency ---------------------------------------------------------------------------------
    def switch(self, info: ModelInfo) -> None:
        if info.shm is None:
            raise RequestError(ErrorCode.BAD_MODEL, f"{info.name!r} has no weights in shared memory "
                               "(a simulated model? use --backend sim)")
        self._release()
        mf = map_shared(info.shm.path)
        itemsize = mf.tensor("model.embed_tokens.weight").element_size()
        blocks = max(1, self.memory_budget_bytes // (BLOCK_SIZE * kv_bytes_per_token(mf.config, itemsize)))
        self.engine = Engine(mf.config, mf.tensors(), None, kv_blocks=blocks, block_size=BLOCK_SIZE)
        self.engine.tokenizer = self._tokenizer(mf.tokenizer_json)
        self._file, self.model = mf, info

    def _tokenizer(self, tokenizer_json: bytes | None) -> Tokenizer | None:
        if tokenizer_json is None:
            return None
        tok = self._tokenizers.pop(tokenizer_json, None)
        self._tokenizers[tokenizer_json] = tok = load_tokenizer(tokenizer_json) if tok is None else tok
        while len(self._tokenizers) > TOKENIZER_CACHE:
            self._tokenizers.popitem(last=False)
        return tok

    def _release(self) -> None:
        self.engine, self.model = None, None
        self._produced.clear()
        self._prompt_lens.clear()
        if self._file is not None:
            # unmaps once no tensor view is left. Unmapping a model's pages from this process takes
            # ~40 ms per GB it touched, and munmap releases the GIL: done aside, the next model's first
            # step does not wait for it
            threading.Thread(target=self._file.__exit__, args=(None, None, None), name="c2cq-unmap",
                             daemon=True).start()
            self._file = None

    # -- requests ----------------------------------------------------------------------------------
    def _prompt_ids(self, req: AssignRequest) -> list[int]:
        if req.prompt_token_ids:
            return list(req.prompt_token_ids)
        if self.engine.tokenizer is None:
            raise RequestError(ErrorCode.BAD_MODEL, f"{req.model!r} has no tokenizer: send prompt token ids")
        return self.engine.tokenizer.encode(req.prompt or "").ids

    def add(self, req: AssignRequest) -> None:
        self._inbox.append(("add", req))

    def abort(self, request_id: str) -> None:
        self._inbox.append(("abort", request_id))

    def _apply_inbox(self) -> None:
        while self._inbox:
            op, arg = self._inbox.popleft()
            if op == "add":
                self._add(arg)
            else:
                self._abort(arg)

    def _add(self, req: AssignRequest) -> None:
        try:
            if self.engine is None or self.model is None or self.model.name != req.model:
                raise RequestError(ErrorCode.INTERNAL, f"the slice does not serve {req.model!r} now")
            resumed = len(req.resume_token_ids)
            if resumed >= req.max_tokens:  # resumed after its last token was delivered: only the end is due
                self._failed.append(Output(req.request_id, resumed, (), "", FinishReason.LENGTH,
                                           prompt_tokens=len(req.prompt_token_ids)))
                return
            params = SamplingParams.from_wire(req.sampling, req.max_tokens - resumed)
            prompt = self._prompt_ids(req)
            self.engine.add(req.request_id, prompt + list(req.resume_token_ids), params)
            self._produced[req.request_id] = resumed
            self._prompt_lens[req.request_id] = len(prompt)
        except RequestError as e:
            self._failed.append(Output(req.request_id, len(req.resume_token_ids), (), "", FinishReason.ERROR,
                                       error=e.message, code=e.code))

    def _abort(self, request_id: str) -> None:
        if self.engine is not None:
            self.engine.abort(request_id)
        self._produced.pop(request_id, None)
        self._prompt_lens.pop(request_id, None)

    def has_work(self) -> bool:
        return bool(self._inbox or self._failed) or (self.engine is not None and self.engine.num_requests > 0)

    def alpha(self) -> float:
        return 0.0

    def set_alpha(self, alpha: float) -> None:
        self._alpha_plan = min(max(alpha, 0.0), 1.0)  # kept for status; there is no device memory here

    # -- the step ----------------------------------------------------------------------------------
    def step(self, chunk_tokens: int) -> StepResult:
        self._apply_inbox()
        res = StepResult(outputs=self._failed)
        self._failed = []
        if self.engine is None or self.engine.num_requests == 0:
            return res
        t0 = time.perf_counter()
        try:
            outs = self.engine.step(max(1, chunk_tokens))
        except Exception as e:  # a failed forward ends its requests with an error, never silence
            res.outputs.extend(self._fail_all(f"{type(e).__name__}: {e}"))
            return res
        res.busy_s = time.perf_counter() - t0
        stats = self.engine.last_stats
        res.prefill_tokens, res.decode_tokens = stats.prefill_tokens, stats.decode_tokens
        res.bytes_host = stats.weight_bytes
        for o in outs:
            idx = self._produced.get(o.request_id, 0)
            self._produced[o.request_id] = idx + len(o.new_token_ids)
            finish = FinishReason(o.finish_reason) if o.finished else None
            res.outputs.append(Output(o.request_id, idx, o.new_token_ids, o.text_delta, finish,
                                      prompt_tokens=self._prompt_lens.get(o.request_id, 0)))
            if o.finished:
                self._produced.pop(o.request_id, None)
                self._prompt_lens.pop(o.request_id, None)
        return res

    def _fail_all(self, message: str) -> list[Output]:
        outs = [Output(rid, idx, (), "", FinishReason.ERROR, error=message, code=ErrorCode.INTERNAL)
                for rid, idx in self._produced.items()]
        model = self.model
        self._release()
        if model is not None:
            try:
                self.switch(model)  # a fresh engine (and KV cache) for the next requests
            except Exception:
                pass  # the next switch tries again; requests meanwhile fail in _add

        return outs
