"""Handles to shared memory. Weights never travel over ZeroMQ; these do."""

from __future__ import annotations

import msgspec


class ShmRef(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # a file under /dev/shm (or a hugetlbfs mount) holding a c2cq model file
    size: int  # bytes


class TensorRef(msgspec.Struct, frozen=True, kw_only=True):
    shm: ShmRef
    offset: int
    shape: tuple[int, ...]
    dtype: str
