"""Registration throughput: convert_hf of a generated ~1 GiB bf16 checkpoint against two baselines.

Everything is measured on the same safetensors file, in rounds: each round times every contender once,
so load from other processes on a shared machine falls on all of them alike; the table gives the
median of the rounds and ratios are medians of the per-round ratios.

- ``convert``: ``convert_hf`` end to end, what ``c2cq models add`` spends on a folder: validation,
  copy, CRC32 of every tensor, index, fsync and rename, into a fresh file in ``--dst-dir``.
- ``load_file``: ``safetensors.torch.load_file`` with one byte of every page then read. safetensors
  0.8 maps the file (copy-on-write) and reads nothing itself: the touch makes it read the file.
- ``O_DIRECT``: a raw read of the file, 2 threads, 64 MiB requests, into a pre-touched buffer on huge
  pages: what the disk gives. The targets compare ``convert`` with these two.
- ``DIO copy``: O_DIRECT read of the file and O_DIRECT write of the same bytes into ``--dst-dir`` (a
  plain write into tmpfs; 4 MiB pieces, 4 in flight, no hashing): about the most a copy to that
  destination can do, since a conversion must read and write every byte (on one disk, the write shares
  it with the read).
- ``map+touch``: the serving side, ``read_layout`` of the converted file and one byte of every page.
- ``models add``: what a user waits for, end to end, against a running instance (``c2cq up --backend
  sim``, home under ``--dir``, ``--shm-root`` passed on): ``add_path`` converts into the home's model
  folder on disk, writes the shared-memory copy on the side (tmpfs), and the catalog checks, publishes
  (on hugetlbfs: reads the new file into huge pages) and registers it (process start excluded).
  Removed again after each round.

Rows: the source checkpoint ``cold`` (its pages dropped from the page cache before each run with
posix_fadvise DONTNEED on this file only: no root needed, nothing else on the machine is disturbed)
or ``cached`` (read once before each run). A cached ``load_file`` maps pages that are already there:
it copies nothing, so no conversion, which must write every byte, can approach it; the targets
(>= 2x load_file, >= 90% of O_DIRECT) are about the cold row. Throughput = checkpoint bytes / seconds.

    .venv/bin/python bench/registration.py [--dir /tmp/c2cq-bench-registration] [--dst-dir DIR ...] [--rounds 5]
        [--shm-root /mnt/huge]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from c2cq import catalog_client
from c2cq.rundir import RunDir
from c2cq.schemas.catalog import RemoveModel
from c2cq.services.catalog.cli_add import add_path
from c2cq.services.catalog.convert import convert_hf
from c2cq.services.catalog.fs import drop_page_cache, in_memory
from c2cq.testing import Instance
from c2cq.services.catalog.layout import read_layout

CONFIG = {  # a Llama of ~0.5 B parameters: ~1 GiB in bf16
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
    "num_hidden_layers": 7, "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32000,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
CHUNK = 64 << 20
PIECE = 4 << 20


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


def warm_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(CHUNK):
            pass


def io_buffer(size: int) -> tuple[mmap.mmap, memoryview]:
    """A pre-touched buffer on transparent huge pages, as convert_hf's: a 4 MiB O_DIRECT request into
    scattered 4 KiB pages is split into several virtio requests (254 segments each), which halves what
    this VM's disk gives. Returns the mapping and a 2 MiB-aligned view of ``size`` bytes."""
    huge = 2 << 20
    mm = mmap.mmap(-1, size + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):
        pass
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    start = (-base) % huge
    view = memoryview(mm)[start:start + size]
    view[:] = b"\1" * size  # pre-touch: first touch of new memory is slow on this VM
    return mm, view


def odirect_read(path: Path, buf: memoryview, threads: int = 2) -> None:
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


def odirect_copy(src: Path, dst: Path, buf: memoryview, workers: int = 4) -> None:
    """Read ``src`` and write it to ``dst``, both O_DIRECT (a plain write into tmpfs), 4 MiB pieces,
    ``workers`` in flight; fsync."""
    size = src.stat().st_size
    fin = os.open(src, os.O_RDONLY | os.O_DIRECT)
    fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if not in_memory(fout):  # into tmpfs any write is a memcpy; plain writes are the faster (convert_hf's choice)
        os.close(fout)
        fout = os.open(dst, os.O_WRONLY | os.O_DIRECT)
    view = memoryview(buf)

    def piece(start: int) -> None:
        n = (min(PIECE, size - start) + 4095) // 4096 * 4096
        part = view[start:start + n]  # each piece its own slice of the pre-touched buffer
        os.preadv(fin, [part], start)
        os.pwrite(fout, part, start)
        part.release()

    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(piece, range(0, size, PIECE)))
        os.fsync(fout)
    finally:
        view.release()
        os.close(fin)
        os.close(fout)


