"""The simulator's typed errors."""

from __future__ import annotations

from c2cq.errors import C2CQError


class SimError(C2CQError):
    """An invariant of the simulation broke (time went backwards, a request ended twice, ...)."""

    code = "sim"
