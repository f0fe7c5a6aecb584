"""The catalog's shared-memory side: every real model file published once in /dev/shm for all executors.

Wraps the registry's message handling: a RegisterModel with a path is checked (the file must lie
under one of the catalog's own folders — its models folder, the model store — after symlinks are
resolved; must open as a c2cq model file and agree with its description) and published *before* it is registered, so
a bad file is refused with nothing registered; a removed model is unpublished (mappings already
open in executors stay valid until they close them).

Registering a file is in two halves: ``prepare`` does the file work (checks, and publishing, which
may copy gigabytes) and touches no state, so the process shell runs it on a thread while the
catalog keeps answering; ``commit`` then registers it on the event loop.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgspec

from c2cq import log
from c2cq.errors import ModelError
from c2cq.schemas.catalog import (
    CatalogError,
    ModelFiles,
    ModelInfo,
    ModelInfoReply,
    ModelListReply,
    RegisterModel,
    RemoveModel,
)
from c2cq.schemas.enums import ErrorCode
from c2cq.schemas.refs import ShmRef
from c2cq.services.catalog import shm
from c2cq.services.catalog.describe import describe_file
from c2cq.services.catalog.store import CatalogStore


def _regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):  # missing, too long a name, a NUL byte, ...
        return False


def inside(path: str, roots: tuple[Path, ...]) -> bool:
    """Whether ``path``, symlinks resolved, lies under one of ``roots`` (also resolved)."""
    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError):
        return False
    return any(real.is_relative_to(os.path.realpath(r)) for r in roots)


class Publisher:
    """``publish=False``: a registry only (the control plane's catalog, on a host without slices): files
    are checked and registered, never copied into shared memory; a model's ``shm`` then names its file
    where it lies (the gateway reads its tokenizer and chat template from there)."""

    def __init__(self, store: CatalogStore, shm_dir: Path, roots: tuple[Path, ...], publish: bool = True) -> None:
        self.store, self.shm_dir, self.publish = store, Path(shm_dir), publish
        self.roots = tuple(Path(r) for r in roots)  # the only folders it reads model files from
        self.published: dict[str, ShmRef] = {}
        self.log = log.get()

    def _publish(self, name: str, path: str, staged: str | None = None) -> ShmRef:
        if not self.publish:
            return ShmRef(path=os.path.realpath(path), size=os.stat(path).st_size)
        self.shm_dir.mkdir(parents=True, exist_ok=True)
        keep = staged is not None and shm.is_staged(self.shm_dir, Path(staged))  # never anything outside the folder
        inode = os.lstat(staged).st_ino if keep else None
        dst = shm.publish(Path(path), self.shm_dir, name, Path(staged) if keep else None)
        st = dst.stat()
        self.log.info("published", model=name, bytes=st.st_size,
                      how="staged copy" if st.st_ino == inode else "from the model file")
        return ShmRef(path=str(dst), size=st.st_size)

    def publish_all(self) -> None:
        """At start: the folder exists (clients write staged copies into it), holds nothing stale, and
        every registered model file is published."""
        if self.publish:
            self.shm_dir.mkdir(parents=True, exist_ok=True)
        if self.publish and (gone := shm.sweep(self.shm_dir)):
            self.log.info("swept_stale_files", files=gone[:20], count=len(gone))
        for name, e in self.store.reg.models.items():
            if e.path is None:
                continue
            if not inside(e.path, self.roots):  # registered before the rule, or the store moved
                self.log.error("publish_refused", model=name, path=e.path, reason="outside the catalog's folders")
                continue
            try:
                self.published[name] = self._publish(name, e.path)
            except (ModelError, OSError) as err:  # one broken file must not keep the others from serving
                self.log.error("publish_failed", model=name, path=e.path, error=str(err))

    def unpublish(self, name: str) -> None:
        if self.published.pop(name, None) is not None and self.publish:
            shm.unpublish(self.shm_dir, name)

    def unpublish_all(self) -> None:
        for name in list(self.published):
            self.unpublish(name)
        if not self.publish:
            return
        shm.sweep(self.shm_dir)
        try:
            self.shm_dir.rmdir()
        except OSError:
            pass

    def _with_shm(self, info: ModelInfo) -> ModelInfo:
        ref = self.published.get(info.name)
        return msgspec.structs.replace(info, shm=ref) if ref is not None else info

    @staticmethod
    def is_file_registration(msg) -> bool:
        return isinstance(msg, RegisterModel) and msg.path is not None

    def prepare(self, msg: RegisterModel) -> CatalogError | ShmRef | None:
        """The file half of registering ``msg.path``: check it, publish it. Safe off the event loop (it
        reads the registry, changes nothing in it). None: the name is taken, the registry answers."""
        if msg.info.name in self.store.reg.models:
            return None
        if not inside(msg.path, self.roots):
            return CatalogError(code=ErrorCode.BAD_MODEL, message=f"{msg.path[:200]!r} is outside the catalog's "
                                f"folders ({', '.join(map(str, self.roots))}): refused")
        if not _regular_file(msg.path):  # a FIFO or device would block the catalog on open
            return CatalogError(code=ErrorCode.BAD_MODEL, message=f"{msg.path[:200]!r} is not a regular file")
        try:
            found = describe_file(msg.info.name, msg.path)
        except (ModelError, OSError) as e:
            return CatalogError(code=ErrorCode.BAD_MODEL, message=str(e))
        if (found.parameters, found.bytes, found.architecture) != (msg.info.parameters, msg.info.bytes,
                                                                    msg.info.architecture):
            return CatalogError(code=ErrorCode.BAD_MODEL, message=f"{msg.path} does not match the description "
                                f"sent for {msg.info.name!r} (the file changed since it was described?)")
        try:
            return self._publish(msg.info.name, msg.path, msg.staged)
        except (ModelError, OSError) as e:
            return CatalogError(code=ErrorCode.BAD_MODEL, message=f"cannot publish {msg.path}: {e}")

    def commit(self, msg: RegisterModel, prepared: CatalogError | ShmRef | None):
        """The registry half, on the event loop: register what ``prepare`` published; the reply."""
        if isinstance(prepared, CatalogError):
            return prepared
        reply = self.store.handle(msg)
        if isinstance(prepared, ShmRef):
            if isinstance(reply, ModelInfoReply):
                self.published[msg.info.name] = prepared
            else:  # taken meanwhile by a registration without a file
                if self.publish:
                    shm.unpublish(self.shm_dir, msg.info.name)
        return self._decorate(reply)

    def store_relative(self, path: str | None) -> str | None:
        """A model file's path as the nodes name it: relative to the model store it lies in (each node
        mounts the store where it will); a path in no store stays as it is (a node refuses it)."""
        if path is None:
            return None
        real = Path(os.path.realpath(path))
        for root in self.roots[1:]:  # roots[0] is the catalog's own folder, which no node can read
            if real.is_relative_to(os.path.realpath(root)):
                return str(real.relative_to(os.path.realpath(root)))
        return path

    def in_store(self, path: str) -> str:
        """A path from the registry's ModelFiles, on this host: under the first model store holding it."""
        if os.path.isabs(path):
            return path
        for root in self.roots[1:]:
            if (root / path).exists():
                return str(root / path)
        return str(self.roots[-1] / path)

    def _decorate(self, reply):
        if isinstance(reply, ModelFiles):
            return ModelFiles(files=tuple(msgspec.structs.replace(f, path=self.store_relative(f.path))
                                          for f in reply.files))
        if isinstance(reply, ModelInfoReply):
            return ModelInfoReply(info=self._with_shm(reply.info))
        if isinstance(reply, ModelListReply) and reply.models:
            return ModelListReply(models=tuple(self._with_shm(m) for m in reply.models))
        return reply

    def handle(self, msg):
        """Any message, all at once (a file registration's halves back to back)."""
        if self.is_file_registration(msg):
            return self.commit(msg, self.prepare(msg))
        reply = self.store.handle(msg)
        if isinstance(msg, RemoveModel) and isinstance(reply, ModelListReply):
            self.unpublish(msg.name)
        return self._decorate(reply)
