"""The cuda backend's control flow on a CPU, with CUDA faked (streams and events no-ops, a fake driver):
it serves what the cpu backend serves at every α, its residency rises between steps and shrinks, the
background copies and registrations, and a failed forward ends its requests while the next are served.

The GPU paths themselves (streams, cuMemHostRegister, HybridGEMM) are tested in tests/gpu.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    # as tests/kernels/conftest.py does: triton must see TRITON_INTERPRET at its first import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from backend_drive import generate  # noqa: E402
from c2cq.services.catalog.synth import write_random  # noqa: E402

from .conftest import TINY, FakeDriver  # noqa: E402


class _FakeEvent:
    def __init__(self, enable_timing: bool = False) -> None:
        pass

    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, other) -> float:
        return 1.0


class _FakeStream:
    def __init__(self, device=None) -> None:
        pass

    def wait_stream(self, other) -> None:
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    """CudaBackend on CPU tensors: streams and events are no-ops, the driver is FakeDriver.

    What runs for real: switch, the inbox, steps, stats, residency planning, issue/commit/shrink, the
    background thread and its locking, the registration LRU. What does not: any GPU memory or kernel.
    """
    import contextlib

    from c2cq.services.executor import cuda

    for name, value in (("is_available", lambda: True), ("set_device", lambda d: None),
                        ("mem_get_info", lambda d=None: (1 << 30, 1 << 31)), ("Event", _FakeEvent),
                        ("Stream", _FakeStream), ("current_stream", lambda d=None: _FakeStream()),
                        ("stream", lambda s: contextlib.nullcontext()), ("synchronize", lambda d=None: None)):
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: None)
    monkeypatch.setattr(cuda, "torch_device", lambda d: torch.device("cpu"))
    monkeypatch.setattr(cuda, "measure_link_bandwidth", lambda d, n=0: 1e10)
    made = []

    def make(**kw):
        b = cuda.CudaBackend("cuda:0", align=16, kv_bytes=1 << 20, driver=FakeDriver(), **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three tiny models published in a shared-memory folder: name → ModelInfo."""
    import shutil

    import msgspec

    from c2cq.schemas.refs import ShmRef
    from c2cq.services.catalog.describe import describe_file
    from c2cq.services.catalog.shm import publish

    files = tmp_path_factory.mktemp("files")
    shm = Path("/dev/shm") / f"c2cq-unit-cuda-{os.getpid()}"
    shm.mkdir(exist_ok=True)
    infos = {}
    for name, tie, seed in (("a", False, 1), ("b", True, 2), ("c", False, 3)):
        write_random(files / f"{name}.c2cqm", dict(TINY, tie_word_embeddings=tie), {}, dtype="fp32", seed=seed,
                     progress=False)
        path = publish(files / f"{name}.c2cqm", shm, name)
        infos[name] = msgspec.structs.replace(describe_file(name, path), shm=ShmRef(path=str(path),
                                                                                    size=path.stat().st_size))
    yield infos
    shutil.rmtree(shm, ignore_errors=True)


PROMPTS = [[1, 2, 3, 4, 5], list(range(10, 80)), [7] * 9]


def _generate(b, info, *, switch: bool = True, chunk: int = 32, new: int = 12, each_step=None):
    return generate(b, info, PROMPTS, new, chunk=chunk, switch=switch, each_step=each_step)


@pytest.fixture(scope="module")
def reference(models):
    from c2cq.services.executor.cpu import CpuBackend

    cpu = CpuBackend(threads=2)
    return {name: _generate(cpu, info)[0] for name, info in models.items()}


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_fake_cuda_backend_serves_like_the_cpu_backend(fake_cuda, models, reference, alpha):
    b = fake_cuda(alpha=alpha, switch_alpha=alpha, background=False)
    for name, info in models.items():
        tokens, steps = _generate(b, info)
        assert tokens == reference[name], (name, alpha)
        assert b.alpha() == pytest.approx(alpha, abs=0.1)
        assert all((s.bytes_host == 0) == (alpha == 1.0) for s in steps)
        assert all(s.bytes_hbm > 0 and s.decode_tokens + s.prefill_tokens > 0 for s in steps)


