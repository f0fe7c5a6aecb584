"""CURVE on every tcp socket: keypairs, the allowed client keys, the ZAP authenticator, a bounded handshake.

A role's keypair lives in the keys folder (``$C2CQ_KEYS_DIR``, else ``HOME/keys``) as pyzmq's
certificate files: ``ROLE.key`` (public) and ``ROLE.key_secret`` (created 0600, refused when
others can read it; its group may, as a Kubernetes Secret mounted for a non-root uid needs). The client keys a server accepts are the public key files in the
allowed folder (``$C2CQ_ALLOWED_KEYS_DIR``, else ``KEYS/allowed``), read again at every handshake,
so ``c2cq keys allow`` takes effect without a restart.

libzmq consults a ZAP handler only if one is bound on the socket's Context when a peer connects;
with none, a CURVE server accepts *any* client key. ``CurveServer.apply`` therefore starts the
authenticator on the Context before the socket binds (``transport.make_socket`` calls it), and a
tcp socket without CURVE is refused there unless it is marked insecure.

A client's send never fails on a refused handshake (libzmq reconnects and retries forever), and
a peer that accepts tcp but never answers (a wrong port, a black-holed link) gives no event at
all: ``handshake`` waits on the socket monitor for success or failure with a deadline and raises
AuthError either way it fails. A peer's identity is its public key,
which arrives as the ``User-Id`` property of every frame it sends (``peer_key``), not its address.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from c2cq.errors import AuthError, ConfigError

ZAP_DOMAIN = "c2cq"
Z85_KEY_LEN = 40  # a 32-byte key in z85
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
HANDSHAKE_EVENTS = _HANDSHAKE_EVENTS  # what ``handshake`` waits on (transport watches every tcp connect)


def keys_dir(home: Path) -> Path:
    return Path(os.environ.get("C2CQ_KEYS_DIR") or Path(home) / "keys")


def allowed_dir(home: Path) -> Path:
    return Path(os.environ.get("C2CQ_ALLOWED_KEYS_DIR") or keys_dir(home) / "allowed")


@dataclass(frozen=True, slots=True)
class Keypair:
    public: bytes  # z85, 40 bytes
    secret: bytes


def _cert_text(public: bytes, secret: bytes | None) -> str:
    kind = "Secret" if secret is not None else "Public"
    lines = [f"#   ****  Generated on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M:%S} by c2cq  ****",
             f"#   ZeroMQ CURVE **{kind}** Certificate", "", "metadata", "curve",
             f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create ``path`` with ``mode`` from the first byte (no window in which it is wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)  # the umask may have narrowed a public file's mode; never widened a secret's


def init_keys(folder: Path, role: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new keypair for ``role``: (public file, secret file). An existing pair is kept unless
    ``force``: replacing a key locks out every peer that listed the old one."""
    if not role or "/" in role or role.startswith("."):
        raise ConfigError(f"bad role name {role!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    pub, sec = folder / f"{role}.key", folder / f"{role}.key_secret"
    if sec.exists() and not force:
        raise ConfigError(f"{sec} exists (give --force to replace it, which locks out peers that listed the old key)")
    public, secret = zmq.curve_keypair()
    for p in (pub, sec):
        p.unlink(missing_ok=True)
    _write_new(sec, _cert_text(public, secret), 0o600)
    _write_new(pub, _cert_text(public, None), 0o644)
    return pub, sec


def load_keypair(folder: Path, role: str) -> Keypair:
    sec = Path(folder) / f"{role}.key_secret"
    try:
        mode = os.stat(sec).st_mode
    except OSError as e:
        raise ConfigError(f"no CURVE secret key for role {role!r}: {sec} ({e.strerror}); run `c2cq keys init "
                          f"--role {role}`") from None
    if mode & stat.S_IRWXO:
        raise ConfigError(f"{sec} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 it")
    public, secret = zmq.auth.load_certificate(sec)
    if not secret:
        raise ConfigError(f"{sec} holds no secret key")
    return Keypair(public=public, secret=secret)


def parse_public(spec: str) -> bytes:
    """A public key given as its 40 z85 characters or as a certificate file's path."""
    if len(spec) == Z85_KEY_LEN and not os.path.exists(spec):
        try:
            zmq.utils.z85.decode(spec)
        except (ValueError, KeyError):
            raise ConfigError(f"{spec!r} is not a z85 CURVE public key") from None
        return spec.encode()
    try:
        public, _ = zmq.auth.load_certificate(spec)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{spec!r} is neither a 40-character z85 key nor a certificate file: {e}") from None
    return public


def allow(folder: Path, public: bytes, name: str | None = None) -> Path:
    """List a client's public key in the allowed folder (a public certificate file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = name or public.decode()[:12].replace("/", "_").replace(".", "_")
    if "/" in name or name.startswith("."):
        raise ConfigError(f"bad key name {name!r}")
    path = folder / f"{name}.key"
    path.unlink(missing_ok=True)
    _write_new(path, _cert_text(public, None), 0o644)
    return path


def allowed_keys(folder: Path) -> frozenset[bytes]:
    """Every public key listed in the folder (files that are not certificates are skipped)."""
    keys = set()
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return frozenset()
    for p in entries:
        if p.name.startswith(".") or not p.is_file():  # Kubernetes' ..data links are folders
            continue
        try:
            public, _ = zmq.auth.load_certificate(p)
        except (OSError, ValueError):
            continue
        if public:
            keys.add(public)
    return frozenset(keys)


class _FolderKeys:
    """The authenticator's callback: a client key is allowed iff it is listed now."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in allowed_keys(self.folder)


_AUTHENTICATORS: dict[int, tuple[ThreadAuthenticator, Path]] = {}  # by the libzmq context's address


def start_authenticator(ctx: zmq.Context, folder: Path) -> ThreadAuthenticator:
    """The ZAP handler on ``ctx`` (started once per Context), allowing only the keys in ``folder``."""
    folder = Path(folder)
    running = _AUTHENTICATORS.get(ctx.underlying)
    if running is not None:
        auth, listed = running
        if listed != folder:
            raise ConfigError(f"this process already authenticates against {listed}, not {folder}")
        return auth
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(ZAP_DOMAIN, _FolderKeys(folder))  # the domain every CurveServer sets
    _AUTHENTICATORS[ctx.underlying] = (auth, folder)
    return auth


def authenticator_running(ctx: zmq.Context) -> bool:
    running = _AUTHENTICATORS.get(ctx.underlying)
    return running is not None and running[0].is_alive()


def stop_authenticator(ctx: zmq.Context) -> None:
    """Before the Context is destroyed (its sockets include the authenticator's)."""
    running = _AUTHENTICATORS.pop(ctx.underlying, None)
    if running is not None:
        running[0].stop()


@dataclass(frozen=True, slots=True)
class CurveServer:
    """A bound socket's side: its keypair and the folder of client keys it accepts."""

    keys: Keypair
    allowed: Path

    def apply(self, ctx: zmq.Context, sock: zmq.Socket) -> None:
        start_authenticator(ctx, self.allowed)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)


