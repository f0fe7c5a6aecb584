"""The scheduler shell: a congested executor (queue at its HWM) is not a lost one; malformed
frames are counted, not logged one line each; a dead catalog is asked once, not per client frame."""

from __future__ import annotations

import asyncio

import zmq
import zmq.asyncio

from c2cq.rundir import RunDir
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler import main as shell_main
from c2cq.services.scheduler.journal import Journal, log_path
from c2cq.services.scheduler.state import State
from c2cq.transport import FULL, GONE, SENT, Throttled, make_socket, try_send

from .history import ready, submit


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def warning(self, event: str, **kw) -> None:
        self.lines.append((event, kw))

    info = warning


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_throttled_logs_a_flood_as_one_line_a_second():
    log, clock = FakeLog(), Clock()
    warn = Throttled(log, "malformed_frames", clock=clock, socket="client")
    for i in range(10_000):
        warn(f"bad {i}")
        clock.t += 0.5 / 10_000  # 10,000 frames in half a second
    assert log.lines == [("malformed_frames", {"count": 1, "total": 1, "last_error": "bad 0", "socket": "client"})]
    clock.t += 0.6
    warn("bad last")
    assert len(log.lines) == 2 and log.lines[1][1]["count"] == 9_999 + 1 and log.lines[1][1]["total"] == 10_001
    warn.flush()
    assert len(log.lines) == 2  # nothing pending


def test_throttled_flushes_the_tail_of_a_burst_on_the_loop():
    log = FakeLog()

    async def go():
        warn = Throttled(log, "malformed_frames", interval_s=0.05)
        for _ in range(100):
            warn("bad")
        await asyncio.sleep(0.2)

    asyncio.run(go())
    assert [kw["count"] for _, kw in log.lines] == [1, 99]


async def _send_results(tmp_path) -> tuple[list[str], str]:
    ctx = zmq.asyncio.Context()
    dealer = make_socket(ctx, zmq.DEALER, connect=f"ipc://{tmp_path}/nobody.ipc", hwm=2)
    router = make_socket(ctx, zmq.ROUTER, bind=f"ipc://{tmp_path}/r.ipc")
    try:
        full = [try_send(dealer, [b"m"]) for _ in range(6)]
        gone = try_send(router, [b"nobody", b"x"])
        return full, gone
    finally:
        dealer.close(linger=0)
        router.close(linger=0)
        ctx.term()


def test_try_send_tells_a_full_queue_from_a_gone_peer(tmp_path):
    full, gone = asyncio.run(_send_results(tmp_path))
    assert full[0] == SENT and full[-1] == FULL
    assert gone == GONE


def _shell(tmp_path, monkeypatch, results: list[str]):
    """A shell whose executor sends answer from ``results`` (last one repeats); returns it and the sent frames."""
    sent: list[list[bytes]] = []

    def fake(sock, frames):
        res = results.pop(0) if len(results) > 1 else results[0]
        if res == SENT:
            sent.append(frames)
        return res

    monkeypatch.setattr(shell_main, "try_send", fake)
    rd = RunDir(tmp_path)
    shell = shell_main.Shell(rd, State(), Journal(log_path(rd)))
    shell.log = FakeLog()
    return shell, sent


async def test_a_congested_executor_keeps_its_commands_in_order_and_is_not_lost(tmp_path, monkeypatch):
    results = [FULL]
    shell, sent = _shell(tmp_path, monkeypatch, results)
    try:
        shell.ingest([ready("e0", 0.0), submit("r1", 0.1), submit("r2", 0.2)])
        assert shell.state.executors["e0"].state == "ready"  # not lost
        # r1's assignment, the fresh plan for the batch it starts, r2's assignment
        assert [len(b) for _, b in shell.exec_outbox.values()] == [3] and sent == []
        results[:] = [SENT]
        shell.flush_executors()
        assert not shell.exec_outbox
        assert [f[0] for f in sent] == [b"e0", b"e0", b"e0"]
        assert [b"r1" in f[1] for f in sent] == [True, False, False]  # in order
        assert [b"r2" in f[1] for f in sent] == [False, False, True]
    finally:
        shell.close()
        shell.journal.close()


async def test_a_gone_executor_is_lost_and_its_queued_commands_dropped(tmp_path, monkeypatch):
    results = [FULL]
    shell, sent = _shell(tmp_path, monkeypatch, results)
    try:
        shell.ingest([ready("e0", 0.0), submit("r1", 0.1)])
        results[:] = [GONE]
        shell.flush_executors()
        assert shell.state.executors["e0"].state == "lost" and not shell.exec_outbox
        assert ("executor_unreachable", {"executor": "e0", "reason": "gone"}) in shell.log.lines
    finally:
        shell.close()
        shell.journal.close()


