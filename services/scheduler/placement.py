"""Level 1, first version: least-loaded ready executor, preferring one that holds the model."""

from __future__ import annotations

from c2cq.services.scheduler.state import ExecutorView


def placement_key(ex: ExecutorView, model: str) -> tuple[int, int]:
    if ex.model == model:
        return (0, len(ex.active))  # holds it: batch with what it runs
    if not ex.active:
        return (1, 0)  # idle: switch to the model at once
    return (2, len(ex.active))  # busy with another model: queue behind it


def choose_executor(executors: dict[str, ExecutorView], model: str) -> ExecutorView | None:
    ready = [ex for ex in executors.values() if ex.state == "ready"]
    if not ready:
        return None
    return min(ready, key=lambda ex: (placement_key(ex, model), ex.executor_id))
