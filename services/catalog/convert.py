"""HF model folder -> ``.c2cqm``: validate, then copy each tensor's bytes from its shard into the model file.

The dtype is kept, so conversion is a copy of byte ranges into aligned offsets plus a CRC32 per tensor
(``copy_tensors``: several pieces in flight, O_DIRECT where the bytes are not in the page cache; no
torch). Generated and dequantised models go through ``write_model_file`` from in-memory buffers. The
output appears atomically: bytes go to ``<dst>.tmp-<pid>`` in the same folder, which is fsynced and
renamed; any failure removes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import mmap
import os
import queue
import struct
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

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
        return _fit_msgpack(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from e


def _fit_msgpack(value: Any) -> Any:
    """JSON with integers msgpack cannot hold (past 64 bits) as floats: transformers writes
    ``"model_max_length": 1000000000000000019884624838656`` (int(1e30), "no limit") in tokenizer_config.json."""
    if isinstance(value, dict):
        return {k: _fit_msgpack(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fit_msgpack(v) for v in value]
    if isinstance(value, int) and not -2**63 <= value < 2**64:
        return float(value)
    return value


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


def _atomic_model_file(
    dst: Path,
    entries: tuple[layout.TensorEntry, ...],
    fill: Callable[[Path, int], list[int]],
    meta: dict[str, Any],
    alignment: int,
    source: str,
) -> tuple[layout.Index, int]:
    """Write a model file at ``dst`` atomically: ``fill(tmp, fd)`` writes the tensors of ``entries`` into the
    temporary file (``fd`` is open on it for writing) and returns their CRC32s; then the index and header
    follow, the file is fsynced and renamed over ``dst``. Any failure removes the temporary file."""
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        crcs = fill(tmp, fd)
        done = [msgspec.structs.replace(e, crc32=c) for e, c in zip(entries, crcs, strict=True)]
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


def _progress(total: int, dst: Path, progress: bool) -> tqdm:
    return tqdm(total=total, unit="B", unit_scale=True, disable=not progress, file=sys.stderr,
                desc=f"converting {dst.name}")


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
    it = iter(data)

    def fill(_tmp: Path, fd: int) -> list[int]:
        crcs = []
        with ThreadPoolExecutor(1, thread_name_prefix="c2cq-crc") as hasher, \
                _progress(sum(e.nbytes for e in entries), dst, progress) as bar:
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
                        crcs.append(crc.result())
                del buf
        return crcs

    try:
        return _atomic_model_file(dst, entries, fill, meta, alignment, source)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()  # a generator over source mappings releases them now, not at garbage collection


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- copying shards into the model file ----------------------------------------------------------
#
# A checkpoint's tensors are copied as they are (the dtype is kept), so registration is a copy of byte
# ranges from the shards into aligned offsets of the model file plus a CRC32 of each. The copy runs in
# pieces of at most PIECE bytes (one per tensor, large tensors split), COPY_WORKERS in flight, each
# through its slot of one buffer: read the piece, hash it while it is in the CPU's cache, write it.
# Pieces go in the shards' order, so each shard is read front to back. Source pages that are all in
# the page cache are read through it (a memcpy); the others with O_DIRECT, the disk straight into the
# buffer (a buffered read of a cold file runs at half the disk's speed here, allocating and filling
# page-cache pages), after which the tensor's bytes are shifted to the buffer's start, since a tensor
# starts anywhere in a shard. The model file is written with O_DIRECT too (its pages are not needed
# in the page cache: the catalog publishes it by link or copy), except into a memory filesystem
# (tmpfs), where any write is a memcpy: there pieces whose pages are cached are written straight from
# the shard's mapping, with no buffer between. Each tensor's CRC32 is combined from its pieces'
# (crc32_combine); libdeflate computes them where the library is installed, else zlib.

PIECE = 4 << 20  # bytes per read/write: one 4 MiB request (virtio-blk's max_sectors_kb), few of them in flight
COPY_WORKERS = 6  # pieces in flight: keeps the disk busy while others hash or wait on their write
_HUGE = 2 << 20  # a transparent huge page
_O_DIRECT = getattr(os, "O_DIRECT", 0)
DIO_ALIGN = 4096  # O_DIRECT offsets, lengths and buffer addresses (covers 512 B and 4 KiB logical blocks)


class _Piece(msgspec.Struct, frozen=True):
    tensor: int  # index of its entry
    shard: int  # index of its source shard
    src: int  # absolute offset in the shard
    dst: int  # absolute offset in the model file (a multiple of DIO_ALIGN)
    nbytes: int


def _pieces(entries: tuple[layout.TensorEntry, ...], sources: list[SourceTensor],
            shards: dict[str, int]) -> list[_Piece]:
    out = []
    for i, (e, t) in enumerate(zip(entries, sources, strict=True)):
        if t.end - t.start != e.nbytes:
            raise CheckpointError(f"tensor {e.name}: {t.end - t.start} bytes, its shape needs {e.nbytes}")
        for at in range(0, e.nbytes, PIECE):
            out.append(_Piece(i, shards[t.file], t.start + at, e.offset + at, min(PIECE, e.nbytes - at)))
    return out


# crc32_combine (zlib's algorithm: multiplication by x^(8·len2) modulo the CRC polynomial, reflected)
_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()


@functools.lru_cache(maxsize=64)
def _x8nmodp(nbytes: int) -> int:
    """x^(8·nbytes) mod the polynomial (most pieces have the same length: cached)."""
    p, k, n = 1 << 31, 3, nbytes
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC32 of A+B from crc32(A), crc32(B) and len(B), as zlib's crc32_combine."""
    return _multmodp(_x8nmodp(len2), crc1) ^ crc2


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_libc.fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)
_MEMORY_FS = (0x01021994, 0x858458F6)  # tmpfs, ramfs (statfs f_type)
_RESIDENT = bytes(i & 1 for i in range(256))  # mincore's bit 0: the page is in the page cache


