"""A gateway that crashes mid-stream: the HTTP stream ends for its client, the supervisor restarts the
gateway (listed in `c2cq status`), and the restarted one, under the same client identity, cancels
what its previous incarnation left running, so no slice keeps working for nobody."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from c2cq.rundir import RunDir
from c2cq.testing import Instance, status, wait_for

from .tiny import save_model

MODEL = "tiny-long"


@pytest.fixture(scope="module")
def long_instance(tmp_path_factory):
    from c2cq.services.catalog.cli_add import add_path

    root = tmp_path_factory.mktemp("gwc")
    home = Path(tmp_path_factory.mktemp("gwch"))
    add_path(RunDir.from_env(str(home)), save_model(root, "llama", None, max_context=8192), MODEL, progress=False)
    inst = Instance(home, slices=1, backend="cpu")
    inst.up(http=True)
    try:
        yield inst
    finally:
        inst.teardown()


def gateway(home: Path) -> dict:
    return next(s for s in status(home)["services"] if s["name"] == "gateway")


def events(inst: Instance, rid: str) -> list[dict]:
    out = inst.cli("events", "show", rid, "--json", check=False).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_a_crashed_gateway_leaves_nothing_running(long_instance):
    inst = long_instance
    old = gateway(inst.home)
    assert old["state"] == "running" and "http" in inst.cli("status").stdout
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=inst.http_url, timeout=30) as h:
        with h.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            rid = json.loads(first[len("data: "):])["id"].removeprefix("cmpl-")
            os.kill(old["pid"], signal.SIGKILL)
            try:
                rest = list(lines)
            except httpx.HTTPError:  # the stream is cut
                rest = []
            assert "data: [DONE]" not in rest
    new = wait_for(lambda: (g := gateway(inst.home))["state"] == "running" and g["pid"] != old["pid"] and g, 60,
                   "the gateway restarted")
    assert new["restarts"] == old["restarts"] + 1
    cancel = wait_for(lambda: [e for e in events(inst, rid) if e["t"] == "cancel_asked"], 30,
                      "the orphaned request cancelled")
    assert cancel
    wait_for(lambda: status(inst.home)["requests_in_flight"] == 0, 10, "no request in flight")
    produced = [e["msg"]["index"] for e in events(inst, rid) if e.get("msg", {}).get("t") == "tokens_produced"]
    assert max(produced) < 3999
    r = httpx.post(f"{inst.http_url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
