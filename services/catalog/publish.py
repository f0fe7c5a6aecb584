"""Publishing registered model files into shared memory, and the catalog's message handling."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec

from c2cq import log
from c2cq.schemas.catalog import ModelInfo, ModelInfoReply, ModelListReply, RegisterModel, RemoveModel
from c2cq.schemas.refs import ShmRef
from c2cq.services.catalog.store import CatalogStore


class Publisher:
    """Keeps one shared-memory copy of every real model file, for all executors to map."""

    def __init__(self, store: CatalogStore, shm_dir: Path) -> None:
        self.store, self.shm_dir = store, shm_dir
        self.published: dict[str, ShmRef] = {}
        self.log = log.get()

    def _publish(self, name: str, path: str) -> ShmRef | None:
        src = Path(path)
        if not src.is_file():
            self.log.error("model_file_missing", model=name, path=path)
            return None
        self.shm_dir.mkdir(parents=True, exist_ok=True)
        dst = self.shm_dir / f"{name}.c2cqm"
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            tmp = dst.with_suffix(f".tmp-{os.getpid()}")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        ref = ShmRef(path=str(dst), size=dst.stat().st_size)
        self.published[name] = ref
        return ref

    def publish_all(self) -> None:
        for name, e in self.store.reg.models.items():
            if e.path is not None:
                self._publish(name, e.path)

    def unpublish(self, name: str) -> None:
        ref = self.published.pop(name, None)
        if ref is not None:
            Path(ref.path).unlink(missing_ok=True)

    def unpublish_all(self) -> None:
        for name in list(self.published):
            self.unpublish(name)
        try:
            self.shm_dir.rmdir()
        except OSError:
            pass

    def _with_shm(self, info: ModelInfo) -> ModelInfo:
        ref = self.published.get(info.name)
        return msgspec.structs.replace(info, shm=ref) if ref is not None else info

    def handle(self, msg):
        reply = self.store.handle(msg)
        if isinstance(msg, RegisterModel) and isinstance(reply, ModelInfoReply) and msg.path is not None:
            self._publish(msg.info.name, msg.path)
        elif isinstance(msg, RemoveModel) and isinstance(reply, ModelListReply):
            self.unpublish(msg.name)
        if isinstance(reply, ModelInfoReply):
            return ModelInfoReply(info=self._with_shm(reply.info))
        if isinstance(reply, ModelListReply) and reply.models:
            return ModelListReply(models=tuple(self._with_shm(m) for m in reply.models))
        return reply
