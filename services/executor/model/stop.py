"""Stop strings on streamed text: cut at the first match, hold back what may start one."""

from __future__ import annotations


class StopText:
    """Accumulates a request's output text and releases only what no stop string can still claim."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.text = ""  # all text so far, cut at a stop string once one matched
        self.emitted = 0  # characters of ``text`` already released
        self.stopped = False

    def _held(self) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best

    def add(self, delta: str) -> str:
        """Append ``delta``; return the text now safe to stream. Sets ``stopped`` on a match."""
        if self.stopped:
            return ""
        start = max(0, len(self.text) - max((len(s) for s in self.stops), default=0))
        self.text += delta
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
            return self.flush()
        end = len(self.text) - self._held()
        out = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out

    def flush(self) -> str:
        """Everything not yet released (at the end of the request)."""
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out
