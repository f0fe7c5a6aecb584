"""`c2cq loadgen`: an open-loop load run against a running instance or any OpenAI-compatible
server (``--target URL``; table, JSON, PNG plots).

The pure part turns flags into trace requests and a workload (:func:`source_requests`,
:func:`workload_config` and the small parsers); :func:`cmd_loadgen` is the shell that asks for the
models (c2cq.loadgen.models), runs :func:`c2cq.loadgen.runner.run_open_loop` through AsyncClient
and writes the outputs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from c2cq.errors import ConfigError
from c2cq.loadgen import arrivals, traces, workload
from c2cq.loadgen.models import listed_models
from c2cq.loadgen.progress import ProgressBar
from c2cq.loadgen.report import Report
from c2cq.loadgen.runner import ClientTarget, MonotonicClock, RunResult, run_open_loop
from c2cq.loadgen.traces import TraceRequest
from c2cq.loadgen.workload import DEFAULT_SLO_CLASSES, PlannedRequest, SloClass, Workload, WorkloadConfig

TRACE_FORMATS = tuple(traces.READERS)  # azure, burstgpt, mooncake, servegen
LENGTH_FORMATS = tuple(f for f in TRACE_FORMATS if f != "servegen")  # those with token counts
DEFAULT_VOCAB = 32000  # prompt token ids stay below this when the catalog says nothing

_EPILOG = """\
durations: with --trace, --start and --duration are in trace seconds and --speed divides them
(--start 600 --duration 300 --speed 20 replays trace minutes 10-15 in 15 s); without a trace,
--duration is wall seconds of the synthetic schedule.

models: by default the trace's model names where it has them (BurstGPT, ServeGen clients),
else a Zipf popularity (--zipf) over the running catalog in its listed order. --models-from
rank maps the trace's names, most requested first, onto the catalog in order.

outputs: a table on the terminal; with --out DIR also DIR/report.json (every figure, the run's
settings, the counts sent = finished + rejected + errors), DIR/requests.jsonl (one line per
sent request: planned and actual send offsets, outcome, token times) and PNG plots
(ttft_cdf, tpot_cdf, slo_over_time, switch_latency).

examples:
  c2cq loadgen --rate 5 --duration 60 --out runs/poisson
  c2cq loadgen --pattern gamma --cv 4 --rate-steps 0:2,30:10,60:2 --duration 90
  c2cq loadgen --trace azure_llm_2023_code.csv --trace-format azure \\
      --start 180 --duration 120 --speed 8 --max-tokens-cap 64 --out runs/azure
  c2cq loadgen --target http://127.0.0.1:8000/v1 --rate 5 --duration 60 --out runs/http
  c2cq loadgen --trace servegen_language_m-small_day0.csv --trace-format servegen \\
      --duration 600 --speed 10 --models-from rank --lengths-trace azure_llm_2023_code.csv
