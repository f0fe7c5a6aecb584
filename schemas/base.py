"""Base classes of every wire message.

Every message is a frozen, tagged, keyword-only msgspec Struct with a stable explicit tag.
Evolution rule: append fields with defaults; never rename, retype or reorder (see contract/).
"""

from __future__ import annotations

import msgspec


class Message(msgspec.Struct, frozen=True, tag=True, kw_only=True, tag_field="t"):
    """A command or a reply. Subclasses set ``tag="…"`` explicitly."""


class Event(Message, frozen=True, kw_only=True):
    """A past-tense fact emitted by a service: consumers detect gaps and duplicates by ``seq``."""

    source: str  # the emitting service instance, e.g. "exec-0"
    seq: int  # +1 per source, starting at 1 for each boot
    ts_ns: int  # the source's monotonic clock (time.monotonic_ns)
