"""The cuda executor backend on a GPU, against the cpu backend, from the same shared-memory model files.

Oracle: the cpu backend's greedy tokens for the same file and prompts (tiny random Hugging Face models
of tests/hf_models.py, fp32 and bf16, converted and published as the catalog does). Tokens must be
identical; the one accepted difference is a rounding tie: at the first differing position the
reference's top-2 logits lie closer than the dtype's rounding bound (the rule of
tests/system/test_real_models.py) and the cuda backend chose the runner-up.

Covered: α ∈ {0, 0.5, 1} (all rows streamed from pinned host memory / half / the plain HBM GEMM),
HybridGEMM's prefill path (a first step of 118 rows), progressive residency in the foreground and in
the background thread, a lowered plan, switching models with registrations kept and evicted, seeded
sampling, the bytes StepStats reports, and a pinned mapping that adds no private memory.
"""

from __future__ import annotations

import functools
import gc
import math
import os
import shutil
from pathlib import Path

import msgspec
import pytest
import torch

from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.client import SamplingParams
from c2cq.schemas.refs import ShmRef
from c2cq.services.catalog.convert import convert_hf
from c2cq.services.catalog.describe import describe_file
from c2cq.services.catalog.shm import map_shared, publish
from c2cq.services.catalog.synth import write_random
from c2cq.services.executor.model import Engine
from c2cq.services.executor.model.batch import FlatBatch
from c2cq.services.executor.residency import EMBED, copied_whole
import backend_drive
from hf_models import build_checkpoint

pytestmark = pytest.mark.gpu

CASES = [("llama", torch.float32), ("qwen2_tied", torch.float32), ("qwen3", torch.float32),
         ("mixtral", torch.float32), ("llama", torch.bfloat16), ("qwen3_moe", torch.bfloat16)]
K_MAX = 100  # the largest GEMM inner dimension of these models (intermediate_size)
NEW = 24
CHUNK = 128  # the first step runs all 118 prompt tokens: M > 64, HybridGEMM stages the host rows
ALIGN = 16  # resident rows in 16-row tiles, so the tiny weights (24–307 rows) really split
KV = 8 << 20


def model_name(spec: str, dtype: torch.dtype) -> str:
    return f"{spec.replace('_', '-')}-{str(dtype).removeprefix('torch.')}"


def prompt(seed: int, n: int, vocab: int = 307) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


PROMPTS = [prompt(1, 13), prompt(2, 5), prompt(3, 100)]


def published(name: str, file: Path, shm_dir: Path) -> ModelInfo:
    path = publish(file, shm_dir, name)
    return msgspec.structs.replace(describe_file(name, path), shm=ShmRef(path=str(path), size=path.stat().st_size))


@pytest.fixture(scope="module", autouse=True)
def few_tiles():
    """One HybridGEMM tile per BLOCK_M: the backend's results do not depend on the tile (tests/kernels
    check every one), and compiling and tuning the whole list for each tiny shape would take minutes."""
    import triton

    from c2cq.kernels import hybrid_gemm as hg

    tiles = [triton.Config({"BLOCK_M": bm, "BLOCK_N": 16, "BLOCK_K": 128, "GROUP_M": 1}, num_warps=4, num_stages=3)
             for bm in (16, 32, 64)]
    tiles.append(triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=3))
    saved = hg._autotuned.configs
    hg._autotuned.configs = tiles
    yield
    hg._autotuned.configs = saved


@pytest.fixture(scope="module")
def shm_dir():
    d = Path("/dev/shm") / f"c2cq-gpu-test-{os.getpid()}"
    d.mkdir(exist_ok=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, shm_dir):
    """Every case converted to a model file and published into shared memory: name → ModelInfo."""
    root, files = tmp_path_factory.mktemp("hf"), tmp_path_factory.mktemp("files")
    infos = {}
    for spec, dtype in CASES:
        name = model_name(spec, dtype)
        build_checkpoint(spec, dtype, root)
        convert_hf(root / f"{spec}-{str(dtype).removeprefix('torch.')}", files / f"{name}.c2cqm", progress=False)
        infos[name] = published(name, files / f"{name}.c2cqm", shm_dir)
    return infos


generate = functools.partial(backend_drive.generate, chunk=CHUNK)  # the shared driver, at this file's chunk


@pytest.fixture(scope="module")
def reference(catalog):
    """The cpu backend's greedy tokens for every case: name → [tokens per prompt]."""
    from c2cq.services.executor.cpu import CpuBackend

    cpu = CpuBackend(threads=min(8, os.cpu_count() or 1))
    return {name: generate(cpu, info, PROMPTS, NEW)[0] for name, info in catalog.items()}


