"""The slice's request queue: one model at a time, requests of other models wait their turn (pure)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from c2cq.schemas.executor import AssignRequest


@dataclass(slots=True)
class SliceQueue:
    model: str | None = None  # the model the backend serves now
    running: set[str] = field(default_factory=set)  # request ids inside the backend
    pending: deque[AssignRequest] = field(default_factory=deque)  # requests of other models, FIFO

    def admit(self, req: AssignRequest) -> bool:
        """True: give it to the backend now; False: it waits for a switch."""
        if req.model == self.model:
            self.running.add(req.request_id)
            return True
        self.pending.append(req)
        return False

    def remove(self, request_id: str) -> str:
        """'running', 'pending' or 'unknown' — where the request was."""
        if request_id in self.running:
            self.running.discard(request_id)
            return "running"
        for r in self.pending:
            if r.request_id == request_id:
                self.pending.remove(r)
                return "pending"
        return "unknown"

    def next_switch(self) -> tuple[str, list[AssignRequest]] | None:
        """When the backend is idle: the next model and every waiting request of it (FIFO)."""
        if self.running or not self.pending:
            return None
        model = self.pending[0].model
        take = [r for r in self.pending if r.model == model]
        self.pending = deque(r for r in self.pending if r.model != model)
        self.model = model
        self.running.update(r.request_id for r in take)
        return model, take
