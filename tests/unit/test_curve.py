"""CURVE on tcp sockets (c2cq.curve through transport.make_socket), on 127.0.0.1 with free ports.

A listed client key gets through and is the peer's identity; an unlisted key, a plain (NULL)
peer and a wrong server key are refused, the client side with AuthError within a deadline;
the bytes on the wire do not carry the plaintext (a raw TCP forwarder in the middle records them,
and the same forwarder does see it with CURVE off, so the check can fail).
"""

from __future__ import annotations

import asyncio
import os
import stat

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from c2cq import curve
from c2cq.cli import main as cli_main
from c2cq.errors import AuthError, ConfigError
from c2cq.transport import make_socket

pytestmark = pytest.mark.timeout(60)
MARKER = b"plaintext-marker-7f3a9c"  # must not appear on the wire under CURVE


@pytest.fixture
def keys(tmp_path):
    d = tmp_path / "keys"
    for role in ("control", "node", "stranger"):
        curve.init_keys(d, role)
    curve.allow(d / "allowed", curve.load_keypair(d, "node").public, "node")
    return d


@pytest.fixture
async def ctx():
    c = zmq.asyncio.Context()
    yield c
    curve.stop_authenticator(c)
    c.destroy(linger=0)


def server(ctx, keys, monitor: bool = False):
    srv = curve.CurveServer(keys=curve.load_keypair(keys, "control"), allowed=keys / "allowed")
    sock = make_socket(ctx, zmq.ROUTER, bind="tcp://127.0.0.1:*", curve=srv)
    mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH) if monitor else None
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT), mon


def client(ctx, keys, endpoint, role="node", server_key=None):
    cl = curve.CurveClient(keys=curve.load_keypair(keys, role),
                           server_key=server_key or curve.load_keypair(keys, "control").public)
    return make_socket(ctx, zmq.DEALER, connect=endpoint, curve=cl)


async def test_a_listed_key_gets_through_and_is_the_peers_identity(ctx, keys):
    router, endpoint, _ = server(ctx, keys)
    assert curve.authenticator_running(ctx)  # started by the bind, before it
    dealer = client(ctx, keys, endpoint)
    await curve.handshake(dealer, endpoint, timeout_s=10)
    await dealer.send(b"hello")
    ident, body = await asyncio.wait_for(router.recv_multipart(copy=False), 10)
    assert body.bytes == b"hello"
    assert curve.peer_key(body) == curve.load_keypair(keys, "node").public.decode()
    await router.send_multipart([ident.bytes, b"back"])
    assert await asyncio.wait_for(dealer.recv(), 10) == b"back"


async def test_an_unlisted_key_is_refused_and_a_key_allowed_later_is_accepted(ctx, keys):
    router, endpoint, _ = server(ctx, keys)
    stranger = client(ctx, keys, endpoint, role="stranger")
    with pytest.raises(AuthError, match="refused this client's key"):
        await curve.handshake(stranger, endpoint, timeout_s=10)
    stranger.close(linger=0)
    curve.allow(keys / "allowed", curve.load_keypair(keys, "stranger").public, "stranger")  # no restart
    again = client(ctx, keys, endpoint, role="stranger")
    await curve.handshake(again, endpoint, timeout_s=10)


async def test_a_plain_peer_is_refused(ctx, keys):
    router, endpoint, mon = server(ctx, keys, monitor=True)
    plain = make_socket(ctx, zmq.DEALER, connect=endpoint, insecure=True)
    await plain.send(b"let me in")
    event = parse_monitor_message(await asyncio.wait_for(mon.recv_multipart(), 10))["event"]
    assert event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    assert not await router.poll(timeout=0)  # nothing it sent was delivered


async def test_a_wrong_server_key_fails_with_a_clear_error_within_the_deadline(ctx, keys):
    router, endpoint, _ = server(ctx, keys)
    dealer = client(ctx, keys, endpoint, server_key=curve.load_keypair(keys, "stranger").public)
    with pytest.raises(AuthError, match="failed .*: a wrong server key"):
        await curve.handshake(dealer, endpoint, timeout_s=10)


async def test_a_peer_that_never_answers_fails_within_the_deadline(ctx, keys):
    held: list[asyncio.StreamWriter] = []
    hole = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)  # accepts, says nothing
    endpoint = f"tcp://127.0.0.1:{hole.sockets[0].getsockname()[1]}"
    try:
        dealer = client(ctx, keys, endpoint)
        with pytest.raises(AuthError, match="no CURVE handshake .* within 0.5 s"):
            await curve.handshake(dealer, endpoint, timeout_s=0.5)
    finally:
        hole.close()
        for w in held:
            w.close()


