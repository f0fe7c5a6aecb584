"""What filesystem a file is on, from fstatfs: memory (tmpfs, ramfs) or huge pages (hugetlbfs).

Model files are published into a memory filesystem, /dev/shm by default or a hugetlbfs mount when
configured (``c2cq up --shm-root``). hugetlbfs backs files with huge pages (2 MiB on x86): 512 times
fewer page faults when a slice first reads a model, and no page allocation while copying into it.
It also has rules of its own: no write(2), and sizes in whole huge pages; callers ask here.
"""

from __future__ import annotations

import ctypes
import os
import struct

TMPFS, RAMFS, HUGETLBFS = 0x01021994, 0x858458F6, 0x958458F6  # statfs f_type

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)


def statfs(fd: int) -> tuple[int, int]:
    """(f_type, f_bsize) of ``fd``'s filesystem; (0, 0) when it cannot be told. hugetlbfs reports its
    huge page size as f_bsize."""
    buf = ctypes.create_string_buffer(256)  # a struct statfs: f_type then f_bsize, both longs
    if _libc.fstatfs(fd, buf) != 0:
        return 0, 0
    f_type, f_bsize = struct.unpack_from("ll", buf)
    return f_type, f_bsize


def in_memory(fd: int) -> bool:
    """Whether writes to ``fd`` are memcpys into page-cache pages (tmpfs, ramfs)."""
    return statfs(fd)[0] in (TMPFS, RAMFS)


def huge_page_size(fd: int) -> int:
    """The huge page size when ``fd`` is on hugetlbfs, else 0."""
    f_type, f_bsize = statfs(fd)
    return f_bsize if f_type == HUGETLBFS else 0


def _of_path(path: str | os.PathLike[str], question):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return question(-1)
    try:
        return question(fd)
    finally:
        os.close(fd)


def huge_page_size_of(path: str | os.PathLike[str]) -> int:
    """``huge_page_size`` of a path (a file or a folder); 0 when it cannot be opened."""
    return _of_path(path, huge_page_size)


def in_memory_path(path: str | os.PathLike[str]) -> bool:
    """``in_memory`` of a path (a file or a folder); False when it cannot be opened."""
    return _of_path(path, in_memory)


def drop_page_cache(path: str | os.PathLike[str]) -> bool:
    """Evict a file's pages from the page cache, as if it had not been read for a while: fsync (dirty
    pages cannot be dropped), then posix_fadvise DONTNEED on this file only — no root needed, nothing
    else disturbed. False on a memory filesystem, where the pages are the file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if in_memory(fd) or huge_page_size(fd):
            return False
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    finally:
        os.close(fd)
