"""HF model folder -> ``.c2cqm``: validate, then copy tensor bytes straight from the shard mappings.

Tensors are written in forward order with large ``pwrite`` calls from the safetensors mmap (no
dtype conversion, no torch) while a second thread hashes each one with CRC32 (both release the GIL). The output appears atomically: bytes go
to ``<dst>.tmp-<pid>`` in the same folder, which is fsynced and renamed; any failure removes it.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import msgspec
from tqdm import tqdm

from c2cq.services.catalog import layout
from c2cq.services.catalog.validate import CheckpointError, check_checkpoint

SAFETENSORS_DTYPES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F64": "F64", "I64": "I64", "I32": "I32",
                      "I16": "I16", "I8": "I8", "U8": "U8", "BOOL": "BOOL", "F8_E4M3": "F8_E4M3", "F8_E5M2": "F8_E5M2"}
CHUNK = 64 << 20  # bytes per pwrite: large enough to amortise the syscall, small enough for smooth progress


class ConvertResult(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    architecture: str
    num_tensors: int
    tensor_bytes: int
    file_bytes: int
    checksum: str
    seconds: float


class SourceTensor(msgspec.Struct, frozen=True, kw_only=True):
    file: str
    dtype: str  # c2cq name ("bf16", ...) or the safetensors name when unsupported
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in ``file``
    end: int


# ---- reading an HF folder ------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict[str, SourceTensor]:
    """Parse one shard's header; raise CheckpointError if it is malformed or the file is truncated."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
        (hlen,) = struct.unpack("<Q", head)
        if 8 + hlen > size:
            raise CheckpointError(f"{path}: truncated safetensors file (header of {hlen} bytes, file of {size})")
        try:
            header = json.loads(f.read(hlen))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: safetensors header is not valid JSON: {e}") from e
    base, out = 8 + hlen, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            dtype, shape = info["dtype"], tuple(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: bad header entry for tensor {name}") from e
        if base + stop > size:
            raise CheckpointError(f"{path}: truncated safetensors file: tensor {name} ends at byte {base + stop}, "
                                  f"file has {size}")
        out[name] = SourceTensor(file=str(path), dtype=SAFETENSORS_DTYPES.get(dtype, dtype), shape=shape,
                                 start=base + begin, end=base + stop)
    return out


def collect_tensors(src: Path) -> dict[str, SourceTensor]:
    """All tensors of the folder's shards (from model.safetensors.index.json when present)."""
    index_file = src / "model.safetensors.index.json"
    if index_file.exists():
        weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    else:
        weight_map, shards = {}, sorted(p.name for p in src.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{src}: no *.safetensors files")
    tensors: dict[str, SourceTensor] = {}
    for shard in shards:
        path = src / shard
        if not path.exists():
            raise CheckpointError(f"{src}: shard {shard} listed in model.safetensors.index.json is missing")
        for name, t in read_safetensors_header(path).items():
            if name in tensors:
                raise CheckpointError(f"{src}: tensor {name} appears in both {Path(tensors[name].file).name} and {shard}")
            tensors[name] = t
    for name, shard in weight_map.items():
        if name not in tensors:
            raise CheckpointError(f"{src}: tensor {name} listed for {shard} is not in it")
    return tensors


def _json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from e


def read_metadata(src: Path) -> dict[str, Any]:
    """config, generation_config, tokenizer.json bytes, tokenizer_config and chat template of a folder."""
    config = _json(src / "config.json")
    if config is None:
        raise CheckpointError(f"{src}: no config.json")
    tok_config = _json(src / "tokenizer_config.json")
    template = (tok_config or {}).pop("chat_template", None) if tok_config else None
    if template is None and (src / "chat_template.jinja").exists():
        template = (src / "chat_template.jinja").read_text()
    if template is None and (src / "chat_template.json").exists():
        template = (_json(src / "chat_template.json") or {}).get("chat_template")
    tok_json = src / "tokenizer.json"
    return {
        "config": config,
        "generation_config": _json(src / "generation_config.json"),
        "tokenizer_json": tok_json.read_bytes() if tok_json.exists() else None,
        "tokenizer_config": tok_config,
        "chat_template": template,
    }


# ---- writing -------------------------------------------------------------------------------------


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _byte_view(raw: memoryview, entry: layout.TensorEntry) -> memoryview:
    if raw.nbytes != entry.nbytes:
        raise CheckpointError(f"tensor {entry.name}: {raw.nbytes} bytes, its shape needs {entry.nbytes}")
    if not raw.c_contiguous:
        raise CheckpointError(f"tensor {entry.name}: source buffer is not contiguous")
    return raw.cast("B") if raw.nbytes else memoryview(b"")


def write_model_file(
    dst: Path,
    specs: list[tuple[str, str, tuple[int, ...]]],
    data: Iterable[Any],
    meta: dict[str, Any],
    *,
    alignment: int = layout.DEFAULT_ALIGNMENT,
    progress: bool = True,
    source: str = "",
) -> tuple[layout.Index, int]:
    """Write ``specs`` (in order) whose bytes ``data`` yields one buffer each; atomic; return (index, size)."""
    dst = Path(dst)
    entries = layout.plan(specs, alignment)
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
    total = sum(e.nbytes for e in entries)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    it = iter(data)
    hasher = ThreadPoolExecutor(1, thread_name_prefix="c2cq-crc")
    try:
        done: list[layout.TensorEntry] = []
        with tqdm(total=total, unit="B", unit_scale=True, disable=not progress, file=sys.stderr,
                  desc=f"converting {dst.name}") as bar:
            for entry in entries:
                buf = next(it)
                with memoryview(buf) as raw, _byte_view(raw, entry) as view:
                    crc = hasher.submit(zlib.crc32, view)  # hashes on a second core while this one writes
                    try:
                        for at in range(0, entry.nbytes, CHUNK):
                            with view[at:at + CHUNK] as chunk:
                                _write_all(fd, chunk, entry.offset + at)
                                bar.update(len(chunk))
                    finally:
                        crc = crc.result()
                del buf
                done.append(msgspec.structs.replace(entry, crc32=crc))
        index = layout.Index(tensors=tuple(done), checksum=layout.content_checksum(done), source=source, **meta)
        size = layout.finalize(fd, index, alignment)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, dst)
        _fsync_dir(dst.parent)
        return index, size
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    finally:
        hasher.shutdown()
        close = getattr(it, "close", None)
        if close is not None:
            close()  # a generator over source mappings unmaps them now, not at garbage collection


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _shard_views(order: list[str], tensors: dict[str, SourceTensor]) -> Iterator[memoryview]:
    """Zero-copy views of each tensor's bytes in its shard's mapping, in ``order``."""
    maps: dict[str, mmap.mmap] = {}
    try:
        for name in order:
            t = tensors[name]
            mm = maps.get(t.file)
            if mm is None:
                with open(t.file, "rb") as f:
                    mm = maps[t.file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                mm.madvise(mmap.MADV_WILLNEED)  # start reading the whole shard ahead of the copy
            view = memoryview(mm)[t.start:t.end]
            try:
                yield view
            finally:
                view.release()
    finally:
        for mm in maps.values():
            mm.close()


def convert_hf(
    src_dir: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    *,
    progress: bool = True,
    alignment: int = layout.DEFAULT_ALIGNMENT,
    clock: Callable[[], float] = time.perf_counter,
) -> ConvertResult:
    """Validate an HF folder and write it as one ``.c2cqm`` file at ``dst_path`` (atomically)."""
    t0 = clock()
    src, dst = Path(src_dir), Path(dst_path)
    meta = read_metadata(src)
    tensors = collect_tensors(src)
    arch = check_checkpoint(meta["config"], {n: (t.dtype, t.shape) for n, t in tensors.items()}, source=str(src))
    order = layout.forward_order(tensors)
    specs = [(n, tensors[n].dtype, tensors[n].shape) for n in order]
    index, size = write_model_file(dst, specs, _shard_views(order, tensors), meta, alignment=alignment,
                                   progress=progress, source=str(src))
    return ConvertResult(path=str(dst), architecture=arch, num_tensors=len(order),
                         tensor_bytes=sum(e.nbytes for e in index.tensors), file_bytes=size,
                         checksum=index.checksum, seconds=clock() - t0)
