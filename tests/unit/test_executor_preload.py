"""The executor acts on the scheduler's Preload and Evict (backends that can: cpu), preloads a model whose
requests wait behind another model's, and hands the catalog's models to the backend when it starts."""

from __future__ import annotations

import asyncio
import threading

from c2cq.rundir import RunDir
from c2cq.schemas import executor as m
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.client import SamplingParams
from c2cq.schemas.enums import ModelKind
from c2cq.schemas.refs import ShmRef
from c2cq.services.executor import main as exmain
from c2cq.services.executor.sim import SimBackend, SliceProfile


def _info(name: str) -> ModelInfo:
    return ModelInfo(name=name, kind=ModelKind.REAL, architecture="LlamaForCausalLM", parameters=1, bytes=1,
                     dtype="fp32", vocab_size=8, num_layers=1, hidden_size=8, max_context=64,
                     shm=ShmRef(path=f"/dev/shm/none/{name}.c2cqm", size=1))


class Recording(SimBackend):
    """A sim backend that records what it is asked to make ready (from the worker threads)."""

    def __init__(self) -> None:
        super().__init__(SliceProfile(), device="sim:0")
        self.calls: list[tuple[str, object]] = []
        self.changed = threading.Condition()

    def _record(self, what: str, arg) -> None:
        with self.changed:
            self.calls.append((what, arg))
            self.changed.notify_all()

    def preload(self, info: ModelInfo) -> None:
        self._record("preload", info.name)

    def evict(self, info: ModelInfo) -> None:
        self._record("evict", info.name)

    def prepare(self, infos: list[ModelInfo]) -> tuple[int, int]:
        self._record("prepare", [i.name for i in infos])
        return len(infos), 0


async def _until(backend: Recording, n: int) -> list:
    def wait() -> list:
        with backend.changed:
            assert backend.changed.wait_for(lambda: len(backend.calls) >= n, timeout=10)
            return list(backend.calls)
    return await asyncio.to_thread(wait)


def _assign(rid: str, model: str) -> m.AssignRequest:
    return m.AssignRequest(request_id=rid, model=model, prompt_token_ids=(1, 2), max_tokens=2,
                           sampling=SamplingParams())


def test_preload_evict_and_queued_requests_reach_the_backend(tmp_path):
    backend = Recording()

    async def go() -> list:
        ex = exmain.Executor(RunDir.from_env(str(tmp_path)), "exec-0", backend)
        ex.emit = lambda cls, **f: None
        infos = {n: _info(n) for n in ("a", "b", "c")}

        async def describe(name: str):
            ex.models[name] = infos[name]
            return infos[name]

        async def list_models():
            return tuple(infos.values())

        ex.describe, ex.list_models = describe, list_models
        try:
            ex.on_command(m.PreloadModel(model="a"))
            await _until(backend, 1)
            ex.on_command(m.EvictModel(model="a"))
            await _until(backend, 2)
            ex.queue.model = "b"  # serving b: a request for c waits, and c is preloaded meanwhile
            ex.on_command(_assign("r1", "b"))
            ex.on_command(_assign("r2", "c"))
            await _until(backend, 3)
            ex.background(ex.prepare())
            return await _until(backend, 4)
        finally:
            ex.close()

    assert asyncio.run(go()) == [("preload", "a"), ("evict", "a"), ("preload", "c"), ("prepare", ["a", "b", "c"])]
