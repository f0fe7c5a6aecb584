"""CURVE between two emulated hosts (network namespaces joined by a veth pair): a listed client gets
through and is known by its key, an unlisted key and a wrong server key are refused with AuthError,
and what crosses the veth carries no plaintext — read from the link itself (AF_PACKET), where the
same exchange without CURVE does show it. Root only; every namespace and veth is removed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from c2cq import curve
from netns import Host, host_pair, need_netns

pytestmark = pytest.mark.timeout(120)
PEER = str(Path(__file__).with_name("curve_peer.py"))
PORT = 7101


@pytest.fixture(scope="module")
def hosts():
    need_netns()
    with host_pair("k") as pair:
        yield pair


@pytest.fixture
def keys(tmp_path):
    for role in ("control", "node", "stranger"):
        curve.init_keys(tmp_path, role)
    curve.allow(tmp_path / "allowed", curve.load_keypair(tmp_path, "node").public, "node")
    return tmp_path


class Server:
    def __init__(self, host: Host, keys: Path, mode: str = "secure") -> None:
        self.addr = f"tcp://{host.addr}:{PORT}"
        self.proc = subprocess.Popen(host.argv(sys.executable, PEER, "server", mode, str(keys), self.addr, host.iface),
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def serve(hosts):
    started: list[Server] = []

    def start(keys: Path, mode: str = "secure") -> Server:
        started.append(Server(hosts[0], keys, mode))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def dial(host: Host, keys: Path, addr: str, role: str = "node", server_role: str = "control"):
    return subprocess.run(host.argv(sys.executable, PEER, "client", role, server_role, str(keys), addr),
                          capture_output=True, text=True, timeout=60)


def test_a_listed_node_gets_through_known_by_its_key_and_nothing_crosses_in_clear(hosts, keys, serve):
    s = serve(keys)
    p = dial(hosts[1], keys, s.addr)
    assert p.returncode == 0, p.stdout + p.stderr
    echo, verdict = p.stdout.split("\n")[:2]
    assert echo.endswith("from " + curve.load_keypair(keys, "node").public.decode())
    assert verdict == "clean"


def test_without_curve_the_link_shows_the_plaintext(hosts, keys, serve):
    s = serve(keys, mode="insecure")
    p = dial(hosts[1], keys, s.addr, role="insecure")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split("\n")[1] == "seen"  # the capture works: the clean verdict above means something


def test_an_unlisted_key_and_a_wrong_server_key_are_refused(hosts, keys, serve):
    s = serve(keys)
    p = dial(hosts[1], keys, s.addr, role="stranger")
    assert p.returncode == 3 and "refused this client's key" in p.stdout, p.stdout + p.stderr
    p = dial(hosts[1], keys, s.addr, server_role="stranger")
    assert p.returncode == 3 and "wrong server key" in p.stdout, p.stdout + p.stderr
    p = dial(hosts[1], keys, s.addr)  # the server was not disturbed: a listed node still gets through
    assert p.returncode == 0 and p.stdout.split("\n")[1] == "clean", p.stdout + p.stderr
