"""Helpers for tests of a running instance: run the CLI, find its processes, wait for a condition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def c2cq(home: Path, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "C2CQ_HOME": str(home)}
    p = subprocess.run([sys.executable, "-m", "c2cq.cli", *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"c2cq {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def instance_pids(home: Path) -> set[int]:
    """Every live process whose command line or environment names this home."""
    pids = set()
    key = str(home).encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if key in (d / "cmdline").read_bytes() or key in (d / "environ").read_bytes():
                pids.add(int(d.name))
        except OSError:
            continue
    pids.discard(os.getpid())
    return pids


def wait_for(pred, timeout: float, what: str, interval: float = 0.05):
    """Poll a condition until it holds (the event itself has no other channel to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def status(home: Path) -> dict:
    return json.loads(c2cq(home, "status", "--json").stdout)


class Instance:
    def __init__(self, home: Path, slices: int, backend: str) -> None:
        self.home, self.slices, self.backend = home, slices, backend

    def up(self, *extra: str, http: bool = False) -> None:
        """Start it; ``http``: with the HTTP gateway on a free loopback port (``http_url``), else without
        (tests never take a fixed port)."""
        web = ("--http", "127.0.0.1:0") if http else ("--no-http",)
        c2cq(self.home, "up", "--backend", self.backend, "--slices", str(self.slices), "--detach", *web, *extra)
        wait_for(lambda: sum(e["state"] == "ready" for e in status(self.home)["executors"]) == self.slices,
                 30, f"{self.slices} ready executors")

    @property
    def http_url(self) -> str:
        """The running gateway's base URL (``http://127.0.0.1:PORT``)."""
        return json.loads((self.home / "run" / "http.json").read_text())["url"]

    def down(self) -> None:
        c2cq(self.home, "down")

    def cli(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return c2cq(self.home, *args, **kw)

    def stop(self) -> set[int]:
        """`c2cq down` if it still runs, then kill -9 every process of this home still left; returns those."""
        if (self.home / "run" / "supervisor.pid").exists():
            self.down()
        leftovers = instance_pids(self.home)
        for pid in leftovers:
            os.kill(pid, 9)
        return leftovers

    def teardown(self) -> None:
        """`c2cq down` if it still runs; then no process of this home may be left (any left is killed)."""
        leftovers = self.stop()
        assert not leftovers, f"processes left after c2cq down: {leftovers}"


class Tap:
    """Every frame a client (c2cq.client.AsyncClient) decodes, as (arrival time, message): what was
    really on the wire, duplicates included (the client drops those)."""

    def __init__(self, client) -> None:
        self.frames: list[tuple[float, object]] = []
        decode = client._codec.decode

        def tapped(frame):
            msg = decode(frame)
            self.frames.append((time.monotonic(), msg))
            return msg

        client._codec.decode = tapped


async def consume(stream) -> dict:
    """A stream to its end: the (seq, count) of each token batch, the token ids, the end (RequestFinished)."""
    seqs, toks = [], []
    async for t in stream:
        seqs.append((t.seq, len(t.token_ids)))
        toks += t.token_ids
    return {"seqs": seqs, "tokens": tuple(toks), "finished": stream.finished}


def check_exactly_once(results: dict[str, dict], frames: list[tuple[float, object]],
                       max_tokens: int | dict[str, int]) -> int:
    """Every request (``consume``'s results, by id) finished once, by length, with all its tokens
    (``max_tokens``: for every request, or by id), contiguous and in order; on the wire (a ``Tap``'s
    frames) a batch sent again is the batch sent before, never another, and each request has one end.
    Returns how many batches came again."""
    import msgspec

    from c2cq.schemas.client import RequestFinished, TokensEmitted

    for rid, r in results.items():
        assert r["finished"] is not None and r["finished"].finish_reason == "length", (rid, r["finished"])
        pos = 0
        for seq, n in r["seqs"]:
            assert seq == pos, (rid, r["seqs"])
            pos += n
        want = max_tokens if isinstance(max_tokens, int) else max_tokens[rid]
        assert pos == want == r["finished"].usage.completion_tokens, (rid, pos, want)
    batches: dict[tuple[str, int], tuple] = {}
    finished: dict[str, RequestFinished] = {}
    again = 0
    for _, m in frames:
        if isinstance(m, TokensEmitted):
            again += (m.request_id, m.seq) in batches
            assert batches.setdefault((m.request_id, m.seq), m.token_ids) == m.token_ids
        elif isinstance(m, RequestFinished):
            assert msgspec.structs.replace(finished.setdefault(m.request_id, m)) == m
    assert set(finished) == set(results)
    return again