def _find_libdeflate_crc32() -> Callable[[int, int, int], int] | None:
    """libdeflate's CRC32 (zlib's CRC-32, carry-less multiply: ~3x zlib's speed here), where the library is."""
    try:
        fn = ctypes.CDLL("libdeflate.so.0").libdeflate_crc32
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_uint32, (ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t)
    return fn if fn(0, b"123456789", 9) == zlib.crc32(b"123456789") else None


_fast_crc32 = _find_libdeflate_crc32()  # called through ctypes: releases the GIL like zlib.crc32


def _in_memory(fd: int) -> bool:
    """Whether ``fd``'s filesystem keeps its files in memory (tmpfs, ramfs): writing there is a memcpy,
    O_DIRECT or not, so it is best written straight from the source's page cache."""
    buf = ctypes.create_string_buffer(256)  # a struct statfs, f_type first
    return _libc.fstatfs(fd, buf) == 0 and struct.unpack_from("l", buf)[0] in _MEMORY_FS


def _crc32_at(addr: int, nbytes: int) -> int:
    if _fast_crc32 is not None:
        return _fast_crc32(0, addr, nbytes)
    with memoryview((ctypes.c_char * nbytes).from_address(addr)).cast("B") as data:
        return zlib.crc32(data)


def _cached_pages(fd: int, size: int) -> bytes | None:
    """One byte per page of the file, 1 where the page is in the page cache; None if it cannot be told."""
    if size == 0:
        return b""
    addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        return None
    try:
        vec = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
        if _libc.mincore(addr, size, vec) != 0:
            return None
        return vec.raw.translate(_RESIDENT)
    finally:
        _libc.munmap(addr, size)