async def test_an_executor_that_stays_congested_past_the_bound_is_lost(tmp_path, monkeypatch):
    monkeypatch.setattr(shell_main, "EXEC_OUTBOX_MAX", 3)
    shell, sent = _shell(tmp_path, monkeypatch, [FULL])
    try:
        shell.ingest([ready("e0", 0.0)] + [submit(f"r{i}", 0.1 + i / 100) for i in range(5)])
        assert shell.state.executors["e0"].state == "lost"
        assert any(kw.get("reason", "").startswith("congested") for _, kw in shell.log.lines)
    finally:
        shell.close()
        shell.journal.close()


def test_malformed_frames_on_the_executor_socket_are_throttled(tmp_path):
    async def go():
        rd = RunDir(tmp_path)
        shell = shell_main.Shell(rd, State(), Journal(log_path(rd)))
        shell.malformed["executor"].log = log = FakeLog()
        peer = make_socket(shell.ctx, zmq.DEALER, connect=rd.executor_addr, identity=b"e9")
        task = asyncio.create_task(shell.executor_loop())
        try:
            for _ in range(500):
                await peer.send(b"\xff garbage")
            for _ in range(200):
                if shell.malformed["executor"].total == 500:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            peer.close(linger=0)
            shell.close()
            shell.journal.close()
        return shell.malformed["executor"].total, log.lines

    total, lines = asyncio.run(go())
    assert total == 500 and 1 <= len(lines) <= 3


async def test_a_client_gone_past_the_ttl_has_its_requests_cancelled(tmp_path, monkeypatch):
    """Nothing accepted keeps running for nobody: the slice is told to abort, the log says why."""
    shell, sent = _shell(tmp_path, monkeypatch, [SENT])
    monkeypatch.setattr(shell_main, "send_nowait", lambda sock, frames: False)  # the client is unreachable
    try:
        shell.ingest([ready("e0", 0.0), submit("r1", 0.1), submit("r2", 0.2, client=b"other")])
        c1 = next(iter(shell.outbox))
        assert shell.state.requests["r1"].executor == "e0"
        shell.flush_outbox(c1)  # within the TTL: kept, nothing cancelled
        assert "r1" in shell.state.requests and not any(b"abort" in f[1] for f in sent)
        shell.outbox_since[c1] -= shell_main.OUTBOX_TTL_S + 1
        shell.flush_outbox(c1)
        assert "r1" not in shell.state.requests or shell.state.requests["r1"].finished is not None
        assert "r2" in shell.state.requests and shell.state.requests["r2"].finished is None  # another client's
        assert any(b"abort" in f[1] and b"r1" in f[1] for f in sent)
        assert ("client_gone_requests_cancelled", {"requests": 1}) in shell.log.lines
        logged = [e for _, e in shell.journal.log.replay(0) if isinstance(e, ev.CancelAsked)]
        assert [(e.client, e.request_id) for e in logged] == [(c1, "r1")]  # durable: a restart replays it
    finally:
        shell.close()
        shell.journal.close()


def test_a_models_query_while_the_catalog_is_down_answers_what_was_last_heard_and_why(tmp_path):
    from c2cq.schemas.catalog import ModelInfo
    from c2cq.schemas.client import ModelEntry
    from c2cq.schemas.enums import ModelKind

    async def go():
        rd = RunDir(tmp_path)
        shell = shell_main.Shell(rd, State(), Journal(log_path(rd)))  # no catalog process behind its socket
        shell.log = shell.catalog.log = FakeLog()
        shell.catalog.models = {"m": ModelInfo(name="m", kind=ModelKind.SIM, architecture="LlamaForCausalLM",
                                               parameters=10, bytes=40, dtype="fp32", vocab_size=97, num_layers=2,
                                               hidden_size=8, max_context=256)}
        try:
            first = await shell.catalog.reply(7)
            again = await shell.catalog.reply(8)  # within RETRY_S: the last answer, not another 2 s wait
            return first, again, shell.catalog.log.lines
        finally:
            shell.close()

    reply, again, lines = asyncio.run(go())
    assert reply.nonce == 7 and reply.models == (ModelEntry(name="m", kind="sim", architecture="LlamaForCausalLM",
                                                            parameters=10, dtype="fp32", vocab_size=97, max_context=256),)
    assert reply.error is not None and "did not answer" in reply.error
    assert again.nonce == 8 and (again.models, again.error) == (reply.models, reply.error)
    assert [e for e, _ in lines] == ["catalog_unavailable"]  # one attempt: the second did not ask again
