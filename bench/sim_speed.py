"""Simulator speed: simulated seconds per wall second, per shipped trace, GPU profile and policy
(target ≥ 100× real time for the c2cq policy, which runs the real scheduler core), at 64 slices ×
1,000 models.

    .venv/bin/python bench/sim_speed.py [--workloads azure-code,...] [--gpus h100-sxm,gh200-96]
        [--policies c2cq] [--slices 64] [--models 1000] [--repeat 3] [--profile N] [--core-split]

Each workload is a `c2cq sim` flag set (printed with its figures, so any row can be rerun as a
`c2cq sim` command). The request traces (Azure code, Mooncake) replay at 8× speed; ServeGen holds
per-window rates (m-mid ≈ 1,300 req/s at noon), so its windows are slowed to the same ~20 req/s
as the Azure code trace at 8× (the settings of bench/results/sim_headline.md). The rate is
given per wall second and per CPU second of the process (less sensitive to other processes on a
shared host); with --repeat N the medians of N runs are reported;
--profile N prints the N functions of most own time of each c2cq run (cProfile; slows the run);
--core-split prints the CPU time the real scheduler core's fold takes in each c2cq run, by event (the
messages of the executors by their type), against the run's whole CPU time.
The traces are read from ../shared/traces (never copied into the repo); a missing one is skipped.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

from c2cq import cli_sim
from c2cq.services.scheduler import core
from c2cq.services.scheduler import events as ev
from c2cq.services.sim.run import run_policy

TRACES = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces"
AZURE = ("--lengths-trace", str(TRACES / "azure_llm_2023_code.csv"))
SERVEGEN = ("--trace-format", "servegen", "--start", "43200", "--duration", "12", "--speed", "0.02") + AZURE
WORKLOADS: dict[str, tuple[str, ...]] = {
    "azure-code": ("--trace", str(TRACES / "azure_llm_2023_code.csv"), "--trace-format", "azure",
                   "--duration", "3600", "--speed", "8"),
    # its conversations reach ~128k-token prompts: at the generated models' default 8,192-token context
    # half the trace was rejected before it ran (prompt_too_long, 2,815 of 5,719) and cost nothing to simulate
    "mooncake": ("--trace", str(TRACES / "mooncake_conversation_first30min.jsonl"), "--trace-format", "mooncake",
                 "--duration", "1800", "--speed", "8", "--max-context", "131072"),
    "servegen-m-small": ("--trace", str(TRACES / "servegen_language_m-small_day0.csv")) + SERVEGEN,
    "servegen-m-mid": ("--trace", str(TRACES / "servegen_language_m-mid_day0.csv")) + SERVEGEN,
    "servegen-mm-image": ("--trace", str(TRACES / "servegen_multimodal_mm-image_day0.csv"),
                          "--trace-format", "servegen", "--start", "43200", "--duration", "600",
                          "--speed", "0.5") + AZURE,
}


def sim_args(flags: list[str]) -> argparse.Namespace:
    """`c2cq sim` flags → its parsed arguments (the command's own parser)."""
    p = argparse.ArgumentParser(prog="c2cq")
    cli_sim.register(p.add_subparsers(dest="cmd", required=True))
    return p.parse_args(["sim", *flags])


def rows(workloads: str, gpus: str, slices: int, models: int):
    """(workload, its `c2cq sim` flags, GPU) for each row whose trace is here (a missing one is said and skipped)."""
    for w in workloads.split(","):
        flags = [*WORKLOADS[w], "--models-from", "zipf", "--slices", str(slices), "--models", str(models)]
        if not Path(flags[1]).exists():
            print(f"{w}: {flags[1]} is absent, skipped")
            continue
        for gpu in gpus.split(","):
            yield w, flags, gpu


class CoreSplit:
    """While on: ``core.decide`` (what the c2cq policy folds through) timed per event, in process CPU time."""

    def __init__(self) -> None:
        self.seconds: collections.Counter = collections.Counter()
        self.count: collections.Counter = collections.Counter()
        self._real = core.decide

    def __enter__(self) -> "CoreSplit":
        real, seconds, count, clock = self._real, self.seconds, self.count, time.process_time

        def timed(state, e):
            t0 = clock()
            try:
                return real(state, e)
            finally:
                kind = type(e.msg).__name__ if type(e) is ev.ExecutorSaid else type(e).__name__
                seconds[kind] += clock() - t0
                count[kind] += 1

        core.decide = timed
        return self

    def __exit__(self, *exc) -> None:
        core.decide = self._real

    def report(self, cpu_s: float) -> str:
        total = sum(self.seconds.values())
        lines = [f"  the core's fold: {total:.2f} of {cpu_s:.2f} CPU s (timed per event, which adds ~1 us each)"]
        lines += [f"    {k:18} {self.count[k]:8d} events {v:6.2f} s {v / self.count[k] * 1e6:7.1f} us each"
                  for k, v in self.seconds.most_common()]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sim_speed")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--gpus", default="h100-sxm,gh200-96")
    p.add_argument("--policies", default="c2cq")
    p.add_argument("--slices", type=int, default=64)
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=1, help="runs per row; the median wall time is reported")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N of a cProfile of each c2cq run")
    p.add_argument("--core-split", action="store_true", help="print the scheduler core's CPU time by event type")
    a = p.parse_args(argv)
    print(f"{'workload':18} {'gpu':9} {'policy':16} {'requests':>8} {'virtual s':>9} {'wall s':>7} {'cpu s':>6} "
          f"{'x (wall)':>8} {'x (cpu)':>7} {'events':>8} {'both':>6}  runs (wall s)")
    for w, flags, gpu in rows(a.workloads, a.gpus, a.slices, a.models):
        sc = cli_sim.scenario(sim_args([*flags, "--gpu", gpu]))
        for name in a.policies.split(","):
            walls, cpus = [], []
            for _ in range(max(1, a.repeat)):
                prof = cProfile.Profile() if a.profile and name == "c2cq" else None
                if prof is not None:
                    prof.enable()
                split = CoreSplit() if a.core_split and name == "c2cq" else contextlib.nullcontext()
                c0 = time.process_time()
                with split:
                    out, _, wall = run_policy(name, sc)
                cpus.append(time.process_time() - c0)
                if isinstance(split, CoreSplit):
                    print(split.report(cpus[-1]), flush=True)
                if prof is not None:
                    prof.disable()
                    pstats.Stats(prof).sort_stats("tottime").print_stats(a.profile)
                walls.append(wall)
            wall, cpu = statistics.median(walls), statistics.median(cpus)
            v = out["sim"]["virtual_s"]
            print(f"{w:18} {gpu:9} {name:16} {out['requests']:8d} {v:9.0f} {wall:7.1f} {cpu:6.1f} {v / wall:8.0f} "
                  f"{v / cpu:7.0f} "
                  f"{out['sim']['events']:8d} {out['slo_attainment'] * 100:5.1f}%  "
                  f"{' '.join(f'{x:.1f}' for x in walls)}", flush=True)
        print(f"  c2cq sim {' '.join(flags)} --gpu {gpu}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
