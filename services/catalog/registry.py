"""The catalog's registry: a fold over ModelRegistered / ModelRemoved events (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import msgspec

from c2cq.schemas.catalog import (
    CatalogError,
    DescribeModel,
    ListFiles,
    ListModels,
    ModelFiles,
    ModelInfo,
    ModelInfoReply,
    ModelListReply,
    ModelRegistered,
    ModelRemoved,
    RegisterModel,
    RemoveModel,
)
from c2cq.schemas.enums import ErrorCode

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(slots=True)
class Entry:
    info: ModelInfo
    path: str | None  # the model file in the catalog dir (real models)


@dataclass(slots=True)
class Registry:
    models: dict[str, Entry] = field(default_factory=dict)


def apply(reg: Registry, ev: ModelRegistered | ModelRemoved) -> None:
    if isinstance(ev, ModelRegistered):
        reg.models[ev.info.name] = Entry(ev.info, ev.path)
    else:
        reg.models.pop(ev.name, None)


def _bare(info: ModelInfo) -> ModelInfo:
    return msgspec.structs.replace(info, shm=None)


def _err(code: ErrorCode, text: str) -> CatalogError:
    return CatalogError(code=code, message=text)


def handle(reg: Registry, msg, *, source: str, seq: int, ts_ns: int):
    """Returns (events to append then apply, the reply)."""
    if isinstance(msg, DescribeModel):
        e = reg.models.get(msg.name)
        return [], (ModelInfoReply(info=e.info) if e else _err(ErrorCode.UNKNOWN_MODEL, f"unknown model {msg.name!r}"))
    if isinstance(msg, ListModels):
        return [], ModelListReply(models=tuple(e.info for _, e in sorted(reg.models.items())))
    if isinstance(msg, ListFiles):
        return [], ModelFiles(files=tuple(RegisterModel(info=_bare(e.info), path=e.path)
                                          for _, e in sorted(reg.models.items())))
    if isinstance(msg, RegisterModel):
        bad = check_info(msg.info)
        if bad:
            return [], _err(ErrorCode.BAD_MODEL, bad)
        old = reg.models.get(msg.info.name)
        if old is not None:  # the same registration again is a no-op; a different one must not replace it
            if (_bare(old.info), old.path) == (_bare(msg.info), msg.path):
                return [], ModelInfoReply(info=old.info)
            return [], _err(ErrorCode.BAD_MODEL, f"model {msg.info.name!r} is already registered with another "
                            f"description or file (c2cq models rm {msg.info.name} first)")
        ev = ModelRegistered(source=source, seq=seq, ts_ns=ts_ns, info=msg.info, path=msg.path)
        return [ev], ModelInfoReply(info=msg.info)
    if isinstance(msg, RemoveModel):
        if msg.name not in reg.models:
            return [], _err(ErrorCode.UNKNOWN_MODEL, f"unknown model {msg.name!r}")
        ev = ModelRemoved(source=source, seq=seq, ts_ns=ts_ns, name=msg.name)
        return [ev], ModelListReply(models=())
    raise TypeError(f"no handler for {type(msg).__name__}")


HANDLED = (DescribeModel, ListModels, RegisterModel, RemoveModel, ListFiles)


def check_info(info: ModelInfo) -> str | None:
    if not NAME_RE.fullmatch(info.name):  # match() would let a trailing newline through `$`
        return f"model name {info.name!r} must match {NAME_RE.pattern}"
    for k in ("parameters", "bytes", "vocab_size", "num_layers", "hidden_size", "max_context"):
        if getattr(info, k) <= 0:
            return f"{k} must be positive, got {getattr(info, k)}"
    return None