def touch(tensors: dict[str, torch.Tensor]) -> None:
    """Read one byte of every page: load_file may hand back lazily mapped tensors."""
    for t in tensors.values():
        t.reshape(-1).view(torch.uint8)[::4096].sum()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "c2cq-bench-registration")
    ap.add_argument("--dst-dir", type=Path, action="append", help="where to write .c2cqm (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shm-root", default=None, help="the instance's --shm-root for `models add` (e.g. a hugetlbfs mount)")
    args = ap.parse_args()
    src = make_checkpoint(args.dir / "hf")
    size = src.stat().st_size
    dst_dirs = args.dst_dir or [args.dir, Path("/dev/shm")]
    gb = size / 1e9
    _mm, buf = io_buffer((size + 4095) // 4096 * 4096)
    print(f"checkpoint: {src} ({size / 2**30:.2f} GiB), median of {args.rounds} rounds", file=sys.stderr)
    scratch = {d: d / f"c2cq-bench-{os.getpid()}" for d in dst_dirs}
    for d in scratch.values():
        d.mkdir(parents=True, exist_ok=True)

    # gbs[state][column] -> GB/s per round
    gbs: dict[str, dict[str, list[float]]] = {}
    home = args.dir / "home"
    shutil.rmtree(home, ignore_errors=True)
    instance = Instance(home, slices=1, backend="sim")
    instance.up(*(["--shm-root", args.shm_root] if args.shm_root else []))
    rd = RunDir.from_env(str(home))
    shm_root = rd.shm_root  # what the instance records (its run folder goes with the teardown)

    def add_and_time(name: str) -> float:
        t = timed(lambda: add_path(rd, src.parent, name, progress=False))
        catalog_client.call(rd, RemoveModel(name=name))
        return t

    try:
        for d in scratch.values():  # warm-up: imports, and the destination's pages allocated once
            convert_hf(src.parent, d / "m.c2cqm", progress=False)
        for rnd in range(args.rounds):
            for state, prepare in (("cold", lambda: drop_page_cache(src)), ("cached", lambda: warm_cache(src))):
                row = gbs.setdefault(state, {})

                def run(column: str, fn, before=prepare) -> None:
                    before()
                    row.setdefault(column, []).append(gb / timed(fn))

                run("load_file", lambda: touch(load_file(src)))
                run("O_DIRECT", lambda: odirect_read(src, buf))
                for d, s in scratch.items():
                    out = s / "m.c2cqm"
                    copy = s / "copy.bin"

                    def fresh(out=out, copy=copy) -> None:
                        out.unlink(missing_ok=True)
                        copy.unlink(missing_ok=True)
                        prepare()

                    run(f"DIO copy {d}", lambda: odirect_copy(src, copy, buf), fresh)
                    run(f"convert {d}", lambda: convert_hf(src.parent, out, progress=False), fresh)
                    drop = (lambda: drop_page_cache(out)) if state == "cold" else (lambda: warm_cache(out))
                    run(f"map+touch {d}", lambda: touch(read_layout(out).tensors()), drop)
                prepare()
                row.setdefault("models add", []).append(gb / add_and_time(f"r{rnd}-{state}"))
            print(f"round {rnd + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    finally:
        instance.teardown()
        shutil.rmtree(home, ignore_errors=True)
        for s in scratch.values():
            shutil.rmtree(s, ignore_errors=True)

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    print(f"registration throughput, GB/s (checkpoint bytes / s), median of {args.rounds} rounds; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'source':7} {'destination':30} {'convert':>8} {'load_file':>9} {'O_DIRECT':>8} {'DIO copy':>8} | "
          f"{'vs load_file':>12} {'vs O_DIRECT':>11} {'vs DIO copy':>11} | {'map+touch':>9}")
    for state, row in gbs.items():
        for d in dst_dirs:
            conv, copy = row[f"convert {d}"], row[f"DIO copy {d}"]
            ratio = lambda base: med([c / b for c, b in zip(conv, base)])  # noqa: E731
            print(f"{state:7} {str(d):30} {med(conv):8.2f} {med(row['load_file']):9.2f} {med(row['O_DIRECT']):8.2f} "
                  f"{med(copy):8.2f} | {ratio(row['load_file']):11.2f}x {ratio(row['O_DIRECT']):10.0%} "
                  f"{ratio(copy):10.0%} | {med(row[f'map+touch {d}']):9.2f}")
    for state, row in gbs.items():
        add = row["models add"]
        print(f"{state:7} models add, end to end (home on disk, published in {shm_root}): {med(add):.2f} GB/s = "
              f"{med([a / b for a, b in zip(add, row['load_file'])]):.2f}x load_file, "
              f"{med([a / b for a, b in zip(add, row['O_DIRECT'])]):.0%} of O_DIRECT")
    cold = gbs["cold"]
    print(f"the raw read itself: O_DIRECT = {med([a / b for a, b in zip(cold['O_DIRECT'], cold['load_file'])]):.2f}x "
          "a cold load_file on this disk: the most any reader of the file can be against load_file")
    print("targets (cold source): convert >= 2x load_file and >= 90% of O_DIRECT. A cached load_file maps pages "
          "already in memory and copies nothing.\nDIO copy: read + write of the same bytes with no hashing, the "
          "ceiling of a conversion to that destination. A .c2cqm in /dev/shm is memory: its map+touch is warm.")


if __name__ == "__main__":
    main()
