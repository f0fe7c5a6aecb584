"""`c2cq up`'s KV flags reach every executor (read from --print-config: nothing is started), and a
policy that cannot work with them fails `c2cq up` at once."""

from __future__ import annotations

import json

from c2cq.testing import c2cq


def executors(home, *flags) -> list[list[str]]:
    doc = json.loads(c2cq(home, "up", "--backend", "sim", "--slices", "2", "--print-config", *flags).stdout)
    return [s["argv"] for s in doc["services"] if s["name"].startswith("exec-")]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_up_passes_the_kv_flags_to_every_executor(home):
    got = executors(home, "--kv-policy", "rotate", "--kv-blocks", "40", "--kv-host-blocks", "512", "--packed-mb", "64")
    assert len(got) == 2
    for argv in got:
        assert (flag(argv, "--kv-policy"), flag(argv, "--kv-blocks"), flag(argv, "--kv-host-blocks"),
                flag(argv, "--packed-mb")) == ("rotate", "40", "512", "64")
    for argv in executors(home):  # the default: today's schedule, no host pool
        assert (flag(argv, "--kv-policy"), flag(argv, "--kv-host-blocks")) == ("block", "0")


def test_rotate_without_a_host_pool_fails_up_at_once(home):
    p = c2cq(home, "up", "--backend", "sim", "--kv-policy", "rotate", "--print-config", check=False)
    assert p.returncode == 1 and "--kv-host-blocks" in p.stderr
    p = c2cq(home, "up", "--backend", "sim", "--kv-policy", "shuffle", "--print-config", check=False)
    assert p.returncode == 2 and "--kv-policy" in p.stderr
