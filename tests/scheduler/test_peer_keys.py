"""Peers across hosts are known by their CURVE public key (the frames' User-Id), not by their address:
the scheduler shell records the key an executor registers with (in the event it logs, so a restart
keeps it) and refuses another key claiming the same executor id while the first key is still
allowed; an operator who removes that key from the allowed folder hands the id over."""

from __future__ import annotations

import asyncio

import msgspec
import zmq

from c2cq import curve
from c2cq.codec import encode
from c2cq.rundir import RunDir
from c2cq.services.scheduler import core
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler import main as shell_main
from c2cq.services.scheduler.journal import Journal, log_path
from c2cq.services.scheduler.state import State
from c2cq.transport import make_socket

from .history import ready
from .test_shell import FakeLog


async def until(cond, what: str, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_an_executor_id_is_held_by_the_key_it_registered_with(tmp_path, monkeypatch):
    for var in ("C2CQ_KEYS_DIR", "C2CQ_ALLOWED_KEYS_DIR", "C2CQ_KEY_ROLE", "C2CQ_SERVER_KEY"):
        monkeypatch.delenv(var, raising=False)
    keys = tmp_path / "keys"
    for role in ("control", "node", "other"):
        curve.init_keys(keys, role)
    node, other = (curve.load_keypair(keys, r) for r in ("node", "other"))
    listed = curve.allow(keys / "allowed", node.public, "node")
    curve.allow(keys / "allowed", other.public, "other")
    server_key = curve.load_keypair(keys, "control").public

    async def go():
        rd = RunDir(tmp_path)
        shell = shell_main.Shell(rd, State(), Journal(log_path(rd)), shell_main.parse(["--executors", "tcp://127.0.0.1:*"]))
        shell.log = shell.refusals["executor"].log = lines = FakeLog()
        endpoint = shell.executors.getsockopt(zmq.LAST_ENDPOINT).decode()
        task = asyncio.create_task(shell.executor_loop())
        peers = []

        async def peer(kp: curve.Keypair, boot: str):
            sock = make_socket(shell.ctx, zmq.DEALER, connect=endpoint, identity=b"x-0",
                               curve=curve.CurveClient(keys=kp, server_key=server_key))
            peers.append(sock)
            await curve.handshake(sock, endpoint, timeout_s=10)
            await sock.send(encode(ready("x-0", 0.0, boot).msg))

        x = lambda: shell.state.executors.get("x-0")  # noqa: E731
        refusals = shell.refusals["executor"]
        try:
            await peer(node, "b1")
            await until(lambda: x() is not None, "the registration")
            assert (x().boot_id, x().peer_key) == ("b1", node.public.decode())
            assert ("executor_registered", {"executor": "x-0", "host": None, "peer_key": node.public.decode()}) \
                in lines.lines
            await peer(other, "b2")  # an allowed key, but not the one x-0 is known by
            await until(lambda: refusals.total == 1, "the refusal")
            assert (x().boot_id, x().peer_key) == ("b1", node.public.decode())
            event, kw = next(line for line in lines.lines if line[0] == "peer_key_refused")
            assert kw["socket"] == "executor" and other.public.decode() in kw["last_error"]
            listed.unlink()  # the operator revokes the old key: the id may change hands
            await peers[-1].send(encode(ready("x-0", 0.0, "b3").msg))
            await until(lambda: x().boot_id == "b3", "the hand-over")
            assert x().peer_key == other.public.decode() and refusals.total == 1
        finally:
            task.cancel()
            for s in peers:
                s.close(linger=0)
            shell.close()
        logged = [e for _, e in shell.journal.log.replay(0) if isinstance(e, ev.ExecutorSaid)]
        shell.journal.close()
        return [(e.msg.boot_id, e.peer_key) for e in logged]

    logged = asyncio.run(go())
    # the key is in the log (a restarted scheduler replays who holds the id), the refused claim is not
    assert logged == [("b1", node.public.decode()), ("b3", other.public.decode())]


def test_a_registration_without_curve_carries_no_key_and_encodes_as_before():
    e = ready("x-0", 1.0)
    assert e.peer_key == "" and b"peer_key" not in msgspec.msgpack.encode(e)
    st = State()
    core.apply(st, e)
    assert st.executors["x-0"].peer_key == ""