def cpu_logits(info: ModelInfo, ids: list[int]) -> torch.Tensor:
    mf = map_shared(info.shm.path)
    engine = Engine(mf.config, mf.tensors(), None, kv_blocks=(len(ids) + 15) // 16, block_size=16)
    table = engine.cache.new_table()
    table.grow(engine.cache.allocator, len(ids))
    return engine.model.forward(FlatBatch.build([(ids, 0, table)], [True]), engine.cache)[0].float()


def assert_same_tokens(got: list[list[int]], ref: list[list[int]], info: ModelInfo, prompts: list[list[int]]) -> None:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[info.dtype]
    for p, g, r in zip(prompts, got, ref, strict=True):
        assert len(g) == len(r), f"{info.name}: {len(g)} tokens, the cpu backend gave {len(r)}"
        if g == r:
            continue
        i = next(j for j in range(len(r)) if g[j] != r[j])
        logits = cpu_logits(info, p + r[:i])
        top2 = torch.topk(logits, 2)
        gap = float(top2.values[0] - top2.values[1])
        tol = torch.finfo(dtype).eps * math.sqrt(K_MAX) * float(logits.abs().max())
        assert g[i] == int(top2.indices[1]) and gap <= tol, (
            f"{info.name}: token {i} is {g[i]} on cuda and {r[i]} on cpu; the cpu logits' top-2 are "
            f"{top2.indices.tolist()} with a gap {gap:.3g} over the rounding bound {tol:.3g}")


@pytest.fixture(scope="module")
def backends():
    """One CudaBackend per fixed α (switch_alpha = alpha: residency is complete at the switch)."""
    from c2cq.services.executor.cuda import CudaBackend

    made = {}

    def get(alpha: float):
        if alpha not in made:
            made[alpha] = CudaBackend("cuda:0", alpha=alpha, switch_alpha=alpha, background=False, align=ALIGN,
                                      kv_bytes=KV, probe_bytes=16 << 20)
        return made[alpha]

    yield get
    for b in made.values():
        b.close()


def linear_bytes(info: ModelInfo) -> int:
    """Bytes of every linear weight the forward reads (an untied dense model without biases)."""
    mf = map_shared(info.shm.path)
    return sum(t.numel() * t.element_size() for n, t in mf.tensors().items() if not copied_whole(n, tuple(t.shape)))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spec,dtype", CASES, ids=[model_name(s, d) for s, d in CASES])
def test_cpu_and_cuda_backends_agree(catalog, reference, backends, spec, dtype, alpha):
    name = model_name(spec, dtype)
    info, b = catalog[name], backends(alpha)
    tokens, steps = generate(b, info, PROMPTS, NEW)
    assert_same_tokens(tokens, reference[name], info, PROMPTS)
    tied = spec == "qwen2_tied"
    if alpha == 1.0:
        assert b.alpha() == 1.0 and all(s.bytes_host == 0 for s in steps)
    elif alpha == 0.0:
        assert (b.alpha() > 0.0) == tied and all(s.bytes_host > 0 for s in steps)
    else:
        assert 0.0 < b.alpha() < 1.0 and all(s.bytes_host > 0 and s.bytes_hbm > 0 for s in steps)
    assert all(s.bytes_hbm > 0 for s in steps)  # embedding rows at least


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_step_stats_count_bytes_from_each_memory(catalog, backends, alpha):
    info = catalog["llama-float32"]
    total = linear_bytes(info)
    embed = map_shared(info.shm.path).tensor(EMBED)
    row = embed.shape[1] * embed.element_size()
    _, steps = generate(backends(alpha), info, PROMPTS, 4)
    for s in steps:
        rows = (s.prefill_tokens + s.decode_tokens) * row  # embedding rows, read from HBM
        if alpha == 0.0:
            assert (s.bytes_host, s.bytes_hbm) == (total, rows)
        else:
            assert (s.bytes_host, s.bytes_hbm) == (0, total + rows)


def test_seeded_sampling_on_cuda_matches_the_cpu_backend(catalog, backends):
    """Sampling draws from the request's own host generator: same seed, same tokens as the cpu backend (fp32)."""
    from c2cq.services.executor.cpu import CpuBackend

    info = catalog["llama-float32"]
    sampling = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=11, ignore_eos=True)
    cuda_a, _ = generate(backends(0.5), info, PROMPTS, NEW, sampling=sampling)
    cuda_b, _ = generate(backends(0.5), info, PROMPTS, NEW, sampling=sampling)
    cpu, _ = generate(CpuBackend(threads=4), info, PROMPTS, NEW, sampling=sampling)
    assert cuda_a == cuda_b == cpu
    assert cuda_a != generate(backends(0.5), info, PROMPTS, NEW)[0]  # really sampled, not greedy


