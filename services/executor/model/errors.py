"""Errors of the model runtime, rooted in the project's typed hierarchy."""

from __future__ import annotations

from c2cq.errors import CapacityError, ModelError


class ModelConfigError(ModelError):
    """The Hugging Face config (or the checkpoint's tensors) is missing or has a bad value."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class UnsupportedArchitecture(ModelConfigError):
    """The checkpoint names an architecture, rope type or activation this runtime does not run."""


class OutOfKVBlocks(CapacityError):
    """The paged KV cache has no free block left."""


class OutOfHostKVBlocks(CapacityError):
    """The host KV pool has no room for the blocks a rotation would copy out."""


class KVRotationError(ModelError):
    """A rotation was asked for something the pools' accounting forbids: a block freed twice, a block used
    before its copy completed, a request in both tiers at once."""
