"""HF model folder -> ``.c2cqm``: read and validate the checkpoint, then copy each tensor's bytes from its
shard into the model file.

The dtype is kept, so conversion is a copy of byte ranges into aligned offsets plus a CRC32 per tensor
(``shardcopy``: several pieces in flight, O_DIRECT where the bytes are not in the page cache; no
torch). The output appears atomically (``modelwrite``): bytes go to ``<dst>.tmp-<pid>`` in the same
folder, which is fsynced and renamed; any failure removes it.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Any, Callable

import msgspec

from c2cq.services.catalog import layout, modelwrite, shardcopy
from c2cq.services.catalog.validate import CheckpointError, check_checkpoint

SAFETENSORS_DTYPES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F64": "F64", "I64": "I64", "I32": "I32",
                      "I16": "I16", "I8": "I8", "U8": "U8", "BOOL": "BOOL", "F8_E4M3": "F8_E4M3", "F8_E5M2": "F8_E5M2"}


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


def copy_tensors(dst: Path, entries: tuple[layout.TensorEntry, ...], sources: list[SourceTensor],
                 meta: dict[str, Any], *, alignment: int, progress: bool, source: str,
                 also: Path | None = None) -> tuple[layout.Index, int]:
    """Write the model file of ``entries`` whose bytes lie in shards at ``sources``; atomic; (index, size).
    ``also``: where to put a byte-identical copy, best effort (``modelwrite.Tee``)."""

    def fill(tmp: Path, fd: int, tee: modelwrite.Tee) -> list[int]:
        with modelwrite.progress_bar(sum(e.nbytes for e in entries), dst, progress) as bar:
            return shardcopy.copy_shards(str(tmp), fd, tee, entries, sources, bar)

    return modelwrite.atomic_model_file(Path(dst), entries, fill, meta, alignment, source, also)


def convert_hf(
    src_dir: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    *,
    progress: bool = True,
    alignment: int = layout.DEFAULT_ALIGNMENT,
    clock: Callable[[], float] = time.perf_counter,
    also: Path | None = None,
) -> ConvertResult:
    """Validate an HF folder and write it as one ``.c2cqm`` file at ``dst_path`` (atomically); ``also``:
    where to put a byte-identical copy, best effort (``modelwrite.Tee``)."""
    t0 = clock()
    src, dst = Path(src_dir), Path(dst_path)
    meta = read_metadata(src)
    tensors = collect_tensors(src)
    arch = check_checkpoint(meta["config"], {n: (t.dtype, t.shape) for n, t in tensors.items()}, source=str(src))
    order = layout.forward_order(tensors)
    entries = layout.plan([(n, tensors[n].dtype, tensors[n].shape) for n in order], alignment)
    index, size = copy_tensors(dst, entries, [tensors[n] for n in order], meta, alignment=alignment,
                               progress=progress, source=str(src), also=also)
    return ConvertResult(path=str(dst), architecture=arch, num_tensors=len(order),
                         tensor_bytes=sum(e.nbytes for e in index.tensors), file_bytes=size,
                         checksum=index.checksum, seconds=clock() - t0)
