"""A client on another host reaches the scheduler's client socket over tcp with CURVE (loopback here):
with the control plane's key it gets tokens (the library and the CLI); with a wrong server key, an
unlisted key or no CURVE at all it fails within the handshake timeout with a clear AuthError; this
host's own clients keep the ipc socket."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from c2cq import curve
from c2cq.client import AsyncClient
from c2cq.errors import AuthError
from c2cq.rundir import RunDir
from c2cq.testing import Instance

HANDSHAKE_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def remote(home, monkeypatch):
    keys = home / "keys"
    for role in ("control", "client", "stranger"):
        curve.init_keys(keys, role)
    curve.allow(keys / "allowed", curve.load_keypair(keys, "client").public, "client")
    for var in ("C2CQ_KEYS_DIR", "C2CQ_ALLOWED_KEYS_DIR", "C2CQ_KEY_ROLE", "C2CQ_SERVER_KEY", "C2CQ_CLIENT_KEY_ROLE"):
        monkeypatch.delenv(var, raising=False)
    addr = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("C2CQ_CLIENT_ADDR", addr)  # the scheduler binds it too; `c2cq status` dials it
    inst = Instance(home, slices=1, backend="sim")
    inst.cli("models", "add-sim", "--count", "2")
    inst.up()
    try:
        yield inst, addr, keys
    finally:
        inst.teardown()


def test_a_remote_client_over_curve_gets_tokens_and_wrong_keys_fail_in_bounded_time(remote, tmp_path):
    inst, addr, keys = remote
    client_keys = curve.load_keypair(keys, "client")
    stranger = curve.load_keypair(keys, "stranger")

    async def go():
        async with AsyncClient(addr, home=str(inst.home), handshake_timeout=HANDSHAKE_S) as c:  # keys from HOME/keys
            text = await c.generate("sim-000", "hello there", max_tokens=5)
            listed = await c.models()
        failures = {}
        for name, kw in {
            "wrong server key": {"curve": curve.CurveClient(keys=client_keys, server_key=stranger.public)},
            "unlisted client key": {"curve": curve.CurveClient(keys=stranger, server_key=curve.load_keypair(
                keys, "control").public)},
            "plain client": {"insecure": True},
        }.items():
            t0 = time.monotonic()
            with pytest.raises(AuthError) as err:
                await AsyncClient(addr, home=str(inst.home), handshake_timeout=HANDSHAKE_S, **kw).connect()
            failures[name] = (str(err.value), time.monotonic() - t0)
        return text, failures, listed

    text, failures, listed = asyncio.run(go())
    catalog = json.loads(inst.cli("models", "list", "--json").stdout)  # what the catalog itself says
    assert [(m.name, m.kind, m.vocab_size) for m in listed.models] == [(m["name"], "sim", m["vocab_size"])
                                                                      for m in catalog], listed
    assert listed.error is None
    assert text
    for name, (message, took) in failures.items():
        assert addr in message, (name, message)
        assert took < HANDSHAKE_S + 5, (name, took)  # bounded: the handshake's deadline, not a hang
    assert "refused this client's key" in failures["unlisted client key"][0]
    # this host's own clients (the gateway, the CLI without --connect) keep the private ipc socket
    ipc = RunDir(inst.home).address("client")

    async def local():
        async with AsyncClient(ipc, home=str(inst.home)) as c:
            return await c.generate("sim-001", "hi", max_tokens=3)

    assert asyncio.run(local())
    # the CLI on "another host": no instance in its home, only the keys and --connect
    env = {k: v for k, v in os.environ.items() if k != "C2CQ_CLIENT_ADDR"}
    env.update(C2CQ_HOME=str(tmp_path / "elsewhere"), C2CQ_KEYS_DIR=str(keys))
    cli = [sys.executable, "-m", "c2cq.cli", "--connect", addr]
    p = subprocess.run([*cli, "generate", "hello there", "--model", "sim-000", "--max-tokens", "5"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    p = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "1 slices" in p.stdout, (p.stdout, p.stderr)
    # loadgen there: the models come from the scheduler (the control plane's catalog is not reachable)
    out = tmp_path / "run"
    p = subprocess.run([*cli, "loadgen", "--rate", "4", "--duration", "2", "--no-progress", "--out", str(out)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (p.stdout, p.stderr)
    counts = json.loads((out / "report.json").read_text())["run"]["counts"]
    assert counts["sent"] > 0 and counts["finished"] == counts["sent"], counts
    env["C2CQ_SERVER_KEY"] = stranger.public.decode()
    p = subprocess.run([*cli, "generate", "hi", "--model", "sim-000", "--max-tokens", "2"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and "c2cq: error:" in p.stderr and "CURVE" in p.stderr, (p.stdout, p.stderr)