"""


def register(sub) -> None:
    p = sub.add_parser(
        "loadgen", help="open-loop load run (synthetic arrivals or a trace replay)",
        description="Send requests on a schedule fixed before the run, whatever the latency (open\n"
                    "loop, no concurrency cap), to the instance of --home; report TTFT, TPOT, E2E,\n"
                    "SLO attainment, cold starts (model switches) and send lag.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("arrivals (a trace, or a synthetic process)")
    src.add_argument("--trace", type=Path, metavar="PATH", help="replay this trace file")
    src.add_argument("--trace-format", choices=TRACE_FORMATS, help="the trace's format (needed with --trace)")
    src.add_argument("--rate", type=float, metavar="RPS", help="synthetic: mean requests/s")
    src.add_argument("--rate-steps", metavar="T:RATE,...",
                     help="synthetic, time-varying: rate RATE from second T on, e.g. 0:2,30:10,60:2")
    src.add_argument("--pattern", choices=[p.value for p in arrivals.Pattern], default=None,
                     help="synthetic inter-arrival distribution (default poisson)")
    src.add_argument("--cv", type=float, default=None,
                     help="coefficient of variation of the gaps (gamma/weibull; poisson is 1)")
    win = p.add_argument_group("how much")
    win.add_argument("--start", type=float, default=None, metavar="S", help="trace: skip to this trace second")
    win.add_argument("--duration", type=float, default=None, metavar="S",
                     help="trace: seconds of trace to replay; synthetic: seconds of schedule")
    win.add_argument("--speed", type=float, default=None, metavar="X", help="trace: replay this many times faster")
    win.add_argument("--num-requests", type=int, default=None, metavar="N",
                     help="send at most this many (the first ones)")
    win.add_argument("--seed", type=int, default=0, metavar="N", help="seed of every random choice (default 0)")
    mod = p.add_argument_group("models")
    mod.add_argument("--models-from", choices=("auto", "trace", "zipf", "rank"), default="auto",
                     help="auto: the trace's names where given, else zipf (default)")
    mod.add_argument("--models", metavar="A,B,...",
                     help="use these catalog models, in this popularity order (default: the whole catalog)")
    mod.add_argument("--map", action="append", default=[], metavar="TRACE=MODEL",
                     help="serve the trace's model TRACE with MODEL (repeatable)")
    mod.add_argument("--zipf", type=float, default=1.0, metavar="S",
                     help="Zipf exponent of model popularity (default 1.0)")
    ln = p.add_argument_group("lengths")
    ln.add_argument("--lengths-trace", type=Path, metavar="PATH",
                    help="draw (prompt, output) lengths from this trace where the source has none")
    ln.add_argument("--lengths-format", choices=LENGTH_FORMATS, default="azure",
                    help="format of --lengths-trace (default azure)")
    ln.add_argument("--prompt-tokens", type=int, default=512, metavar="N",
                    help="prompt length where neither source nor --lengths-trace has one (default 512)")
    ln.add_argument("--output-tokens", type=int, default=128, metavar="N",
                    help="output length where neither source nor --lengths-trace has one (default 128)")
    ln.add_argument("--max-tokens-cap", type=int, default=None, metavar="N", help="cap every request's output length")
    ln.add_argument("--drop-failed", action="store_true", help="skip requests the trace marks failed (BurstGPT)")
    slo = p.add_argument_group("SLO classes")
    slo.add_argument("--slo", action="append", default=[], metavar="NAME:TTFT_MS:TPOT_MS[:WEIGHT]",
                     help="an SLO class (repeatable; default interactive:1000:100 and batch:10000:500, "
                          "equally likely)")
    slo.add_argument("--slo-by-tag", action="append", default=[], metavar="TAG=CLASS",
                     help="requests with this trace tag (BurstGPT Log Type) get this class")
    slo.add_argument("--no-send-slo", dest="send_slo", action="store_false",
                     help="do not tell the server each request's SLO targets")
    tgt = p.add_argument_group("target (default: the instance of --home, through its ZeroMQ client)")
    tgt.add_argument("--target", metavar="URL",
                     help="any OpenAI-compatible server instead, e.g. http://127.0.0.1:8000/v1: streamed "
                          "/v1/completions, TTFT and TPOT from the SSE stream, models from /v1/models")
    tgt.add_argument("--api-key", default=None, metavar="KEY",
                     help="with --target: sent as Authorization: Bearer KEY (default $OPENAI_API_KEY)")
    run = p.add_argument_group("run and output")
    run.add_argument("--out", type=Path, metavar="DIR", help="write report.json, requests.jsonl and PNG plots here")
    run.add_argument("--plot-window", type=float, default=None, metavar="S",
                     help="seconds per bar of the over-time plot (default: 1/60 of the run, >= 1)")
    run.add_argument("--timeout", type=float, default=300.0, metavar="S",
                     help="a request that hears nothing for this many seconds is an error (default 300)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    run.add_argument("--dry-run", action="store_true", help="print the plan's shape and send nothing")
    p.set_defaults(func=cmd_loadgen)


# --- pure: flags → requests → workload ------------------------------------------------------


def parse_slo(specs: Sequence[str]) -> tuple[tuple[SloClass, ...], tuple[float, ...] | None]:
    """``NAME:TTFT_MS:TPOT_MS[:WEIGHT]`` specs → classes and weights (None: equally likely)."""
    if not specs:
        return DEFAULT_SLO_CLASSES, None
    classes, weights = [], []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) not in (3, 4) or not parts[0]:
            raise ConfigError(f"--slo {spec!r}: expected NAME:TTFT_MS:TPOT_MS[:WEIGHT]")
        try:
            nums = [float(x) for x in parts[1:]]
        except ValueError:
            raise ConfigError(f"--slo {spec!r}: TTFT_MS, TPOT_MS and WEIGHT must be numbers") from None
        classes.append(SloClass(parts[0], nums[0], nums[1]))
        weights.append(nums[2] if len(nums) == 3 else 1.0)
    return tuple(classes), tuple(weights)


def parse_rate_steps(spec: str) -> arrivals.PiecewiseRate:
    """``T:RATE,T:RATE,...`` → a piecewise-constant rate (the first T must be 0)."""
    try:
        pairs = [tuple(float(x) for x in item.split(":")) for item in spec.split(",") if item.strip()]
    except ValueError:
        raise ConfigError(f"--rate-steps {spec!r}: expected T:RATE,T:RATE,...") from None
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ConfigError(f"--rate-steps {spec!r}: expected T:RATE,T:RATE,...")
    return arrivals.PiecewiseRate(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))


def parse_pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    """``A=B`` items → {A: B}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{flag} {item!r}: expected A=B")
        out[key] = value
    return out


