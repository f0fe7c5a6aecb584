"""Virtual time: a heap of timed callbacks, run in time order (ties: in the order scheduled)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

from c2cq.services.sim.errors import SimError


class Engine:
    def __init__(self) -> None:
        self.now = 0.0
        self.events = 0  # callbacks run so far
        self.stopped = False
        self._heap: list[tuple[float, int, Callable, tuple]] = []
        self._n = 0

    def at(self, t: float, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` at virtual time ``t`` (never earlier than now)."""
        if not t >= self.now:  # also catches NaN
            raise SimError(f"an event at {t} was scheduled in the past (now {self.now})")
        heapq.heappush(self._heap, (t, self._n, fn, args))
        self._n += 1

    def after(self, dt: float, fn: Callable, *args) -> None:
        self.at(self.now + dt, fn, *args)

    def stop(self) -> None:
        self.stopped = True

    def run(self, until: float = math.inf) -> None:
        """Run callbacks in time order until stopped, the heap is empty, or the next is past ``until``."""
        heap = self._heap
        while heap and not self.stopped:
            t = heap[0][0]
            if t > until:
                self.now = until
                return
            _, _, fn, args = heapq.heappop(heap)
            self.now = t
            fn(*args)
            self.events += 1


class Link:
    """One host link shared by the slices of a GPU: each of n concurrent users gets capacity / n."""

    def __init__(self, name: str, capacity_bps: float) -> None:
        self.name, self.capacity_bps = name, capacity_bps
        self.users = 0
        self.bytes = 0.0  # moved host → GPU so far

    def share(self, joining: bool = True) -> float:
        """The bandwidth one more (``joining``) or one current user gets now."""
        return self.capacity_bps / max(1, self.users + (1 if joining else 0))
