"""Restart policy (pure): back-off between restarts, and "failed" after too many in a window."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    max_restarts: int = 5  # within window_s; one more and the child is marked failed
    window_s: float = 60.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0


@dataclass(slots=True)
class RestartHistory:
    times: list[float] = field(default_factory=list)

    def decide(self, policy: RestartPolicy, now: float) -> float | None:
        """Seconds to wait before restarting, or None when the child has failed too often."""
        self.times = [t for t in self.times if now - t < policy.window_s]
        if len(self.times) >= policy.max_restarts:
            return None
        delay = min(policy.backoff_max_s, policy.backoff_initial_s * (2 ** len(self.times)))
        self.times.append(now)
        return delay
