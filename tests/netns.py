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


@contextmanager
def host_star(tag: str = "s", nodes: int = 2, base: int = 20):
    """A control host and ``nodes`` node hosts, each node joined to the control host by a veth pair
    of its own (subnet 10.213.(base+i).0/24: the control end .1, the node .2). Yields (control,
    nodes): ``control.addr`` is unused (it has one address per link: ``control_addr(node)``)."""
    stem = f"c2cq{os.getpid() % 100000}{tag}"
    control = Host(f"{stem}c", "", "")
    hosts = [Host(f"{stem}n{i}", f"v{stem}n{i}"[-15:], f"10.213.{base + i}.2") for i in range(nodes)]
    made: list[str] = []
    try:
        for h in (control, *hosts):
            ip("netns", "add", h.ns)
            made.append(h.ns)
            ip("-n", h.ns, "link", "set", "lo", "up")
        for h in hosts:
            far = f"w{h.iface[1:]}"[-15:]  # the control end
            ip("link", "add", h.iface, "type", "veth", "peer", "name", far)
            ip("link", "set", h.iface, "netns", h.ns)
            ip("link", "set", far, "netns", control.ns)
            ip("-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", h.iface)
            ip("-n", control.ns, "addr", "add", f"{control_addr(h)}/24", "dev", far)
            ip("-n", h.ns, "link", "set", h.iface, "up")
            ip("-n", control.ns, "link", "set", far, "up")
        yield control, hosts
    finally:
        for ns in made:  # deleting a namespace deletes the veth ends inside it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        for h in hosts:
            subprocess.run(["ip", "link", "del", h.iface], capture_output=True, timeout=30)  # if never moved


def control_addr(node: Host) -> str:
    """The control host's address on ``node``'s link."""
    return node.addr.rsplit(".", 1)[0] + ".1"


def link(node: Host, up: bool) -> None:
    """Cut (or restore) ``node``'s link to the control host, from the node's side."""
    ip("-n", node.ns, "link", "set", node.iface, "up" if up else "down")