def rank_model_map(requests: Iterable[TraceRequest], catalog: Sequence[str]) -> dict[str, str]:
    """The trace's model names, most requested first (ties by name), onto the catalog in
    order, wrapping around when the trace names more models than the catalog holds."""
    if not catalog:
        raise ConfigError("--models-from rank needs a non-empty catalog")
    counts = Counter(r.model for r in requests if r.model is not None)
    ranked = sorted(counts, key=lambda m: (-counts[m], m))
    return {name: catalog[i % len(catalog)] for i, name in enumerate(ranked)}


def _read_trace(path: Path, fmt: str, seed: int, start: float, duration: float | None) -> Iterable[TraceRequest]:
    if fmt == "servegen":
        # Only the windows that overlap [start, start + duration) are drawn: a day of a busy
        # model holds tens of millions of arrivals.
        end = math.inf if duration is None else start + duration
        wins = (w for w in traces.read_servegen_windows(path)
                if w.start_s < end and w.start_s + traces.SERVEGEN_WINDOW_S > start)
        return traces.servegen_arrivals(wins, seed=seed)
    return traces.READERS[fmt](path)


def source_requests(args: argparse.Namespace) -> list[TraceRequest]:
    """The arrivals the flags ask for, sorted by time, at most --num-requests of them."""
    if args.num_requests is not None and args.num_requests < 0:
        raise ConfigError("--num-requests must be >= 0")
    if args.trace is not None:
        if args.trace_format is None:
            raise ConfigError("--trace needs --trace-format (" + ", ".join(TRACE_FORMATS) + ")")
        if args.rate is not None or args.rate_steps is not None:
            raise ConfigError("give --trace or --rate/--rate-steps, not both")
        if args.pattern is not None or args.cv is not None:
            raise ConfigError("--pattern and --cv shape synthetic arrivals; a trace has its own")
        if args.trace_format == "servegen" and args.duration is None:
            raise ConfigError("--trace-format servegen needs --duration: a day of a busy model holds "
                              "tens of millions of arrivals")
        start = 0.0 if args.start is None else args.start
        speed = 1.0 if args.speed is None else args.speed
        reqs = traces.window(_read_trace(args.trace, args.trace_format, args.seed, start, args.duration),
                             start_s=start, duration_s=args.duration, speed=speed)
        out = sorted(reqs, key=lambda r: r.arrival_s)
        return out if args.num_requests is None else out[: args.num_requests]
    if args.rate is None and args.rate_steps is None:
        raise ConfigError("give --trace PATH --trace-format F, or --rate / --rate-steps")
    if args.rate is not None and args.rate_steps is not None:
        raise ConfigError("give --rate or --rate-steps, not both")
    for flag in ("start", "speed"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag} applies to a trace replay only")
    if args.duration is None and args.num_requests is None:
        raise ConfigError("a synthetic schedule needs --duration and/or --num-requests")
    rate = parse_rate_steps(args.rate_steps) if args.rate_steps is not None else args.rate
    if isinstance(rate, float) and not (math.isfinite(rate) and rate > 0):
        raise ConfigError(f"--rate must be > 0, got {rate}")
    cv = args.cv if args.cv is not None else 1.0
    pattern = args.pattern or arrivals.Pattern.POISSON
    offsets = arrivals.schedule(rate, pattern=pattern, cv=cv, duration_s=args.duration,
                                count=args.num_requests, seed=args.seed)
    return workload.from_schedule(offsets)