def test_progressive_residency_between_steps(catalog, reference):
    """Foreground residency: one 32 KiB chunk of rows before each step; α rises while requests run."""
    from c2cq.services.executor.cuda import CudaBackend

    info = catalog["llama-float32"]
    b = CudaBackend("cuda:0", alpha=1.0, switch_alpha=0.0, background=False, align=ALIGN, chunk_bytes=32 << 10,
                    kv_bytes=KV, probe_bytes=16 << 20)
    try:
        b.switch(info)
        assert b.alpha() == 0.0
        seen: list[float] = []
        tokens, _ = generate(b, info, PROMPTS, NEW, chunk=16, switch=False, each_step=lambda be: seen.append(be.alpha()))
        assert_same_tokens(tokens, reference[info.name], info, PROMPTS)
        assert seen == sorted(seen) and seen[-1] == 1.0, seen
        assert len(set(seen)) >= 5, f"α took too few values while requests ran: {sorted(set(seen))}"
        # a lower plan frees HBM between steps; the tokens stay the same
        b.set_alpha(0.25)
        tokens, steps = generate(b, info, PROMPTS, NEW, switch=False)
        assert 0.15 < b.alpha() <= 0.3 and all(s.bytes_host > 0 for s in steps)
        assert_same_tokens(tokens, reference[info.name], info, PROMPTS)
    finally:
        b.close()


def test_progressive_residency_in_the_background(catalog, reference):
    from c2cq.services.executor.cuda import CudaBackend

    info = catalog["llama-bfloat16"]
    b = CudaBackend("cuda:0", alpha=1.0, switch_alpha=0.0, background=True, align=ALIGN, chunk_bytes=16 << 10,
                    kv_bytes=KV, probe_bytes=16 << 20)
    try:
        b.switch(info)
        tokens, _ = generate(b, info, PROMPTS, NEW, switch=False)  # residency copies meanwhile
        assert_same_tokens(tokens, reference[info.name], info, PROMPTS)
        assert b.wait_resident(60), f"residency did not finish: α = {b.alpha()}, error {b.residency_error}"
        assert b.alpha() == 1.0 and b.residency_error is None and b._res.commits > 1
        tokens, steps = generate(b, info, PROMPTS, NEW, switch=False)
        assert all(s.bytes_host == 0 for s in steps)
        assert_same_tokens(tokens, reference[info.name], info, PROMPTS)
        b.set_alpha(0.0)
        assert b.wait_resident(60) and b.alpha() == 0.0
        tokens, steps = generate(b, info, PROMPTS, NEW, switch=False)
        assert all(s.bytes_host > 0 for s in steps)
        assert_same_tokens(tokens, reference[info.name], info, PROMPTS)
    finally:
        b.close()


def test_switching_models_keeps_and_evicts_registrations(catalog, reference):
    from c2cq.services.executor.cuda import CudaBackend

    b = CudaBackend("cuda:0", alpha=0.5, switch_alpha=0.5, background=False, align=ALIGN, keep_pinned=2,
                    kv_bytes=KV, probe_bytes=16 << 20)
    try:
        order = ["llama-float32", "qwen3-float32", "mixtral-float32", "llama-float32", "mixtral-float32"]
        fresh = []
        for name in order:
            info = catalog[name]
            tokens, _ = generate(b, info, PROMPTS[:2], 8)
            assert_same_tokens(tokens, [r[:8] for r in reference[name][:2]], info, PROMPTS[:2])
            fresh.append(b.last_switch.registered_now)
            assert len(b._pinned) <= 2 and info.shm.path in b._pinned
        # llama was evicted by mixtral (two kept), so it registers again; mixtral was kept
        assert fresh == [True, True, True, True, False]
    finally:
        b.close()
    assert not b._pinned


def _memory() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024
    return out


def test_pinned_mapping_adds_no_private_memory(tmp_path, shm_dir, catalog):
    """Serving a 400 MB model at α = 0 maps (and pins) its shared pages; the process's private memory stays."""
    from c2cq.services.executor.cuda import CudaBackend

    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 1024, "intermediate_size": 4096,
           "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32000,
           "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "rope_theta": 10000.0,
           "max_position_embeddings": 512}
    write_random(tmp_path / "big.c2cqm", cfg, {}, dtype="bf16", seed=0, progress=False)
    info = published("big-bf16", tmp_path / "big.c2cqm", shm_dir)
    b = CudaBackend("cuda:0", alpha=0.0, switch_alpha=0.0, background=False, kv_bytes=64 << 20,
                    probe_bytes=16 << 20)
    ids = [prompt(5, 16, vocab=32000)]
    try:
        generate(b, info, ids, 4)  # warm-up: kernels compiled and tuned for these shapes
        b.switch(catalog["llama-float32"])
        b.unpin(info)  # unregistered and unmapped: the measured switch maps and pins it again
        gc.collect()
        before = _memory()
        tokens, _ = generate(b, info, ids, 4)
        after = _memory()
        view = b._pinned[info.shm.path].tensors()["lm_head.weight"]
        assert view.is_pinned(), "the mapping is not registered with the GPU"
        assert len(tokens[0]) == 4
    finally:
        b.close()
    assert not view.is_pinned(), "close() left the mapping registered"
    grew_private, grew_shared = after["RssAnon"] - before["RssAnon"], after["RssShmem"] - before["RssShmem"]
    assert grew_shared > info.bytes // 2, f"the shared pages were not mapped: RssShmem grew {grew_shared} bytes"
    assert grew_private < info.bytes // 4, (f"private memory grew by {grew_private} bytes serving a model of "
                                            f"{info.bytes} bytes (a copy?)")
