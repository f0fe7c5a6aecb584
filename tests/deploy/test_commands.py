"""The commands the manifests run are ones c2cq accepts: `c2cq up --role …` renders its services
(`--print-config`), `c2cq run SERVICE …` parses as that service's flags, with the pod's
environment (a field reference filled with a stand-in)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from c2cq.cli_service import SERVICES
from c2cq.kustomize import render

from .test_kubernetes import DEPLOY, OVERLAYS, WORKLOADS, pod


def commands(overlay: str) -> list[tuple[str, list[str], dict[str, str]]]:
    out = []
    for doc in render(DEPLOY / "overlays" / overlay):
        if doc["kind"] in WORKLOADS:
            for c in pod(doc)["containers"]:
                if c["command"][0] == "c2cq":
                    env = {e["name"]: e.get("value", f"stand-in-{e['name'].lower()}") for e in c.get("env", [])}
                    out.append((doc["metadata"]["name"], c["command"][1:], env))
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_commands_are_accepted(overlay, tmp_path, monkeypatch):
    found = commands(overlay)
    assert {name for name, _, _ in found} == {"c2cq-control", "c2cq-catalog", "c2cq-executor"}
    for name, argv, env in found:
        env = {**env, "C2CQ_HOME": str(tmp_path / name), "C2CQ_SHM_ROOT": str(tmp_path)}
        if argv[0] == "up":
            p = subprocess.run([sys.executable, "-m", "c2cq.cli", *argv, "--print-config"], env=env,
                               capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, (name, p.stderr)
            services = {s["name"] for s in json.loads(p.stdout)["services"]}
            assert services == {"catalog", "scheduler", "gateway"}, (name, services)
            continue
        assert argv[0] == "run", (name, argv)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        args = importlib.import_module(SERVICES[argv[1]]).parse(argv[2:])
        assert args.join and args.join.startswith("tcp://c2cq-nodes:"), (name, args.join)
        assert not args.insecure and args.host == "stand-in-c2cq_node_name", (name, vars(args))
        if argv[1] == "executor":
            assert args.id == "stand-in-c2cq_executor_id" and args.backend == "cuda"
