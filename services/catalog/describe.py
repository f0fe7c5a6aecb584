"""A model file's catalog description (ModelInfo), read from its index: no tensor is touched."""

from __future__ import annotations

import os
from typing import Any, Mapping

from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import ModelKind
from c2cq.services.catalog.layout import ModelFile, read_layout
from c2cq.services.catalog.validate import architecture_of


def _eos(config: Mapping[str, Any], generation: Mapping[str, Any] | None) -> tuple[int, ...]:
    ids: list[int] = []
    for src in (config, generation or {}):
        v = src.get("eos_token_id")
        for i in (v if isinstance(v, list) else [v]):
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return tuple(ids)


def info_of(name: str, mf: ModelFile) -> ModelInfo:
    cfg = mf.config
    dtypes = {e.dtype for e in mf.index.tensors}
    return ModelInfo(
        name=name, kind=ModelKind.REAL, architecture=architecture_of(cfg),
        parameters=sum(_numel(e.shape) for e in mf.index.tensors),
        bytes=sum(e.nbytes for e in mf.index.tensors),
        dtype=dtypes.pop() if len(dtypes) == 1 else "mixed",
        vocab_size=int(cfg["vocab_size"]), num_layers=int(cfg["num_hidden_layers"]),
        hidden_size=int(cfg["hidden_size"]), max_context=int(cfg.get("max_position_embeddings") or 4096),
        eos_token_ids=_eos(cfg, mf.generation_config),
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def describe_file(name: str, path: str | os.PathLike[str]) -> ModelInfo:
    """The description of the model file at ``path``; ModelFileError when it is not a readable one."""
    mf = read_layout(path)
    try:
        return info_of(name, mf)
    finally:
        mf.close()
