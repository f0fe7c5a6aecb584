"""Writing a ``.c2cqm`` file atomically, and optionally a second copy of it on the side (a ``Tee``).

``atomic_model_file`` hands a fill function the temporary file ``<dst>.tmp-<pid>`` (in the same folder);
then the index and header follow, the file is fsynced and renamed over ``dst``; any failure removes it.
``write_model_file`` fills it from in-memory buffers (generated and dequantised models); HF folders
are copied by ``shardcopy``.

A tee receives every write of the tensors too and gets the same index, so it ends up byte-identical.
``c2cq models add`` points it into the running catalog's shared-memory folder (tmpfs or hugetlbfs): the
catalog then publishes the model by renaming that copy, instead of reading the new file back from disk
and copying it into memory (measured here: 3 s of a 7 s registration of a 0.98 GB model). A tee is
best effort: an error drops the copy, never the conversion.
"""

from __future__ import annotations

import mmap
import os
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

import msgspec
from tqdm import tqdm

from c2cq.services.catalog import fs, layout
from c2cq.services.catalog.validate import CheckpointError

CHUNK = 64 << 20  # bytes per pwrite: large enough to amortise the syscall, small enough for smooth progress


def write_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class Tee:
    """A best-effort second copy of a model file being written; ``Tee(None)`` writes nothing.

    ``write`` may be called from several threads at once: an error only marks the copy failed (the
    descriptor stays open until ``finish`` or ``discard``, after the writers are done). On hugetlbfs,
    which takes no write(2), the copy is a shared mapping of the file sized by ``bound()`` (the most
    bytes the file can take) and rounded up to whole huge pages, as the catalog's published files are.
    """

    def __init__(self, path: Path | None, bound: Callable[[], int] = lambda: 0) -> None:
        self.path, self.tmp, self.fd, self.failed = path, None, -1, False
        self._map: mmap.mmap | None = None
        self._page = 0
        if path is None:
            return
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            self.fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError:
            return
        self.tmp = tmp
        self._page = fs.huge_page_size(self.fd)
        if self._page:
            try:
                size = layout.align_up(max(bound(), 1), self._page)
                os.ftruncate(self.fd, size)
                self._map = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError:  # not enough free huge pages: the catalog's own copy will say so
                self.failed = True

    def write(self, view: memoryview, offset: int) -> None:
        if self.fd < 0 or self.failed:
            return
        try:
            if self._map is None:
                write_all(self.fd, view, offset)
            elif offset + view.nbytes <= len(self._map):
                self._map[offset:offset + view.nbytes] = view
            else:
                self.failed = True
        except OSError:
            self.failed = True  # a full /dev/shm, say: the catalog will copy the file itself

    def finish(self, index: layout.Index, alignment: int) -> Path | None:
        """Write the index, put the copy in place; its path, or None when it was dropped."""
        if self.fd < 0:
            return None
        try:
            if self.failed:
                raise OSError("a write of the copy failed")
            if self._map is None:
                layout.finalize(self.fd, index, alignment)
            else:
                body, start, header = layout.tail(index, alignment)
                end = start + len(body)
                if end > len(self._map):
                    raise OSError("the index outgrew its bound")
                self._map[start:end] = body
                self._map[:len(header)] = header
                self._map.close()
                self._map = None
                os.ftruncate(self.fd, layout.align_up(end, self._page))
            os.close(self.fd)
            self.fd = -1
            os.rename(self.tmp, self.path)
            return self.path
        except OSError:
            self.discard()
            return None

    def discard(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def byte_view(raw: memoryview, entry: layout.TensorEntry) -> memoryview:
    if raw.nbytes != entry.nbytes:
        raise CheckpointError(f"tensor {entry.name}: {raw.nbytes} bytes, its shape needs {entry.nbytes}")
    if not raw.c_contiguous:
        raise CheckpointError(f"tensor {entry.name}: source buffer is not contiguous")
    return raw.cast("B") if raw.nbytes else memoryview(b"")


def atomic_model_file(
    dst: Path,
    entries: tuple[layout.TensorEntry, ...],
    fill: Callable[[Path, int, Tee], list[int]],
    meta: dict[str, Any],
    alignment: int,
    source: str,
    also: Path | None = None,
) -> tuple[layout.Index, int]:
    """Write a model file at ``dst`` atomically: ``fill(tmp, fd, tee)`` writes the tensors of ``entries``
    into the temporary file (``fd`` is open on it for writing), and into ``tee`` too, and returns their
    CRC32s; then the index and header follow, the file is fsynced and renamed over ``dst``. Any failure
    removes the temporary file. With ``also``, a byte-identical copy appears there (best effort)."""
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    tee = Tee(also, lambda: layout.size_bound(entries, meta, alignment, source))
    try:
        crcs = fill(tmp, fd, tee)
        done = [msgspec.structs.replace(e, crc32=c) for e, c in zip(entries, crcs, strict=True)]
        index = layout.Index(tensors=tuple(done), checksum=layout.content_checksum(done), source=source, **meta)
        size = layout.finalize(fd, index, alignment)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, dst)
        fsync_dir(dst.parent)
        tee.finish(index, alignment)
        return index, size
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        tee.discard()
        raise


def progress_bar(total: int, dst: Path, progress: bool) -> tqdm:
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
    also: Path | None = None,
) -> tuple[layout.Index, int]:
    """Write ``specs`` (in order) whose bytes ``data`` yields one buffer each; atomic; return (index, size).
    ``also``: where to put a byte-identical copy, best effort (see ``Tee``)."""
    dst = Path(dst)
    entries = layout.plan(specs, alignment)
    it = iter(data)

    def fill(_tmp: Path, fd: int, tee: Tee) -> list[int]:
        crcs = []
        with ThreadPoolExecutor(1, thread_name_prefix="c2cq-crc") as hasher, \
                progress_bar(sum(e.nbytes for e in entries), dst, progress) as bar:
            for entry in entries:
                buf = next(it)
                with memoryview(buf) as raw, byte_view(raw, entry) as view:
                    crc = hasher.submit(zlib.crc32, view)  # hashes on a second core while this one writes
                    try:
                        for at in range(0, entry.nbytes, CHUNK):
                            with view[at:at + CHUNK] as chunk:
                                write_all(fd, chunk, entry.offset + at)
                                tee.write(chunk, entry.offset + at)
                                bar.update(len(chunk))
                    finally:
                        crcs.append(crc.result())
                del buf
        return crcs

    try:
        return atomic_model_file(dst, entries, fill, meta, alignment, source, also)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()  # a generator over source mappings releases them now, not at garbage collection


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
