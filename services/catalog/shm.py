"""Publishing model files into a shared-memory folder (/dev/shm/c2cq-<instance>/) and mapping them.

``publish`` hard-links when source and folder share a filesystem (no copy, no extra memory) and
otherwise copies in-kernel (sendfile) to a temporary name and renames, so a reader never sees a partial file.
Executors open the published file with ``map_shared``: one read-only MAP_SHARED mapping whose pages
every process shares.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from c2cq.errors import ConfigError
from c2cq.services.catalog.layout import EXTENSION, ModelFile, read_layout

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def default_shm_dir(instance: str) -> Path:
    return Path("/dev/shm") / f"c2cq-{instance}"


def published_path(shm_dir: Path, name: str) -> Path:
    if not _NAME.match(name) or ".." in name:
        raise ConfigError(f"model name {name!r} cannot name a shared-memory file (letters, digits, . _ - only)")
    return Path(shm_dir) / f"{name}{EXTENSION}"


def _copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            size, offset = os.fstat(fin.fileno()).st_size, 0
            while offset < size:  # sendfile copies in the kernel, also across filesystems
                n = os.sendfile(fout.fileno(), fin.fileno(), offset, min(size - offset, 1 << 30))
                if n == 0:
                    raise OSError(f"{src} shrank while being copied")
                offset += n
            fout.flush()
            os.fsync(fout.fileno())
        os.rename(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish(model_file: Path, shm_dir: Path, name: str) -> Path:
    """Make ``model_file`` available as ``<shm_dir>/<name>.c2cqm``; idempotent for the same content."""
    model_file, dst = Path(model_file), published_path(shm_dir, name)
    source = read_layout(model_file)  # refuse to publish anything that is not a readable model file
    if dst.exists():
        current = read_layout(dst)
        if current.index.checksum == source.index.checksum and current.size == source.size:
            return dst
        dst.unlink()
    if os.stat(model_file).st_dev == os.stat(shm_dir).st_dev:
        tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        os.link(model_file, tmp)
        os.rename(tmp, dst)
    else:
        _copy(model_file, dst)
    return dst


def unpublish(shm_dir: Path, name: str) -> bool:
    """Remove a published model; mappings already open stay valid until closed. True if it existed."""
    dst = published_path(shm_dir, name)
    try:
        dst.unlink()
    except FileNotFoundError:
        return False
    return True


def map_shared(path: Path, *, populate: bool = False) -> ModelFile:
    """Open a published model file for zero-copy use; ``populate`` pre-faults every page (MAP_POPULATE)."""
    return read_layout(path, populate=populate)
