"""The c2cq model file (``.c2cqm``): one aligned, forward-ordered file per model.

Layout (little-endian)::

    [0, alignment)            header: magic, version, alignment, index and data extents, index crc
    [alignment, data_end)     tensors, each starting on an ``alignment`` boundary, in forward order
    [index_offset, +length)   msgpack index: tensor entries, HF config, tokenizer, chat template

The index comes last because each entry's CRC32 is known only once its bytes are written. The file
size must equal ``index_offset + index_length``, so truncation is caught on open; ``verify()``
re-hashes every tensor to catch corruption. Tensors come back as zero-copy views of a read-only
``MAP_SHARED`` mapping: a second process mapping the same file shares the same pages.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import msgspec

from c2cq.errors import ModelError
from c2cq.services.catalog import fs

if TYPE_CHECKING:
    import torch

MAGIC = b"C2CQMDL\x00"
VERSION = 1
EXTENSION = ".c2cqm"
DEFAULT_ALIGNMENT = 4096
HUGEPAGE_ALIGNMENT = 2 << 20
_HEADER = struct.Struct("<8sIIQQQQQI")  # magic, version, header_size, alignment, index off/len, data off/end, index crc

ITEMSIZE: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4}  # the dtypes a model file holds
DTYPES = tuple(ITEMSIZE)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a model file's dtype name. torch is imported here, not with the module:
    converting and publishing need no torch (it costs ~2 s of every `c2cq models add`)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


class ModelFileError(ModelError):
    """A ``.c2cqm`` file is not one, is of an unknown version, truncated or corrupted."""


class TensorEntry(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    dtype: str  # one of DTYPES
    shape: tuple[int, ...]
    offset: int  # from the start of the file, a multiple of the file's alignment
    nbytes: int
    crc32: int = 0


class Index(msgspec.Struct, frozen=True, kw_only=True):
    tensors: tuple[TensorEntry, ...]
    config: dict[str, Any]
    checksum: str  # blake2b over (name, nbytes, crc32) of every tensor, in file order
    generation_config: dict[str, Any] | None = None
    tokenizer_json: bytes | None = None
    tokenizer_config: dict[str, Any] | None = None
    chat_template: str | None = None
    source: str = ""


def align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def check_alignment(alignment: int) -> None:
    if alignment < 4096 or alignment & (alignment - 1):
        raise ModelFileError(f"alignment must be a power of two >= 4096, got {alignment}")


# ---- forward order -------------------------------------------------------------------------------

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)$")
# Role ranks inside one decoder layer, in the order the forward pass reads them.
_LAYER_ROLES = (
    "input_layernorm",
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
    "self_attn.q_norm", "self_attn.k_norm", "self_attn.o_proj",
    "post_attention_layernorm",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    "mlp.gate", "block_sparse_moe.gate",
    "@experts",
    "mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj",
    "mlp.shared_expert_gate",
)
_LAYER_RANK = {role: i for i, role in enumerate(_LAYER_ROLES)}
_EXPERT_RANK = {"gate_proj": 0, "w1": 0, "up_proj": 1, "w3": 1, "down_proj": 2, "w2": 2}
_PARAM_RANK = {"weight": 0, "bias": 1}
_UNKNOWN = 1 << 30


def _split_param(name: str) -> tuple[str, int]:
    stem, _, param = name.rpartition(".")
    return (stem, _PARAM_RANK[param]) if param in _PARAM_RANK else (name, 2)


def forward_order_key(name: str) -> tuple:
    """Sort key: embeddings, then each layer in forward order, final norm, lm_head, unknown names."""
    if name == "model.embed_tokens.weight":
        return (0, 0, 0, 0, 0, 0, name)
    if name == "model.norm.weight":
        return (2, 0, 0, 0, 0, 0, name)
    if name == "lm_head.weight":
        return (2, 1, 0, 0, 0, 0, name)
    layer = _LAYER.match(name)
    if layer is not None:
        stem, param = _split_param(layer.group(2))
        expert = _EXPERT.match(stem)
        if expert is not None and expert.group(2) in _EXPERT_RANK:
            return (1, int(layer.group(1)), _LAYER_RANK["@experts"], int(expert.group(1)),
                    _EXPERT_RANK[expert.group(2)], param, name)
        if stem in _LAYER_RANK:
            return (1, int(layer.group(1)), _LAYER_RANK[stem], 0, 0, param, name)
        return (1, int(layer.group(1)), _UNKNOWN, 0, 0, 0, name)
    return (3, 0, 0, 0, 0, 0, name)


def forward_order(names: Iterable[str]) -> list[str]:
    return sorted(names, key=forward_order_key)


# ---- writing -------------------------------------------------------------------------------------


def plan(specs: Iterable[tuple[str, str, tuple[int, ...]]], alignment: int = DEFAULT_ALIGNMENT) -> tuple[TensorEntry, ...]:
    """Offsets for ``(name, dtype, shape)`` in the given order; data starts after the header page."""
    check_alignment(alignment)
    entries, offset = [], alignment
    for name, dtype, shape in specs:
        if dtype not in DTYPES:
            raise ModelFileError(f"tensor {name}: unsupported dtype {dtype!r} (supported: {sorted(DTYPES)})")
        nbytes = ITEMSIZE[dtype]
        for dim in shape:
            nbytes *= dim
        entries.append(TensorEntry(name=name, dtype=dtype, shape=tuple(shape), offset=offset, nbytes=nbytes))
        offset = align_up(offset + nbytes, alignment)
    return tuple(entries)


def data_end(entries: tuple[TensorEntry, ...], alignment: int) -> int:
    return align_up(entries[-1].offset + entries[-1].nbytes, alignment) if entries else alignment


def content_checksum(entries: Iterable[TensorEntry]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for e in entries:
        h.update(msgspec.msgpack.encode((e.name, e.nbytes, e.crc32)))
    return h.hexdigest()


def tail(index: Index, alignment: int) -> tuple[bytes, int, bytes]:
    """What completes a file whose tensors are written: (the index, where it starts, the header at 0)."""
    body = msgspec.msgpack.encode(index)
    start = data_end(index.tensors, alignment)
    header = _HEADER.pack(MAGIC, VERSION, _HEADER.size, alignment, start, len(body), alignment, start,
                          zlib.crc32(body))
    return body, start, header


def size_bound(entries: tuple[TensorEntry, ...], meta: dict[str, Any], alignment: int, source: str) -> int:
    """The most bytes a file of ``entries`` and ``meta`` can take, before the tensors' CRC32s are known
    (a CRC32 encodes in at most 5 bytes): for writers that must size the file first."""
    widest = tuple(msgspec.structs.replace(e, crc32=0xFFFFFFFF) for e in entries)
    index = Index(tensors=widest, checksum=content_checksum(widest), source=source, **meta)
    body, start, _ = tail(index, alignment)
    return start + len(body)


def finalize(fd: int, index: Index, alignment: int) -> int:
    """Write the index after the data and the header at 0; return the file size. Tensors are already written."""
    body, start, header = tail(index, alignment)
    end = start + len(body)
    os.pwrite(fd, body, start)
    os.ftruncate(fd, end)
    os.pwrite(fd, header, 0)
    return end


# ---- reading -------------------------------------------------------------------------------------

_index_decoder = msgspec.msgpack.Decoder(Index)


class ModelFile:
    """An open ``.c2cqm`` file: its index read eagerly, its tensors mapped lazily and zero-copy."""

    def __init__(self, path: Path, index: Index, alignment: int, size: int, populate: bool = False) -> None:
        self.path = path
        self.index = index
        self.alignment = alignment
        self.size = size
        self.entries = {e.name: e for e in index.tensors}
        self._populate = populate
        self._mm: mmap.mmap | None = None

    config = property(lambda self: self.index.config)
    generation_config = property(lambda self: self.index.generation_config)
    tokenizer_json = property(lambda self: self.index.tokenizer_json)
    tokenizer_config = property(lambda self: self.index.tokenizer_config)
    chat_template = property(lambda self: self.index.chat_template)

    def mapping(self) -> mmap.mmap:
        """The whole file, mapped read-only and shared (mapped on first use)."""
        if self._mm is None:
            flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if self._populate else 0)
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), self.size, flags=flags, prot=mmap.PROT_READ)
        return self._mm

    def tensor(self, name: str) -> torch.Tensor:
        """A read-only view of one tensor's bytes in the shared mapping (writing to it faults)."""
        e = self.entries.get(name)
        if e is None:
            raise KeyError(name)
        import torch

        dtype = torch_dtype(e.dtype)
        if e.nbytes == 0:
            return torch.empty(e.shape, dtype=dtype)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            flat = torch.frombuffer(self.mapping(), dtype=dtype, count=e.nbytes // ITEMSIZE[e.dtype], offset=e.offset)
        return flat.view(e.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: self.tensor(name) for name in self.entries}

    def verify(self) -> None:
        """Re-hash every tensor; raise ModelFileError naming the first one whose bytes changed."""
        view = memoryview(self.mapping())
        try:
            for e in self.index.tensors:
                if zlib.crc32(view[e.offset:e.offset + e.nbytes]) != e.crc32:
                    raise ModelFileError(f"{self.path}: tensor {e.name} is corrupted (crc32 mismatch)")
        finally:
            view.release()
        if content_checksum(self.index.tensors) != self.index.checksum:
            raise ModelFileError(f"{self.path}: index checksum mismatch")

    def close(self) -> None:
        """Unmap; fails with BufferError while tensors from ``tensor()`` are still alive."""
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        except BufferError:
            pass  # tensors still reference the mapping; it is released with them


def read_layout(path: str | os.PathLike[str], *, populate: bool = False) -> ModelFile:
    """Open a model file: check header, size and index; map nothing until a tensor is asked for."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot open: {e.strerror}") from e
    try:
        size = os.fstat(fd).st_size
        raw = os.pread(fd, _HEADER.size, 0)
        if len(raw) < _HEADER.size:
            raise ModelFileError(f"{path}: truncated header ({size} bytes)")
        magic, version, _, alignment, index_off, index_len, data_off, data_stop, index_crc = _HEADER.unpack(raw)
        if magic != MAGIC:
            raise ModelFileError(f"{path}: not a c2cq model file (bad magic)")
        if version != VERSION:
            raise ModelFileError(f"{path}: unsupported format version {version} (this build reads {VERSION})")
        end, page = index_off + index_len, fs.huge_page_size(fd)
        if size != end and not (page and end < size <= align_up(end, page)):  # hugetlbfs: whole huge pages
            raise ModelFileError(f"{path}: truncated or padded: {size} bytes, header says {end}")
        body = os.pread(fd, index_len, index_off)
    finally:
        os.close(fd)
    if zlib.crc32(body) != index_crc:
        raise ModelFileError(f"{path}: index is corrupted (crc32 mismatch)")
    try:
        index = _index_decoder.decode(body)
    except msgspec.DecodeError as e:
        raise ModelFileError(f"{path}: index does not decode: {e}") from e
    for e in index.tensors:
        if e.offset % alignment or e.offset < data_off or e.offset + e.nbytes > data_stop or e.dtype not in DTYPES:
            raise ModelFileError(f"{path}: tensor {e.name} has a bad extent or dtype")
    return ModelFile(path, index, alignment, end, populate=populate)
