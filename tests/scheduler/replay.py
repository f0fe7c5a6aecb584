"""A recorded scheduler log and the digest of what folding it gives: the golden replay.

The log (data/replay.msgpack.gz) is the event stream a short simulator run fed the scheduler core
(H100 PCIe profile: 9 slices on 3 GPUs, 40 models, Zipf, two SLO classes), with a few events
spliced in so every handler runs: a duplicate submit, a cancel, an unreachable executor, a
restart's Recovered, a clean Stopped. The digest (data/replay_golden.json) is the sha256 of every
event's commands and of the state after each hundredth event and the last, as encoded msgpack
(floats bit for bit). A change to the core that keeps its behaviour keeps the digest; one that
changes the policy changes it, and then the golden file is rewritten on purpose:

    .venv/bin/python tests/scheduler/replay.py --write           # the digest of today's core
    .venv/bin/python tests/scheduler/replay.py --record --write  # a new log too (after a sim change)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path

import msgspec

from c2cq.services.scheduler import core
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.metrics import Metrics
from c2cq.services.scheduler.state import State, encode_state

DATA = Path(__file__).resolve().parent / "data"
LOG, GOLDEN = DATA / "replay.msgpack.gz", DATA / "replay_golden.json"
_LOG_TYPE = list[ev.SchedulerEvent]


def record() -> list[ev.SchedEvent]:
    """The events a short simulator run feeds the core, with the splices (deterministic)."""
    from c2cq.loadgen import arrivals, workload
    from c2cq.loadgen.workload import Workload, WorkloadConfig
    from c2cq.services.catalog.sim_models import generate
    from c2cq.services.sim.profiles import build_cluster, load_profile, parse_layout
    from c2cq.services.sim.run import Scenario, run_policy

    prof = load_profile()
    specs = build_cluster(prof, "h100-sxm", parse_layout("3g,2g,2g", prof), 9)
    models = {m.name: m for m in generate(40)}
    offsets = arrivals.schedule(6.0, duration_s=40.0, seed=3)
    cfg = WorkloadConfig(catalog=tuple(models), models="zipf",
                         lengths=((300, 20), (1500, 40), (60, 8), (4000, 12)), seed=3)
    sc = Scenario(plan=Workload(workload.from_schedule(offsets), cfg).plan(), specs=specs, models=models,
                  profile=prof)
    log: list[ev.SchedEvent] = []
    run_policy("c2cq", sc, observe=log.append)
    return splice(log)


def splice(log: list[ev.SchedEvent]) -> list[ev.SchedEvent]:
    """Insert the events a simulator run never sends, at fixed places of the log."""
    subs = [e for e in log if isinstance(e, ev.Submitted)]
    n = len(log)
    out: list[ev.SchedEvent] = []
    for i, e in enumerate(log):
        out.append(e)
        if i == n // 5:  # a client retrying a submit, another client reusing the id
            s = subs[len(subs) // 8]
            out += [msgspec.structs.replace(s, at=e.at), msgspec.structs.replace(s, at=e.at, client=b"other")]
        elif i == n // 4:  # cancels: one request in flight by now, one unknown
            s = subs[len(subs) // 4]
            out += [ev.CancelAsked(at=e.at, client=s.client, request_id=s.msg.request_id),
                    ev.CancelAsked(at=e.at, client=s.client, request_id="nope")]
        elif i == n // 3:  # one slice goes unreachable (its later messages bring it back)
            out.append(ev.ExecutorUnreachable(at=e.at, executor_id="x004"))
        elif i == (2 * n) // 3:  # a scheduler restart
            out.append(ev.Recovered(at=e.at))
    out.append(ev.Stopped(at=log[-1].at))
    return out


def read_log(path: Path = LOG) -> list[ev.SchedEvent]:
    return msgspec.msgpack.decode(gzip.decompress(path.read_bytes()), type=_LOG_TYPE)


def write_log(log: list[ev.SchedEvent], path: Path = LOG) -> None:
    path.write_bytes(gzip.compress(msgspec.msgpack.encode(log), compresslevel=9, mtime=0))


def digest(log: list[ev.SchedEvent], state_every: int = 100) -> dict:
    """Fold the log into a fresh state: hashes of the commands and of sampled states, and counts."""
    enc = msgspec.msgpack.Encoder()
    st = State()
    cmds, states = hashlib.sha256(), hashlib.sha256()
    kinds: dict[str, int] = {}
    for i, e in enumerate(log):
        _, out = core.apply(st, e)
        cmds.update(enc.encode(out))
        for c in out:
            k = type(c.msg if hasattr(c, "msg") else c.event).__name__
            kinds[k] = kinds.get(k, 0) + 1
        if i % state_every == 0 or i == len(log) - 1:  # the policy's state: metrics only observe it
            states.update(encode_state(msgspec.structs.replace(st, metrics=Metrics())))
    return {"events": len(log), "commands_sha256": cmds.hexdigest(), "states_sha256": states.hexdigest(),
            "commands": dict(sorted(kinds.items()))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="replay")
    p.add_argument("--record", action="store_true", help="record a new log from the simulator")
    p.add_argument("--write", action="store_true", help="write the golden digest of the log")
    a = p.parse_args(argv)
    DATA.mkdir(exist_ok=True)
    if a.record:
        write_log(record())
    d = digest(read_log())
    if a.write:
        GOLDEN.write_text(json.dumps(d, indent=2) + "\n")
    print(json.dumps(d, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
