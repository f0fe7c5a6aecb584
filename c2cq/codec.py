"""One codec per socket Union. Decoding never raises anything but WireError."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from c2cq.errors import WireError

T = TypeVar("T")

MAX_FRAME_BYTES = 64 * 1024 * 1024  # a frame larger than this is refused before decoding

_encoder = msgspec.msgpack.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


class Codec(Generic[T]):
    """Decoder for one socket's Union of message types, built once."""

    def __init__(self, union: Any) -> None:
        self._decoder = msgspec.msgpack.Decoder(union)
        self.union = union

    def decode(self, frame: bytes | memoryview) -> T:
        if len(frame) > MAX_FRAME_BYTES:
            raise WireError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
        try:
            return self._decoder.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise WireError(str(e)) from None
        except (ValueError, TypeError, RecursionError, OverflowError) as e:  # e.g. bad enum value paths
            raise WireError(f"{type(e).__name__}: {e}") from None

    encode = staticmethod(encode)


def union_members(union: Any) -> tuple[type, ...]:
    """The Struct types of a Union (or a single type)."""
    return tuple(getattr(union, "__args__", (union,)))