def length_pool(args: argparse.Namespace) -> tuple[tuple[int, int], ...]:
    """Lengths for requests whose source has none: from --lengths-trace, else the fixed pair."""
    if args.lengths_trace is not None:
        pool = workload.length_pool(traces.READERS[args.lengths_format](args.lengths_trace))
        if not pool:
            raise ConfigError(f"{args.lengths_trace} holds no request with both lengths")
        return tuple(pool)
    if args.prompt_tokens < 1 or args.output_tokens < 1:
        raise ConfigError("--prompt-tokens and --output-tokens must be >= 1")
    return ((args.prompt_tokens, args.output_tokens),)


def choose_catalog(listed: Sequence[str], wanted: str | None) -> tuple[str, ...]:
    """The catalog the workload draws from: --models (checked against the listing) or all."""
    if wanted is None:
        return tuple(listed)
    names = tuple(m.strip() for m in wanted.split(",") if m.strip())
    missing = [m for m in names if m not in listed]
    if missing:
        raise ConfigError(f"--models names {missing} not in the catalog ({', '.join(listed) or 'empty'})")
    if not names:
        raise ConfigError("--models is empty")
    return names


def workload_config(args: argparse.Namespace, requests: Sequence[TraceRequest],
                    catalog: tuple[str, ...]) -> WorkloadConfig:
    """How the flags turn requests into planned ones: models, lengths, SLO classes."""
    classes, weights = parse_slo(args.slo)
    model_map = parse_pairs(args.map, "--map")
    models = args.models_from
    if models == "rank":
        model_map = {**rank_model_map(requests, catalog), **model_map}
        models = "trace"
    if args.max_tokens_cap is not None and args.max_tokens_cap < 1:
        raise ConfigError("--max-tokens-cap must be >= 1")
    return WorkloadConfig(
        catalog=catalog, models=models, zipf_exponent=args.zipf, model_map=model_map,
        lengths=length_pool(args), max_tokens_limit=args.max_tokens_cap, drop_failed=args.drop_failed,
        slo_classes=classes, slo_weights=weights, slo_by_tag=parse_pairs(args.slo_by_tag, "--slo-by-tag"),
        seed=args.seed)


def prompt_vocab(planned_models: Iterable[str], vocab_sizes: dict[str, int]) -> int:
    """The largest vocabulary every planned model accepts (token ids must be below it)."""
    return min((vocab_sizes[m] for m in set(planned_models) if m in vocab_sizes), default=DEFAULT_VOCAB)


def plan_summary(plan: Sequence[PlannedRequest]) -> str:
    """One line on the plan's shape: count, span, rate, lengths, models."""
    n, span = len(plan), (plan[-1].offset_s if plan else 0.0)
    if n == 0:
        return "plan: no requests"
    models = Counter(p.model for p in plan)
    top = ", ".join(f"{m} {c}" for m, c in models.most_common(4))
    rate = f"{n / span:.2f} req/s" if span > 0 else "all at once"
    return (f"plan: {n} requests over {span:.1f} s ({rate}); mean prompt "
            f"{sum(p.prompt_tokens or 0 for p in plan) / n:.0f} tokens, mean max_tokens "
            f"{sum(p.max_tokens for p in plan) / n:.0f}; {len(models)} models (top: {top})")


# --- the shell -------------------------------------------------------------------------------


