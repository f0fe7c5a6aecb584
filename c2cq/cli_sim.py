"""`c2cq sim`: the scheduler core and two baselines on simulated GPU slices, in virtual time.

The workload flags are `c2cq loadgen`'s (a trace replay or a synthetic process, Zipf over a
catalog); the catalog is generated (services/catalog/sim_models.generate); the slices come
from a profile file (services/sim/profiles.toml or --profile FILE).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from c2cq.errors import ConfigError

_EPILOG = """\
examples:
  c2cq sim --rate 20 --duration 300 --models 200
  c2cq sim --trace ../shared/traces/azure_llm_2023_code.csv --trace-format azure --speed 8 \\
      --duration 600 --slices 64 --models 1000 --out runs/sim-azure.json
  c2cq sim --trace ../shared/traces/servegen_language_m-mid_day0.csv --trace-format servegen \\
      --start 43200 --duration 600 --lengths-trace ../shared/traces/azure_llm_2023_code.csv
  c2cq sim --trace ../shared/traces/azure_llm_2023_code.csv --trace-format azure --speed 8 \\
      --duration 3600 --gpu h100-sxm --find-min-slices --target 0.95
"""


def register(sub) -> None:
    from c2cq.loadgen import arrivals
    from c2cq.loadgen.cli import LENGTH_FORMATS, TRACE_FORMATS
    from c2cq.services.sim.run import POLICIES

    p = sub.add_parser("sim", help="simulate c2cq and baselines on GPU slices (virtual time)",
                       description="Drive the real scheduler core, load-then-serve and time-sharing with\n"
                                   "the same workload over simulated GH200/H100 MIG slices; report TTFT/TPOT\n"
                                   "attainment, switch latency, goodput and link utilisation per policy.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("arrivals (as c2cq loadgen)")
    src.add_argument("--trace", type=Path, metavar="PATH")
    src.add_argument("--trace-format", choices=TRACE_FORMATS)
    src.add_argument("--rate", type=float, metavar="RPS")
    src.add_argument("--rate-steps", metavar="T:RATE,...")
    src.add_argument("--pattern", choices=[x.value for x in arrivals.Pattern], default=None)
    src.add_argument("--cv", type=float, default=None)
    src.add_argument("--start", type=float, default=None, metavar="S")
    src.add_argument("--duration", type=float, default=None, metavar="S")
    src.add_argument("--speed", type=float, default=None, metavar="X")
    src.add_argument("--num-requests", type=int, default=None, metavar="N")
    src.add_argument("--seed", type=int, default=0, metavar="N")
    mod = p.add_argument_group("models and lengths (as c2cq loadgen)")
    mod.add_argument("--models", type=int, default=1000, metavar="N", help="generated catalog size (default 1000)")
    mod.add_argument("--models-from", choices=("auto", "trace", "zipf", "rank"), default="auto")
    mod.add_argument("--map", action="append", default=[], metavar="TRACE=MODEL")
    mod.add_argument("--zipf", type=float, default=1.0, metavar="S")
    mod.add_argument("--max-context", type=int, default=8192, metavar="N",
                     help="context length of the generated models (default 8192; a longer prompt is rejected)")
    mod.add_argument("--lengths-trace", type=Path, metavar="PATH")
    mod.add_argument("--lengths-format", choices=LENGTH_FORMATS, default="azure")
    mod.add_argument("--prompt-tokens", type=int, default=512, metavar="N")
    mod.add_argument("--output-tokens", type=int, default=128, metavar="N")
    mod.add_argument("--max-tokens-cap", type=int, default=None, metavar="N")
    mod.add_argument("--drop-failed", action="store_true")
    mod.add_argument("--slo", action="append", default=[], metavar="NAME:TTFT_MS:TPOT_MS[:WEIGHT]")
    mod.add_argument("--slo-by-tag", action="append", default=[], metavar="TAG=CLASS")
    hw = p.add_argument_group("cluster")
    hw.add_argument("--profile", type=Path, default=None, metavar="FILE",
                    help="performance model (default: the shipped services/sim/profiles.toml)")
    hw.add_argument("--gpu", default="gh200-96", help="GPU type of the profile (default gh200-96)")
    hw.add_argument("--layout", default="3g,2g,2g", help="MIG slices of one GPU (default 3g,2g,2g)")
    hw.add_argument("--slices", type=int, default=64, metavar="N", help="slices in all (default 64)")
    hw.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated (default {','.join(POLICIES)})")
    hw.add_argument("--kv-policy", choices=("off", "rotate", "recompute", "block", "compare"), default="off",
                    help="model each slice's KV tiers (services/sim/kv.py) with this rotation policy; compare: c2cq "
                         "once per policy and once unbounded, side by side (the baselines keep an unbounded KV). "
                         "Default off")
    hw.add_argument("--slo-margin", type=float, default=None, metavar="F",
                    help="the scheduler's controller aims at this share of each SLO (default: its config's)")
    fm = p.add_argument_group("the fewest slices")
    fm.add_argument("--find-min-slices", action="store_true",
                    help="per policy, search (doubling from --slices, then bisection) the fewest slices whose "
                         "TTFT+TPOT attainment reaches --target; printed beside one model per slice")
    fm.add_argument("--target", type=float, default=0.95, metavar="F", help="attainment to reach (default 0.95)")
    fm.add_argument("--max-slices", type=int, default=None, metavar="N",
                    help="give up above N slices (default: one slice per model that receives traffic)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write every figure as JSON here")
    p.set_defaults(func=cmd_sim)


def scenario(args: argparse.Namespace):
    """Flags → Scenario (pure but for reading the trace and profile files)."""
    from c2cq.loadgen.cli import source_requests, workload_config
    from c2cq.loadgen.workload import Workload
    from c2cq.services.catalog.sim_models import generate
    from c2cq.services.scheduler.state import Config
    from c2cq.services.sim.profiles import build_cluster, load_profile, parse_layout
    from c2cq.services.sim.run import Scenario

    if args.models < 1:
        raise ConfigError("--models must be >= 1")
    prof = load_profile(args.profile)
    specs = build_cluster(prof, args.gpu, parse_layout(args.layout, prof), args.slices)
    if args.max_context < 1:
        raise ConfigError("--max-context must be >= 1")
    infos = generate(args.models, max_context=args.max_context)
    models = {m.name: m for m in infos}
    requests = source_requests(args)
    lw = argparse.Namespace(**{**vars(args), "models": None})  # loadgen's --models names catalog models
    plan = Workload(requests, workload_config(lw, requests, tuple(models))).plan()
    cfg = Config() if args.slo_margin is None else Config(slo_margin=args.slo_margin)
    kv = None if args.kv_policy in ("off", "compare") else args.kv_policy
    return Scenario(plan=plan, specs=specs, models=models, profile=prof, scheduler=cfg, kv_policy=kv)


def table(results: dict) -> str:
    cols = ["policy", "requests", "TTFT att.", "TPOT att.", "both", "goodput r/s", "TTFT p50/p99 ms",
            "TPOT p50/p99 ms", "switches", "switch p50/p90/p99 ms", "link util", "not finished"]
    rows = [cols]
    ms = lambda s, *ks: "/".join("-" if s[k] is None else f"{s[k] * 1e3:.0f}" for k in ks)  # noqa: E731
    pct = lambda v: "-" if v is None else f"{v * 100:.1f}%"  # noqa: E731
    for name, r in results.items():
        nf = ", ".join(f"{k} {v}" for k, v in sorted(r["not_finished"].items())) or "-"
        rows.append([name, str(r["requests"]), pct(r["ttft_attainment"]), pct(r["tpot_attainment"]),
                     pct(r["slo_attainment"]), "-" if r["goodput_rps"] is None else f"{r['goodput_rps']:.2f}",
                     ms(r["ttft_s"], "p50", "p99"), ms(r["tpot_s"], "p50", "p99"), str(r["switched_requests"]),
                     ms(r["switch_latency_s"], "p50", "p90", "p99"), pct(r["link_utilisation"]["mean"]), nf])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, len(cols) - 1) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows)


def kv_table(results: dict) -> str:
    """What the KV tiers did, for the runs that modelled them."""
    rows = [["policy", "rotations", "GB rotated", "recomputes", "preemptions", "tokens/s"]]
    for name, r in results.items():
        k = r.get("kv")
        if k is not None:
            rows.append([name, str(k["rotations"]), f"{k['bytes_rotated'] / 1e9:.1f}", str(k["recomputes"]),
                         str(k["preemptions"]), "-" if k["tokens_per_s"] is None else f"{k['tokens_per_s']:.0f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def run_kv(sc, policies: list[str], kv_policy: str, progress) -> dict:
    """Each policy once; with --kv-policy compare, c2cq once per KV policy (named c2cq/POLICY), then
    without the KV model (c2cq/unbounded: a KV pool that never fills, the reference)."""
    import dataclasses

    from c2cq.services.sim.kv import KV_POLICIES
    from c2cq.services.sim.run import run_all

    if kv_policy != "compare":
        return run_all(sc, policies, progress)
    results = {}
    for name in policies:
        if name != "c2cq":
            results |= run_all(sc, [name], progress)
            continue
        for kv in KV_POLICIES:
            results[f"c2cq/{kv}"] = run_all(dataclasses.replace(sc, kv_policy=kv), ["c2cq"], progress)["c2cq"]
        results["c2cq/unbounded"] = run_all(dataclasses.replace(sc, kv_policy=None), ["c2cq"], progress)["c2cq"]
    return results


def min_slices_table(rows: dict, dedicated: int, target: float, gpus_per: int) -> str:
    out = [f"{'policy':20} {'slices':>7} {'GPUs':>5} {'attainment':>10} {'one model per slice / this':>27}"]
    for name, s in rows.items():
        if s.slices is None:
            top = max(s.probes)
            out.append(f"{name:20} {'>' + str(top):>7} {'-':>5} {s.probes[top] * 100:9.1f}%  "
                       f"{'< ' + format(dedicated / top, '.1f') + 'x':>26}  (target {target * 100:g}% not reached)")
        else:
            out.append(f"{name:20} {s.slices:7d} {-(-s.slices // gpus_per):5d} {s.probes[s.slices] * 100:9.1f}% "
                       f"{dedicated / s.slices:26.1f}x")
    out.append(f"{'one model per slice':20} {dedicated:7d} {-(-dedicated // gpus_per):5d} {'':>10} {'1.0x':>27}")
    return "\n".join(out)


def cmd_find_min_slices(args: argparse.Namespace, sc, policies: list[str]) -> int:
    import dataclasses

    from c2cq.services.sim.minslices import dedicated_slices, find_min_slices
    from c2cq.services.sim.profiles import build_cluster, parse_layout
    from c2cq.services.sim.run import run_policy

    if not 0.0 < args.target <= 1.0:
        raise ConfigError("--target must be in (0, 1]")
    layout = parse_layout(args.layout, sc.profile)
    dedicated = dedicated_slices(sc.plan)
    cap = args.max_slices or dedicated
    if cap < 1:
        raise ConfigError("--max-slices must be >= 1")
    rows = {}
    for name in policies:
        def attainment(n: int, name=name) -> float:
            specs = build_cluster(sc.profile, args.gpu, layout, n)
            return run_policy(name, dataclasses.replace(sc, specs=specs))[0]["slo_attainment"]

        rows[name] = find_min_slices(attainment, args.target, args.slices, cap, on_probe=lambda n, a, name=name: print(
            f"  {name}: {n} slices -> {a * 100:.1f}%", file=sys.stderr, flush=True))
    print(min_slices_table(rows, dedicated, args.target, len(layout)))
    if args.out is not None:
        doc = {"target": args.target, "gpu": args.gpu, "layout": args.layout, "one_model_per_slice": dedicated,
               "policies": {k: {"slices": v.slices, "probes": {str(n): a for n, a in sorted(v.probes.items())}}
                            for k, v in rows.items()}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from c2cq.loadgen.cli import plan_summary
    from c2cq.services.sim.run import POLICIES

    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    bad = [x for x in policies if x not in POLICIES]
    if bad or not policies:
        raise ConfigError(f"--policies: choose from {', '.join(POLICIES)}")
    sc = scenario(args)
    print(plan_summary(sc.plan), file=sys.stderr)
    print(f"cluster: {len(sc.specs)} {args.gpu} slices ({args.layout} per GPU), {len(sc.models)} models",
          file=sys.stderr)
    if args.find_min_slices:
        return cmd_find_min_slices(args, sc, policies)

    def progress(name: str, wall: float | None) -> None:
        if wall is not None:
            print(f"  {name}: {wall:.1f} s wall", file=sys.stderr)

    results = run_kv(sc, policies, args.kv_policy, progress)
    print(table(results))
    if any("kv" in r for r in results.values()):
        print()
        print(kv_table(results))
    if args.out is not None:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    if k not in ("func", "out") and not callable(v)}
        doc = {"settings": settings, "profile_sources": sc.profile.sources, "results": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