def test_fake_cuda_residency_rises_between_steps_and_shrinks(fake_cuda, models, reference):
    b = fake_cuda(alpha=1.0, switch_alpha=0.0, background=False, chunk_bytes=8 << 10)
    b.switch(models["a"])
    seen = [b.alpha()]
    tokens, _ = _generate(b, models["a"], switch=False, chunk=8, new=40, each_step=lambda be: seen.append(be.alpha()))
    assert [t[:12] for t in tokens] == reference["a"]  # greedy: the first 12 of 40 are the reference's
    assert seen[0] == 0.0 and seen == sorted(seen) and seen[-1] == 1.0 and len(set(seen)) > 10
    b.set_alpha(0.25)
    tokens, steps = _generate(b, models["a"], switch=False)
    assert tokens == reference["a"] and 0.15 < b.alpha() <= 0.25
    assert all(w.buf is None or w.buf.shape[0] == w.rows for w in b._res.weights.values())  # HBM given back


def test_fake_cuda_background_residency_and_registrations(fake_cuda, models, reference):
    b = fake_cuda(alpha=1.0, switch_alpha=0.0, background=True, chunk_bytes=4 << 10, keep_pinned=2)
    b.switch(models["a"])
    tokens, _ = _generate(b, models["a"], switch=False)
    assert tokens == reference["a"]
    assert b.wait_resident(30) and b.alpha() == 1.0 and b.residency_error is None and b._res.commits > 5
    tokens, steps = _generate(b, models["a"], switch=False)
    assert tokens == reference["a"] and all(s.bytes_host == 0 for s in steps)
    b.set_alpha(0.0)
    assert b.wait_resident(30) and b.alpha() == 0.0
    fresh = []
    for name in ("b", "c", "a", "c"):
        b.set_alpha(1.0)
        tokens, _ = _generate(b, models[name])  # residency runs while it serves
        assert tokens == reference[name]
        fresh.append(b.last_switch.registered_now)
        assert len(b._pinned) <= 2 and models[name].shm.path in b._pinned
    assert fresh == [True, True, True, False]  # a was evicted by c (two kept), c was kept
    driver = b._driver
    b.close()
    assert driver.registered == {} and not b._thread.is_alive()


@pytest.mark.parametrize("backend", ["cpu", "fake-cuda"])
def test_a_failed_forward_ends_every_request_and_the_next_ones_are_served(fake_cuda, models, reference, backend,
                                                                          monkeypatch):
    """A step whose forward raises ends each request with the error (nothing hangs), and the backend
    switches to the same model again: the next requests get the reference tokens."""
    from c2cq.schemas.client import SamplingParams as WireSampling
    from c2cq.schemas.executor import AssignRequest
    from c2cq.services.executor.cpu import CpuBackend
    from c2cq.services.executor.model import Engine

    b = CpuBackend(threads=2) if backend == "cpu" else fake_cuda(alpha=0.5, switch_alpha=0.5, background=False)
    b.switch(models["a"])
    for i in range(3):
        b.add(AssignRequest(request_id=f"x{i}", model="a", prompt_token_ids=(1, 2, 3), max_tokens=4,
                            sampling=WireSampling(ignore_eos=True)))
    first = b.engine

    def broken(self, chunk_tokens):
        raise RuntimeError("device fell over")

    with monkeypatch.context() as mp:
        mp.setattr(Engine, "step", broken)
        res = b.step(32)
    assert sorted(o.request_id for o in res.outputs) == ["x0", "x1", "x2"]
    assert all(o.error and "device fell over" in o.error for o in res.outputs)
    assert not b.has_work() and b.model.name == "a" and b.engine is not first
    tokens, _ = _generate(b, models["a"], switch=False)
    assert tokens == reference["a"]
    if backend == "cpu":
        b._release()