def cmd_loadgen(args: argparse.Namespace) -> int:
    from c2cq.rundir import RunDir

    rd = RunDir.from_env(args.home)
    if args.plot_window is not None and not (math.isfinite(args.plot_window) and args.plot_window > 0):
        raise ConfigError("--plot-window must be > 0")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ConfigError("--timeout must be > 0")
    listed, vocab_sizes = listed_models(args, rd)
    catalog = choose_catalog(listed, args.models)
    requests = source_requests(args)
    cfg = workload_config(args, requests, catalog)
    shape = Workload(requests, cfg).plan()  # the same draws as the run's, without prompts
    print(plan_summary(shape), file=sys.stderr)
    unknown = sorted({p.model for p in shape} - set(listed))
    if unknown:
        print(f"warning: {len(unknown)} planned models are not in the catalog ({', '.join(unknown[:5])}"
              f"{', …' if len(unknown) > 5 else ''}); their requests will be rejected as unknown_model "
              "(see --models-from rank, --map)", file=sys.stderr)
    if args.dry_run:
        return 0
    vocab = prompt_vocab((p.model for p in shape), vocab_sizes)
    wl = Workload(requests, cfg, workload.SyntheticPrompts(vocab_size=vocab, seed=args.seed))

    import uvloop

    result = uvloop.run(_run(rd, wl, args))
    report = Report.from_records(result.records, cfg.slo_classes)
    counts = result.counts()
    print(report.table())
    if result.interrupted:
        print(f"interrupted: {counts['sent']} of {len(wl)} planned requests were sent", file=sys.stderr)
    if args.out is not None:
        meta = run_metadata(args, result, planned=len(wl), catalog=catalog, vocab=vocab)
        written = write_outputs(args.out, report, result, meta, cfg.slo_classes, args.plot_window)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 130 if result.interrupted else 0


async def _run(rd, wl: Workload, args: argparse.Namespace) -> RunResult:
    if args.target is not None:
        from c2cq.loadgen.openai_target import OpenAITarget

        async with OpenAITarget(args.target, api_key=args.api_key, timeout=args.timeout,
                                send_slo=args.send_slo) as target:
            return await _drive(wl, target, args)

    from c2cq.client import AsyncClient

    async with AsyncClient(home=str(rd.home), timeout=args.timeout) as client:
        await client.status(timeout=5.0)  # a scheduler that does not answer fails here, not per request
        return await _drive(wl, ClientTarget(client, send_slo=args.send_slo), args)


async def _drive(wl: Workload, target, args: argparse.Namespace) -> RunResult:
    bar = ProgressBar(len(wl), args.progress)
    try:
        return await run_open_loop(wl.iter_plan(), target, MonotonicClock(), progress=bar)
    finally:
        bar.close()


def run_metadata(args: argparse.Namespace, result: RunResult, *, planned: int, catalog: Sequence[str],
                 vocab: int) -> dict:
    """The run's settings and accounting, for report.json."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k != "func" and not callable(v)}
    if settings.get("api_key"):
        settings["api_key"] = "<redacted>"  # report.json is shared; the key is not
    return {
        "settings": settings,
        "planned": planned,
        "counts": result.counts(),
        "interrupted": result.interrupted,
        "wall_s": result.ended_at - result.started_at,
        "catalog": list(catalog),
        "prompt_vocab": vocab,
        "error_examples": dict(sorted(result.error_examples.items())),
    }


def write_outputs(out: Path, report: Report, result: RunResult, meta: dict, slo_classes: Sequence[SloClass],
                  plot_window: float | None) -> list[Path]:
    """report.json, requests.jsonl and the PNG plots under ``out``."""
    from c2cq.loadgen.plots import write_plots

    out.mkdir(parents=True, exist_ok=True)
    doc = report.to_dict() | {"run": meta}
    (out / "report.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    with (out / "requests.jsonl").open("w") as f:
        for rec in result.records:
            f.write(json.dumps(asdict(rec)) + "\n")
    pngs = write_plots(result.records, out, slo_classes=slo_classes, window_s=plot_window)
    return [out / "report.json", out / "requests.jsonl", *pngs.values()]
