"""`c2cq events tail | show REQUEST_ID`: read the scheduler's event log (while it runs, or after)."""

from __future__ import annotations

import argparse
import json

import msgspec

from c2cq.errors import ConfigError
from c2cq.rundir import RunDir


def register(sub) -> None:
    p = sub.add_parser("events", help="read the scheduler's event log")
    esub = p.add_subparsers(dest="events_cmd", required=True)
    tail = esub.add_parser("tail", help="the last events")
    tail.add_argument("-n", type=int, default=20)
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(func=cmd_tail)
    show = esub.add_parser("show", help="every event of one request")
    show.add_argument("request_id")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    show.set_defaults(func=cmd_show)


def _open(args: argparse.Namespace):
    from c2cq.eventlog import EventLog
    from c2cq.services.scheduler.events import SchedulerEvent
    from c2cq.services.scheduler.journal import log_path

    path = log_path(RunDir.from_env(args.home))
    if not path.exists():
        raise ConfigError(f"no scheduler event log at {path}")
    return EventLog(path, SchedulerEvent)


def summary(e) -> str:
    """One line per event: what arrived, from whom, about what."""
    tag = type(e).__struct_config__.tag
    if tag == "submitted":
        m = e.msg
        size = f"{len(m.prompt_token_ids)} ids" if m.prompt_token_ids else f"{len(m.prompt or '')} chars"
        return f"submitted {m.request_id} model={m.model} prompt={size} max_tokens={m.max_tokens} client={e.client.decode(errors='replace')}"
    if tag == "cancel_asked":
        return f"cancel {e.request_id}"
    if tag == "executor_said":
        m = e.msg
        mt = type(m).__struct_config__.tag
        detail = {
            "tokens_produced": lambda: f"{m.request_id} index={m.index} n={len(m.token_ids)}",
            "completed": lambda: f"{m.request_id} {m.finish_reason} tokens={m.completion_tokens}"
                                 + (f" error={m.error_code}: {m.message}" if m.error_code else ""),
            "step_stats": lambda: f"step={m.step_s * 1e3:.2f}ms tokens={m.tokens} batch={m.batch} "
                                  f"hbm={m.bytes_hbm} host={m.bytes_host}",
            "model_resident": lambda: f"model={m.model} alpha={m.alpha:.3f}",
            "slice_ready": lambda: f"boot={m.boot_id} backend={m.backend} device={m.device}",
            "heartbeat": lambda: f"active={m.active} waiting={m.waiting}",
        }.get(mt, lambda: "")()
        return f"{e.executor_id} {mt} {detail}".rstrip()
    if tag == "executor_unreachable":
        return f"{e.executor_id} unreachable"
    return tag


def _print(rows, as_json: bool) -> None:
    for rid, e in rows:
        if as_json:
            print(json.dumps({"id": rid, **msgspec.to_builtins(e)}, default=str))
        else:
            print(f"{rid:>8}  {e.at:14.3f}  {summary(e)}")


def cmd_tail(args: argparse.Namespace) -> int:
    log = _open(args)
    try:
        _print(log.tail(args.n), args.json)
    finally:
        log.close()
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    log = _open(args)
    try:
        rows = list(log.by_key(args.request_id))
    finally:
        log.close()
    if not rows:
        raise ConfigError(f"no events for request {args.request_id!r}")
    _print(rows, args.json)
    return 0