class _Shard:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        try:
            self.direct_fd = os.open(path, os.O_RDONLY | _O_DIRECT) if _O_DIRECT else -1
        except OSError:  # a filesystem without O_DIRECT: read through the page cache
            self.direct_fd = -1
        self.direct = self.direct_fd >= 0  # cleared if O_DIRECT reads turn out refused
        self.cached = _cached_pages(self.fd, self.size) if self.direct else None
        self._addr: int | None = None
        self._lock = threading.Lock()

    def address(self) -> int | None:
        """Where the whole shard is mapped (read-only, shared), mapped on first use; None if it cannot be."""
        with self._lock:
            if self._addr is None and self.size:
                addr = _libc.mmap(None, self.size, mmap.PROT_READ, mmap.MAP_SHARED, self.fd, 0)
                self._addr = None if addr is None or addr == ctypes.c_void_p(-1).value else addr
            return self._addr

    def is_cached(self, start: int, end: int) -> bool:
        if not self.direct:
            return True
        if self.cached is None:
            return False
        return self.cached.find(0, start // mmap.PAGESIZE, (end - 1) // mmap.PAGESIZE + 1) < 0

    def close(self) -> None:
        if self._addr is not None:
            _libc.munmap(self._addr, self.size)
            self._addr = None
        for fd in (self.fd, self.direct_fd):
            if fd >= 0:
                os.close(fd)


def _read_full(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from ``offset`` until it is full or the file ends; the bytes read."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


class _Copier:
    """Copies pieces from the shards into the model file, each through a slot of one aligned buffer.

    The buffer is private anonymous memory on transparent huge pages where the kernel has them: a
    4 MiB O_DIRECT request into scattered 4 KiB pages is 1024 segments and virtio-blk takes 254 a
    request, so it goes out as five requests; into 2 MiB pages it is one (measured here: 0.4 against
    0.7 GB/s for the same copy).
    """

    def __init__(self, shards: list[_Shard], out_fd: int, plain_fd: int, slots: int, from_source: bool) -> None:
        self.shards, self.out_fd, self.plain_fd = shards, out_fd, plain_fd
        self.from_source = from_source  # cached pieces are written straight from the shard's mapping
        self.slot = PIECE + 2 * DIO_ALIGN
        self._map = mmap.mmap(-1, slots * self.slot + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            self._map.madvise(mmap.MADV_HUGEPAGE)
        except (AttributeError, OSError):
            pass  # no transparent huge pages: 4 KiB pages work, with more, smaller requests
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._map))  # the export ends with this line
        first = (base + _HUGE - 1) // _HUGE * _HUGE - base
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for k in range(slots):
            self._free.put(first + k * self.slot)
        self._base = base

    def copy(self, p: _Piece) -> int:
        """Copy one piece; its CRC32."""
        at = self._free.get()
        try:
            with memoryview(self._map) as whole, whole[at:at + self.slot] as view:
                return self._copy(p, view, self._base + at)
        finally:
            self._free.put(at)

    def _copy(self, p: _Piece, view: memoryview, addr: int) -> int:
        shard = self.shards[p.shard]
        end = p.src + p.nbytes
        cached = shard.is_cached(p.src, end)
        if cached and self.from_source and end <= shard.size and (base := shard.address()) is not None:
            crc = _crc32_at(base + p.src, p.nbytes)
            with memoryview((ctypes.c_char * p.nbytes).from_address(base + p.src)).cast("B") as data:
                _write_all(self.plain_fd, data, p.dst)
            return crc
        got = -1
        if not cached:
            lo = p.src - p.src % DIO_ALIGN
            span = layout.align_up(end, DIO_ALIGN) - lo
            try:
                with view[:span] as part:
                    got = _read_full(shard.direct_fd, part, lo) - (p.src - lo)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                shard.direct = False  # O_DIRECT opened but refused at read time: the page cache then
            else:
                ctypes.memmove(addr, addr + p.src - lo, max(0, min(got, p.nbytes)))  # the bytes to the aligned start
        if got < 0:
            with view[:p.nbytes] as part:
                got = _read_full(shard.fd, part, p.src)
        if got < p.nbytes:
            raise CheckpointError(f"{shard.path}: truncated while reading (ends before byte {end})")
        padded = layout.align_up(p.nbytes, DIO_ALIGN)
        ctypes.memset(addr + p.nbytes, 0, padded - p.nbytes)
        crc = _crc32_at(addr, p.nbytes)
        with view[:padded] as out:
            try:
                _write_all(self.out_fd, out, p.dst)
            except OSError as e:
                if e.errno != errno.EINVAL or self.out_fd == self.plain_fd:
                    raise
                self.out_fd = self.plain_fd  # O_DIRECT refused at write time: through the page cache then
                _write_all(self.out_fd, out, p.dst)
        return crc

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a view is still referenced by a failed copy's traceback: unmapped with it
            pass


def copy_tensors(dst: Path, entries: tuple[layout.TensorEntry, ...], sources: list[SourceTensor],
                 meta: dict[str, Any], *, alignment: int, progress: bool, source: str) -> tuple[layout.Index, int]:
    """Write the model file of ``entries`` whose bytes lie in shards at ``sources``; atomic; (index, size)."""
    paths = sorted({t.file for t in sources})
    shard_ids = {path: i for i, path in enumerate(paths)}

    def fill(tmp: Path, fd: int) -> list[int]:
        pieces = _pieces(entries, sources, shard_ids)
        with contextlib.ExitStack() as stack:
            shards = []
            for path in paths:
                shards.append(_Shard(path))
                stack.callback(shards[-1].close)
            memory = _in_memory(fd)
            try:
                out_fd = os.open(tmp, os.O_WRONLY | _O_DIRECT) if _O_DIRECT and not memory else fd
            except OSError:  # no O_DIRECT here: write through the page cache
                out_fd = fd
            if out_fd != fd:
                stack.callback(os.close, out_fd)
            copier = _Copier(shards, out_fd, fd, COPY_WORKERS, from_source=memory)
            stack.callback(copier.close)
            pool = ThreadPoolExecutor(COPY_WORKERS, thread_name_prefix="c2cq-copy")
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)  # runs first: no copy outlives the fds
            # in the shards' order: each shard is read front to back, whatever the forward order
            order = sorted(pieces, key=lambda p: (p.shard, p.src))
            futures = {p: pool.submit(copier.copy, p) for p in order}
            with _progress(sum(e.nbytes for e in entries), dst, progress) as bar:
                for p in order:
                    futures[p].result()
                    bar.update(p.nbytes)
            crcs = [0] * len(entries)
            for p in pieces:  # in the file's order: each tensor's pieces in turn
                crc = futures[p].result()
                crcs[p.tensor] = crc if p.dst == entries[p.tensor].offset else \
                    crc32_combine(crcs[p.tensor], crc, p.nbytes)
            return crcs

    return _atomic_model_file(Path(dst), entries, fill, meta, alignment, source)


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
    entries = layout.plan([(n, tensors[n].dtype, tensors[n].shape) for n in order], alignment)
    index, size = copy_tensors(dst, entries, [tensors[n] for n in order], meta, alignment=alignment,
                               progress=progress, source=str(src))
    return ConvertResult(path=str(dst), architecture=arch, num_tensors=len(order),
                         tensor_bytes=sum(e.nbytes for e in index.tensors), file_bytes=size,
                         checksum=index.checksum, seconds=clock() - t0)
