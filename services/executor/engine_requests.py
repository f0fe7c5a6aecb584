"""What the cpu and cuda backends share around an Engine: request bookkeeping and
the step with its restart after a failed forward (``EngineBackend``).

add/abort arrive on the event loop while a step runs in a worker thread: they are queued here and
applied by the next step, in the step's thread, in arrival order. Each request's next output index
(which starts after any resumed tokens) and prompt length are kept so the step's outputs carry them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from c2cq import log
from c2cq.errors import RequestError
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.schemas.executor import AssignRequest
from c2cq.services.executor.backend import Output, StepResult
from c2cq.services.executor.model import Engine, SamplingParams, StepOutput
from c2cq.services.executor.model.engine import StepStats as EngineStats
from c2cq.services.executor.kv_shell import KVShell


class EngineRequests:
    def __init__(self) -> None:
        self._inbox: deque[tuple[str, object]] = deque()
        self._produced: dict[str, int] = {}  # request id → index of its next output token
        self._prompt_lens: dict[str, int] = {}
        self._ended: list[Output] = []  # requests ended at add() (refused, or nothing left), for the next step

    # -- on the event loop -------------------------------------------------------------------------
    def add(self, req: AssignRequest) -> None:
        self._inbox.append(("add", req))

    def abort(self, request_id: str) -> None:
        self._inbox.append(("abort", request_id))

    def has_work(self, engine: Engine | None) -> bool:
        return bool(self._inbox or self._ended) or (engine is not None and engine.num_requests > 0)

    # -- in the step's thread ----------------------------------------------------------------------
    def apply(self, engine: Engine | None, model: ModelInfo | None,
              on_added: Callable[[AssignRequest], None] | None = None) -> list[Output]:
        """Apply the queued adds and aborts (``on_added``: told of each request the engine took); return
        the outputs of requests that ended already."""
        while self._inbox:
            op, arg = self._inbox.popleft()
            if op == "add":
                if self._add(engine, model, arg) and on_added is not None:
                    on_added(arg)
            else:
                self._abort(engine, arg)
        ended, self._ended = self._ended, []
        return ended

    def _add(self, engine: Engine | None, model: ModelInfo | None, req: AssignRequest) -> bool:
        try:
            if engine is None or model is None or model.name != req.model:
                raise RequestError(ErrorCode.INTERNAL, f"the slice does not serve {req.model!r} now")
            resumed = len(req.resume_token_ids)
            if resumed >= req.max_tokens:  # resumed after its last token was delivered: only the end is due
                self._ended.append(Output(req.request_id, resumed, (), "", FinishReason.LENGTH,
                                          prompt_tokens=len(req.prompt_token_ids)))
                return False
            params = SamplingParams.from_wire(req.sampling, req.max_tokens - resumed)
            prompt = self._prompt_ids(engine, req)
            engine.add(req.request_id, prompt + list(req.resume_token_ids), params)
            self._produced[req.request_id] = resumed
            self._prompt_lens[req.request_id] = len(prompt)
            return True
        except RequestError as e:
            self._ended.append(Output(req.request_id, len(req.resume_token_ids), (), "", FinishReason.ERROR,
                                      error=e.message, code=e.code))
            return False

    @staticmethod
    def _prompt_ids(engine: Engine, req: AssignRequest) -> list[int]:
        if req.prompt_token_ids:
            return list(req.prompt_token_ids)
        if engine.tokenizer is None:
            raise RequestError(ErrorCode.BAD_MODEL, f"{req.model!r} has no tokenizer: send prompt token ids")
        return engine.tokenizer.encode(req.prompt or "").ids

    def _abort(self, engine: Engine | None, request_id: str) -> None:
        if engine is not None:
            engine.abort(request_id)
        self._produced.pop(request_id, None)
        self._prompt_lens.pop(request_id, None)

    def outputs(self, outs: list[StepOutput]) -> list[Output]:
        """The engine's step outputs as the executor's, each with its request's output index."""
        res = []
        for o in outs:
            idx = self._produced.get(o.request_id, 0)
            self._produced[o.request_id] = idx + len(o.new_token_ids)
            finish = FinishReason(o.finish_reason) if o.finished else None
            res.append(Output(o.request_id, idx, o.new_token_ids, o.text_delta, finish,
                              prompt_tokens=self._prompt_lens.get(o.request_id, 0)))
            if o.finished:
                self._produced.pop(o.request_id, None)
                self._prompt_lens.pop(o.request_id, None)
        return res

    def fail_all(self, message: str) -> list[Output]:
        """An error output for every running request; they are forgotten."""
        outs = [Output(rid, idx, (), "", FinishReason.ERROR, error=message, code=ErrorCode.INTERNAL)
                for rid, idx in self._produced.items()]
        self.clear()
        return outs

    def clear(self) -> None:
        """Forget the running requests (the engine holding them is gone); queued adds/aborts stay."""
        self._produced.clear()
        self._prompt_lens.clear()


class EngineBackend:
    """What a backend running an Engine shares (it has ``requests``, ``engine``, ``model``, ``_release``,
    ``switch``): adds and aborts queued for the step's thread, and the step itself — queued changes
    applied, one engine step, its outputs and stats. A forward that raises ends every request with its
    message, then the same model gets a fresh engine and KV cache for the next requests. The backend
    says which of the weight bytes read came over which path (``_count_bytes``) and wraps ``_step``
    in whatever its device needs."""

    def add(self, req: AssignRequest) -> None:
        self.requests.add(req)

    def abort(self, request_id: str) -> None:
        self.requests.abort(request_id)

    def has_work(self) -> bool:
        return self.requests.has_work(self.engine)

    def _count_bytes(self, res: StepResult, stats: EngineStats) -> None:
        raise NotImplementedError

    def _step(self, chunk_tokens: int) -> StepResult:
        kv, engine = self.kv, self.engine
        kv.bind(engine)
        now = time.monotonic()
        res = StepResult(outputs=self.requests.apply(engine, self.model, lambda req: kv.added(req, now)))
        if engine is None or engine.num_requests == 0:
            res.kv_blocks = None if engine is None else engine.kv_blocks
            return res
        t0 = time.perf_counter()
        try:
            kv.before_step(engine, time.monotonic(), max(1, chunk_tokens))
            outs = engine.step(max(1, chunk_tokens))  # on a GPU it ends in sampling, which waits for it
        except Exception as e:  # a failed forward ends its requests with an error, never silence
            res.outputs.extend(self._fail_all(f"{type(e).__name__}: {e}"))
            return res
        res.busy_s = time.perf_counter() - t0
        stats = engine.last_stats
        kv.after_step(outs, time.monotonic(), res.busy_s, stats.prefill_tokens, stats.decode_tokens)
        res.prefill_tokens, res.decode_tokens = stats.prefill_tokens, stats.decode_tokens
        res.kv_blocks, res.kv_rotations, res.kv_bytes_rotated = (engine.kv_blocks, stats.kv_rotations,
                                                                 stats.kv_bytes_rotated)
        self._count_bytes(res, stats)
        res.outputs.extend(self.requests.outputs(outs))
        return res

    def _fail_all(self, message: str) -> list[Output]:
        outs = self.requests.fail_all(message)
        model = self.model
        self._release()
        if model is not None:
            try:
                self.switch(model)
            except Exception as e:  # the next switch tries again; requests meanwhile fail in add
                log.get().error("reswitch_failed", model=model.name, error=str(e))
        return outs