@dataclass(frozen=True, slots=True)
class CurveClient:
    """A connecting socket's side: its keypair and the server's public key it expects."""

    keys: Keypair
    server_key: bytes

    def apply(self, ctx: zmq.Context, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        sock.get_monitor_socket(_HANDSHAKE_EVENTS)  # before connect: ``handshake`` must see the first attempt


def peer_key(frame: zmq.Frame) -> str:
    """The z85 public key of the peer that sent ``frame`` (received with copy=False)."""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:
        raise AuthError("the frame carries no User-Id: it did not come over a CURVE socket") from None


async def handshake(sock: zmq.asyncio.Socket, endpoint: str, timeout_s: float = 5.0) -> None:
    """Wait until a socket made with a CurveClient has completed its CURVE handshake; AuthError when
    the server refuses this client's key, the mechanisms disagree, or nothing succeeds within
    ``timeout_s`` (a wrong server key, or no server: libzmq reports neither to the client)."""
    mon = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while True:
            left = deadline - loop.time()
            if left <= 0 or not await mon.poll(timeout=int(left * 1000) + 1):
                raise AuthError(f"no CURVE handshake with {endpoint} within {timeout_s:g} s: wrong server key, "
                                "or no server there")
            event = parse_monitor_message(await mon.recv_multipart())["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise AuthError(f"{endpoint} refused this client's key (not in its allowed keys)")
            if event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                raise AuthError(f"CURVE handshake with {endpoint} failed ({zmq.Event(event).name}): a wrong server "
                                "key, or one end without CURVE (a plain peer, or a server started --insecure)")
    finally:
        sock.disable_monitor()
        mon.close(linger=0)
