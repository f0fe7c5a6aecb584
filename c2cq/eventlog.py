"""A durable, append-only event log in SQLite (WAL mode).

A torn write at a crash loses at most the uncommitted batch: SQLite's journal keeps what came
before intact. ``sqlite3 events.db 'select * from events'`` lets an operator audit it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from c2cq.codec import Codec, encode

_SCHEMA = """
create table if not exists events (
    id integer primary key autoincrement,
    ts_ns integer not null,
    kind text not null,
    key text,
    body blob not null
);
create index if not exists events_key on events(key);
create table if not exists snapshots (
    upto integer primary key,
    body blob not null
);
"""


class EventLog:
    def __init__(self, path: Path, union: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("pragma journal_mode=wal")
        self._db.execute("pragma synchronous=normal")
        self._db.executescript(_SCHEMA)
        self._codec: Codec = Codec(union)

    def append(self, events: Iterable[msgspec.Struct], ts_ns: int = 0, key_of=None) -> int:
        """Append a batch in one transaction; returns the id of the last row."""
        rows = [
            (ts_ns or getattr(e, "ts_ns", 0), type(e).__struct_config__.tag, key_of(e) if key_of else None, encode(e))
            for e in events
        ]
        if not rows:
            return self.last_id()
        with self._db:
            self._db.execute("begin")
            self._db.executemany("insert into events(ts_ns, kind, key, body) values (?,?,?,?)", rows)
        return self.last_id()

    def last_id(self) -> int:
        row = self._db.execute("select max(id) from events").fetchone()
        return row[0] or 0

    def replay(self, after: int = 0) -> Iterator[tuple[int, Any]]:
        for rid, body in self._db.execute("select id, body from events where id > ? order by id", (after,)):
            yield rid, self._codec.decode(body)

    def by_key(self, key: str) -> Iterator[tuple[int, Any]]:
        for rid, body in self._db.execute("select id, body from events where key = ? order by id", (key,)):
            yield rid, self._codec.decode(body)

    def tail(self, n: int) -> list[tuple[int, Any]]:
        rows = self._db.execute("select id, body from events order by id desc limit ?", (n,)).fetchall()
        return [(rid, self._codec.decode(body)) for rid, body in reversed(rows)]

    def save_snapshot(self, upto: int, body: bytes) -> None:
        with self._db:
            self._db.execute("insert or replace into snapshots(upto, body) values (?, ?)", (upto, body))

    def latest_snapshot(self) -> tuple[int, bytes] | None:
        row = self._db.execute("select upto, body from snapshots order by upto desc limit 1").fetchone()
        return (row[0], row[1]) if row else None

    def close(self) -> None:
        self._db.close()