async def test_tcp_without_curve_refuses_to_start_unless_insecure(ctx, keys, tmp_path):
    with pytest.raises(ConfigError, match="needs CURVE keys"):
        make_socket(ctx, zmq.ROUTER, bind="tcp://127.0.0.1:*")
    with pytest.raises(ConfigError, match="needs CURVE keys"):
        make_socket(ctx, zmq.DEALER, connect="tcp://127.0.0.1:9")
    make_socket(ctx, zmq.ROUTER, bind="tcp://127.0.0.1:*", insecure=True).close(linger=0)
    make_socket(ctx, zmq.ROUTER, bind=f"ipc://{tmp_path}/x.ipc").close(linger=0)  # ipc needs no keys
    with pytest.raises(ConfigError, match="takes CurveServer"):
        make_socket(ctx, zmq.ROUTER, bind="tcp://127.0.0.1:*",
                    curve=curve.CurveClient(keys=curve.load_keypair(keys, "node"), server_key=b"x" * 40))


async def _forwarder(target_port: int, seen: bytearray) -> asyncio.Server:
    """A raw TCP relay on a free port that records every byte passing either way."""

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                seen.extend(data)
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def relay(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(cr, sw), pipe(sr, cw))

    return await asyncio.start_server(relay, "127.0.0.1", 0)


@pytest.mark.parametrize("secure", [True, False])
async def test_the_bytes_on_the_wire_are_not_plaintext(ctx, keys, secure):
    if secure:
        router, endpoint, _ = server(ctx, keys)
    else:
        router = make_socket(ctx, zmq.ROUTER, bind="tcp://127.0.0.1:*", insecure=True)
        endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    seen = bytearray()
    relay = await _forwarder(int(endpoint.rsplit(":", 1)[1]), seen)
    via = f"tcp://127.0.0.1:{relay.sockets[0].getsockname()[1]}"
    try:
        dealer = client(ctx, keys, via) if secure else make_socket(ctx, zmq.DEALER, connect=via, insecure=True)
        await dealer.send(MARKER + b" to the server")
        ident, body = await asyncio.wait_for(router.recv_multipart(), 10)
        assert body.startswith(MARKER)
        await router.send_multipart([ident, MARKER + b" to the client"])
        assert (await asyncio.wait_for(dealer.recv(), 10)).startswith(MARKER)
    finally:
        relay.close()
    assert (MARKER in seen) is not secure


def test_keys_init_writes_a_secret_only_its_user_can_read(tmp_path):
    pub, sec = curve.init_keys(tmp_path / "k", "control")
    assert stat.S_IMODE(os.stat(sec).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o700
    kp = curve.load_keypair(tmp_path / "k", "control")
    assert zmq.curve_public(kp.secret) == kp.public
    assert zmq.auth.load_certificate(pub) == (kp.public, None)  # pyzmq's own reader agrees
    with pytest.raises(ConfigError, match="exists"):
        curve.init_keys(tmp_path / "k", "control")
    os.chmod(sec, 0o440)  # a Kubernetes Secret for a non-root uid: its group (fsGroup) reads it
    assert curve.load_keypair(tmp_path / "k", "control") == kp
    os.chmod(sec, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        curve.load_keypair(tmp_path / "k", "control")
    with pytest.raises(ConfigError, match="no CURVE secret key"):
        curve.load_keypair(tmp_path / "k", "node")
    with pytest.raises(ConfigError, match="bad role"):
        curve.init_keys(tmp_path / "k", "../evil")


def test_public_keys_parse_from_text_or_file_and_bad_ones_are_refused(tmp_path):
    pub, _ = curve.init_keys(tmp_path, "a")
    key = curve.load_keypair(tmp_path, "a").public
    assert curve.parse_public(key.decode()) == key == curve.parse_public(str(pub))
    for bad in ("not a key", "~" * 40, str(tmp_path / "missing.key")):
        with pytest.raises(ConfigError):
            curve.parse_public(bad)


def test_the_keys_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("C2CQ_KEYS_DIR", raising=False)
    monkeypatch.delenv("C2CQ_ALLOWED_KEYS_DIR", raising=False)
    home = str(tmp_path / "home")
    assert cli_main(["--home", home, "keys", "init", "--role", "node"]) == 0
    assert cli_main(["--home", home, "keys", "show", "--role", "node"]) == 0
    capsys.readouterr()
    assert cli_main(["--home", home, "keys", "show", "--role", "node"]) == 0
    key = capsys.readouterr().out.strip()
    assert cli_main(["--home", home, "keys", "allow", "--name", "node", "--", key]) == 0  # z85 may start with "-"
    assert cli_main(["--home", home, "keys", "list"]) == 0
    assert capsys.readouterr().out.split()[-1] == key
    assert stat.S_IMODE(os.stat(tmp_path / "home" / "keys" / "node.key_secret").st_mode) == 0o600
    assert cli_main(["--home", home, "keys", "init", "--role", "node"]) == 1  # exists: a typed error
