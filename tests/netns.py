"""Hosts emulated with Linux network namespaces: a pair joined by a veth link, removed afterwards
even when the test fails (deleting a namespace deletes the veth end inside it). Root only."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


def need_netns() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Host:
    ns: str
    iface: str
    addr: str

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]


@contextmanager
def host_pair(tag: str = "h", subnet: str = "10.213.7"):
    """Two namespaces, ``subnet``.1 and ``subnet``.2, joined by a veth pair."""
    stem = f"c2cq{os.getpid() % 100000}{tag}"
    hosts = [Host(f"{stem}a", f"v{stem}a"[-15:], f"{subnet}.1"), Host(f"{stem}b", f"v{stem}b"[-15:], f"{subnet}.2")]
    made: list[str] = []
    try:
        for h in hosts:
            ip("netns", "add", h.ns)
            made.append(h.ns)
        ip("link", "add", hosts[0].iface, "type", "veth", "peer", "name", hosts[1].iface)
        for h in hosts:
            ip("link", "set", h.iface, "netns", h.ns)
            ip("-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", h.iface)
            ip("-n", h.ns, "link", "set", h.iface, "up")
            ip("-n", h.ns, "link", "set", "lo", "up")
        yield hosts
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", hosts[0].iface], capture_output=True, timeout=30)  # if never moved
