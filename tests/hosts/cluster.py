"""A c2cq cluster on emulated hosts: `c2cq up --role control` in one network namespace, `c2cq up
--role node --join …` in each node's, every host with its own C2CQ_HOME and shared-memory root,
one model store all read, CURVE keys for control and node (a third, unlisted key: "stranger").
Every process of every host is stopped afterwards (`c2cq down`, then kill -9 what is left)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from c2cq import curve
from c2cq.services.catalog.synth import write_random
from c2cq.supervisor.manager import pid_alive
from c2cq.testing import instance_pids, wait_for
from netns import Host, control_addr

TINY = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 136, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "rope_theta": 10000.0, "max_position_embeddings": 1024}
MODELS = ("tiny-a", "tiny-b")
EXEC_PORT = 7101


class Cluster:
    def __init__(self, root: Path, control: Host, nodes: list[Host]) -> None:
        self.root, self.control, self.nodes = root, control, nodes
        self.keys = root / "keys"
        for role in ("control", "node", "stranger"):
            curve.init_keys(self.keys, role)
        curve.allow(self.keys / "allowed", curve.load_keypair(self.keys, "node").public, "node")
        self.store = root / "store"  # the model store every host reads (an NFS export)
        self.store.mkdir()
        self.homes = {h.ns: root / h.ns[-2:] for h in (control, *nodes)}
        for i, name in enumerate(MODELS):  # converted once into the store
            write_random(self.store / f"{name}.c2cqm", TINY, {}, dtype="fp32", seed=i, progress=False)

    def register_models(self) -> None:
        """Register the store's files with the running control plane: the nodes publish them from there;
        returns once every node's shared-memory root holds them (its catalog reports at once after)."""
        for name in MODELS:
            self.c2cq(self.control, "models", "register", str(self.store / f"{name}.c2cqm"))
        for n in self.nodes:
            wait_for(lambda: sorted(p.stem for p in self.published(n)) == sorted(MODELS), 60, f"{n.ns} to publish")

    def published(self, node: Host) -> list[Path]:
        return list((self.root / f"shm-{node.ns[-2:]}").glob("c2cq-*/*.c2cqm"))

    def home(self, h: Host) -> Path:
        return self.homes[h.ns]

    def env(self, h: Host) -> dict[str, str]:
        shm = self.root / f"shm-{h.ns[-2:]}"  # this host's own shared-memory root
        shm.mkdir(exist_ok=True)
        return {**os.environ, "C2CQ_HOME": str(self.home(h)), "C2CQ_SHM_ROOT": str(shm),
                "C2CQ_MODEL_STORE": str(self.store), "C2CQ_KEYS_DIR": str(self.keys),
                "C2CQ_ALLOWED_KEYS_DIR": str(self.keys / "allowed"), "C2CQ_NODE_NAME": h.ns[-2:]}

    def c2cq(self, h: Host, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(h.argv(sys.executable, "-m", "c2cq.cli", *args), env=self.env(h), capture_output=True,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"c2cq {' '.join(args)} on {h.ns} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def join(self, node: Host) -> str:
        return f"tcp://{control_addr(node)}:{EXEC_PORT}"

    def up_control(self, http: bool = False) -> None:
        web = ("--http", "127.0.0.1:0") if http else ("--no-http",)  # loopback of the control host's namespace
        self.c2cq(self.control, "up", "--role", "control", "--listen", "tcp://0.0.0.0", *web, "--detach")

    @property
    def http_url(self) -> str:
        return json.loads((self.home(self.control) / "run" / "http.json").read_text())["url"]

    def up_node(self, node: Host) -> None:
        self.c2cq(node, "up", "--role", "node", "--join", self.join(node), "--backend", "cpu", "--slices", "1",
                  "--threads", "1", "--detach")

    def kill(self, h: Host) -> set[int]:
        """kill -9 every process of the host, all stopped first: the supervisor restarts nothing, and no
        child hears of its parent's death (PR_SET_PDEATHSIG) in time to shut down cleanly."""
        pids = instance_pids(self.home(h))
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        wait_for(lambda: not any(pid_alive(p) for p in pids), 30, f"the processes of {h.ns} to die")
        return pids

    def stop(self) -> set[int]:
        """`c2cq down` on every host still up, then kill -9 what is left; returns those killed."""
        left: set[int] = set()
        for h in (*self.nodes, self.control):
            if (self.home(h) / "run" / "supervisor.pid").exists():
                self.c2cq(h, "down", check=False)
            left |= self.kill(h)
        return left
