"""Registration throughput: convert_hf of a generated ~1 GiB bf16 checkpoint against two baselines.

Baselines on the same safetensors file: ``safetensors.torch.load_file`` with every page then read
(it may map lazily: without touching, it measures nothing)
and a raw O_DIRECT read (2 threads, 64 MiB requests, into a pre-touched aligned buffer: the disk's
ceiling). Each is measured with the source in the page cache ("cached") and with its pages dropped
for this file only (posix_fadvise DONTNEED: no root needed) ("cold"). convert_hf is timed end to end:
validation, copy, CRC32, index, fsync and rename. The last columns time the serving path: mapping the
converted file with read_layout and reading every page. Throughput is checkpoint bytes / seconds.

    .venv/bin/python bench/registration.py [--dir /tmp/c2cq-bench] [--dst-dir /dev/shm] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from c2cq.services.catalog.convert import convert_hf
from c2cq.services.catalog.layout import read_layout

CONFIG = {  # a Llama of ~0.5 B parameters: ~1 GiB in bf16
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
    "num_hidden_layers": 7, "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32000,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
CHUNK = 64 << 20


def make_checkpoint(folder: Path) -> Path:
    path = folder / "model.safetensors"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    h, i, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    g = torch.Generator().manual_seed(0)
    state = {"model.embed_tokens.weight": torch.randn(v, h, generator=g, dtype=torch.bfloat16),
             "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
             "lm_head.weight": torch.randn(v, h, generator=g, dtype=torch.bfloat16)}
    for layer in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[p + f"self_attn.{name}.weight"] = torch.randn(h, h, generator=g, dtype=torch.bfloat16)
        for name, shape in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))):
            state[p + f"mlp.{name}.weight"] = torch.randn(*shape, generator=g, dtype=torch.bfloat16)
        state[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        state[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    save_file(state, path, metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return path


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(CHUNK):
            pass


def odirect_read(path: Path, buf: mmap.mmap, threads: int = 2) -> None:
    size = path.stat().st_size
    starts = list(range(0, size, CHUNK))

    def worker(k: int) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            view = memoryview(buf)
            for start in starts[k::threads]:
                n = min(CHUNK, size - start)
                os.preadv(fd, [view[start:start + (n + 4095) // 4096 * 4096]], start)
            view.release()
        finally:
            os.close(fd)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def touch(tensors: dict[str, torch.Tensor]) -> None:
    """Read one byte of every page: load_file may hand back lazily mapped tensors."""
    for t in tensors.values():
        t.reshape(-1).view(torch.uint8)[::4096].sum()


def timed(fn, prepare, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        prepare()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "c2cq-bench-registration")
    ap.add_argument("--dst-dir", type=Path, action="append", help="where to write .c2cqm (repeatable)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    src = make_checkpoint(args.dir / "hf")
    size = src.stat().st_size
    dst_dirs = args.dst_dir or [args.dir, Path("/dev/shm")]
    gb = size / 1e9
    buf = mmap.mmap(-1, (size + 4095) // 4096 * 4096)
    buf.write(b"\1" * len(buf))  # pre-touch: first touch of new memory is slow on this VM
    print(f"checkpoint: {src} ({size / 2**30:.2f} GiB), best of {args.repeat}", file=sys.stderr)

    rows = []
    for state, prepare in (("cached", lambda: warm_cache(src)), ("cold", lambda: drop_cache(src))):
        t_load = timed(lambda: touch(load_file(src)), prepare, args.repeat)
        t_direct = timed(lambda: odirect_read(src, buf), prepare, args.repeat)
        for dst_dir in dst_dirs:
            scratch = dst_dir / f"c2cq-bench-{os.getpid()}"
            scratch.mkdir(parents=True, exist_ok=True)
            dst = scratch / "m.c2cqm"
            try:
                convert_hf(src.parent, dst, progress=False)  # warm-up: allocate the destination's pages once

                def prep() -> None:
                    dst.unlink(missing_ok=True)
                    prepare()

                t_conv = timed(lambda: convert_hf(src.parent, dst, progress=False), prep, args.repeat)
                convert_hf(src.parent, dst, progress=False)
                prep_dst = (lambda: warm_cache(dst)) if state == "cached" else (lambda: drop_cache(dst))
                t_map = timed(lambda: touch(read_layout(dst).tensors()), prep_dst, args.repeat)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            rows.append((state, str(dst_dir), gb / t_conv, gb / t_load, gb / t_direct, gb / t_map))

    print(f"{'cache':7} {'destination':28} {'convert GB/s':>12} {'load_file':>10} {'O_DIRECT':>9} "
          f"{'vs load_file':>12} {'vs O_DIRECT':>11} {'map+touch .c2cqm':>17} {'vs load_file':>12}")
    for state, dst, conv, load, direct, mapped in rows:
        print(f"{state:7} {dst:28} {conv:12.2f} {load:10.2f} {direct:9.2f} {conv / load:11.2f}x {conv / direct:10.0%}"
              f" {mapped:17.2f} {mapped / load:11.2f}x")
    print("targets (convert): >= 2x load_file and >= 90% of O_DIRECT; GB/s = checkpoint bytes / seconds")
    print("(a .c2cqm in /dev/shm is memory: its 'cold' row maps resident pages)")


if __name__ == "__main__":
    main()
