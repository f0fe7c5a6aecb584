"""Copying tensors' byte ranges from safetensors shards into a model file: the copy behind ``convert_hf``.

A checkpoint's tensors are copied as they are (the dtype is kept), so registration is a copy of byte
ranges from the shards into aligned offsets of the model file plus a CRC32 of each. The copy runs in
pieces of at most PIECE bytes (one per tensor, large tensors split), COPY_WORKERS in flight, each
through its slot of one buffer: read the piece, hash it while it is in the CPU's cache, write it.
Pieces go in the shards' order, so each shard is read front to back. Source pages that are all in
the page cache are read through it (a memcpy); the others with O_DIRECT, the disk straight into the
buffer (a buffered read of a cold file runs at half the disk's speed here, allocating and filling
page-cache pages). The model file is written with O_DIRECT too (its pages are not needed in the page
cache: the catalog publishes it by link, rename or copy), from the buffer's aligned start, to which
the piece's bytes are first moved (a tensor starts anywhere in a shard). Into a memory filesystem
(tmpfs) any write is a memcpy, so there the bytes are written where they lie: from the buffer, or for
cached pieces straight from the shard's mapping. Each tensor's CRC32 is combined from its pieces'
(crc32_combine); libdeflate computes them where the library is installed, else zlib.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import mmap
import os
import queue
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

import msgspec

from c2cq.services.catalog import fs, layout, modelwrite
from c2cq.services.catalog.validate import CheckpointError

if TYPE_CHECKING:
    from tqdm import tqdm

    from c2cq.services.catalog.convert import SourceTensor

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

    def __init__(self, shards: list[_Shard], out_fd: int, plain_fd: int, slots: int, from_source: bool,
                 tee: modelwrite.Tee) -> None:
        self.shards, self.out_fd, self.plain_fd, self.tee = shards, out_fd, plain_fd, tee
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
                modelwrite.write_all(self.plain_fd, data, p.dst)
                self.tee.write(data, p.dst)
            return crc
        got, at = -1, 0  # the piece's bytes are view[at:at + p.nbytes]
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
                at = p.src - lo
        if got < 0:
            with view[:p.nbytes] as part:
                got = _read_full(shard.fd, part, p.src)
        if got < p.nbytes:
            raise CheckpointError(f"{shard.path}: truncated while reading (ends before byte {end})")
        crc = _crc32_at(addr + at, p.nbytes)
        with view[at:at + p.nbytes] as data:
            self.tee.write(data, p.dst)
            if self.out_fd == self.plain_fd:  # a buffered write takes the bytes where they are
                modelwrite.write_all(self.plain_fd, data, p.dst)
                return crc
        ctypes.memmove(addr, addr + at, p.nbytes)  # O_DIRECT writes from an aligned address, whole blocks
        padded = layout.align_up(p.nbytes, DIO_ALIGN)
        ctypes.memset(addr + p.nbytes, 0, padded - p.nbytes)
        with view[:padded] as out:
            try:
                modelwrite.write_all(self.out_fd, out, p.dst)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.out_fd = self.plain_fd  # O_DIRECT refused at write time: through the page cache then
                modelwrite.write_all(self.out_fd, out, p.dst)
        return crc

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a view is still referenced by a failed copy's traceback: unmapped with it
            pass


def copy_shards(tmp: str, fd: int, tee: modelwrite.Tee, entries: tuple[layout.TensorEntry, ...],
                sources: list[SourceTensor], bar: tqdm) -> list[int]:
    """Copy each entry's bytes from ``sources`` into the model file being written (``fd``, open on
    ``tmp``) and into ``tee``; their CRC32s, in the entries' order. ``bar`` is updated as pieces land."""
    paths = sorted({t.file for t in sources})
    pieces = _pieces(entries, sources, {path: i for i, path in enumerate(paths)})
    with contextlib.ExitStack() as stack:
        shards = []
        for path in paths:
            shards.append(_Shard(path))
            stack.callback(shards[-1].close)
        memory = fs.in_memory(fd)
        try:
            out_fd = os.open(tmp, os.O_WRONLY | _O_DIRECT) if _O_DIRECT and not memory else fd
        except OSError:  # no O_DIRECT here: write through the page cache
            out_fd = fd
        if out_fd != fd:
            stack.callback(os.close, out_fd)
        copier = _Copier(shards, out_fd, fd, COPY_WORKERS, from_source=memory, tee=tee)
        stack.callback(copier.close)
        pool = ThreadPoolExecutor(COPY_WORKERS, thread_name_prefix="c2cq-copy")
        stack.callback(pool.shutdown, wait=True, cancel_futures=True)  # runs first: no copy outlives the fds
        # in the shards' order: each shard is read front to back, whatever the forward order
        order = sorted(pieces, key=lambda p: (p.shard, p.src))
        futures = {p: pool.submit(copier.copy, p) for p in order}
        for p in order:
            futures[p].result()
            bar.update(p.nbytes)
        crcs = [0] * len(entries)
        for p in pieces:  # in the file's order: each tensor's pieces in turn
            crc = futures[p].result()
            crcs[p.tensor] = crc if p.dst == entries[p.tensor].offset else \
                crc32_combine(crcs[p.tensor], crc, p.nbytes)
        return crcs
