"""The scheduler's durable log: events appended before they are applied, snapshots, recovery.

A thin layer over c2cq.eventlog (SQLite, WAL): one transaction per loop iteration's batch, a
snapshot every ``snapshot_every`` events so a restart replays a bounded tail.
"""

from __future__ import annotations

import time
from pathlib import Path

from c2cq.eventlog import EventLog
from c2cq.rundir import RunDir
from c2cq.services.scheduler import core
from c2cq.services.scheduler.events import SchedEvent, SchedulerEvent
from c2cq.services.scheduler.state import Config, State, decode_state, encode_state


def log_path(rd: RunDir) -> Path:
    return rd.home / "scheduler" / "events.db"


class Journal:
    def __init__(self, path: Path, snapshot_every: int = 20_000) -> None:
        self.log = EventLog(path, SchedulerEvent)
        self.snapshot_every = snapshot_every
        self.last_id = self.log.last_id()
        self._snap_id = 0

    def load(self, cfg: Config) -> tuple[State, int]:
        """The state folded from the latest snapshot and the events after it; and how many were replayed."""
        snap = self.log.latest_snapshot()
        st, after = (core.check_indexes(decode_state(snap[1], cfg)), snap[0]) if snap else (State(cfg=cfg), 0)
        self._snap_id = after
        n = 0
        for _, e in self.log.replay(after):
            core.apply(st, e)
            n += 1
        return st, n

    def append(self, st: State, events: list[SchedEvent]) -> None:
        """Make a batch durable (one transaction) before any of it is applied."""
        self.last_id = self.log.append(events, ts_ns=time.time_ns(), key_of=lambda e: core.event_key(st, e))

    def maybe_snapshot(self, st: State, force: bool = False) -> bool:
        """Snapshot the state as of the last appended (and applied) event."""
        if not force and self.last_id - self._snap_id < self.snapshot_every:
            return False
        self.log.save_snapshot(self.last_id, encode_state(st))
        self._snap_id = self.last_id
        return True

    def close(self) -> None:
        self.log.close()
