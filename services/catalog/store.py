"""The catalog's durable registry: the event log, the fold over it, and the single-writer lock."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from c2cq.errors import ConfigError
from c2cq.eventlog import EventLog
from c2cq.schemas.catalog import CatalogEvent
from c2cq.services.catalog import registry


class CatalogStore:
    """Owns ``<catalog_dir>/registry.db``. Only one process holds it at a time (flock)."""

    def __init__(self, catalog_dir: Path, source: str = "catalog") -> None:
        catalog_dir.mkdir(parents=True, exist_ok=True)
        self.dir = catalog_dir
        self._lock_fd = os.open(catalog_dir / "lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ConfigError(f"the catalog in {catalog_dir} is held by another process (is `c2cq up` running?)")
        self.log = EventLog(catalog_dir / "registry.db", CatalogEvent)
        self.reg = registry.Registry()
        self.source = source
        self.seq = 0
        for _, ev in self.log.replay():
            registry.apply(self.reg, ev)
            self.seq = max(self.seq, ev.seq) if ev.source == source else self.seq

    def handle(self, msg):
        events, reply = registry.handle(self.reg, msg, source=self.source, seq=self.seq + 1, ts_ns=time.monotonic_ns())
        if events:
            self.log.append(events)
            for ev in events:
                registry.apply(self.reg, ev)
            self.seq += len(events)
        return reply

    def close(self) -> None:
        self.log.close()
        os.close(self._lock_fd)
