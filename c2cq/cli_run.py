"""`c2cq up | down | status | generate`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from c2cq import log
from c2cq.errors import C2CQError, ConfigError
from c2cq.rundir import RunDir
from c2cq.services.executor.kv_flags import add_kv_flags, kv_argv, kv_options
from c2cq.supervisor import roles
from c2cq.supervisor.discover import discover
from c2cq.supervisor.manager import ChildSpec, read_pid, service_argv, supervise
from c2cq.supervisor.policy import RestartPolicy


def register(sub) -> None:
    up = sub.add_parser("up", help="start catalog, scheduler and one executor per slice")
    up.add_argument("--backend", choices=("cpu", "cuda", "sim"), default=None,
                    help="override discovery (default: cuda where GPUs exist, else cpu)")
    up.add_argument("--slices", type=int, default=int(os.environ.get("C2CQ_SLICES", "2")),
                    help="CPU or sim slices when no GPU is found (default 2)")
    up.add_argument("--per-gpu", type=int, default=1, help="executors per GPU where MIG is not configured")
    up.add_argument("--threads", type=int, default=0,
                    help="torch threads per CPU executor (default 0: one per core of the slice's share)")
    up.add_argument("--sim-time-scale", type=float, default=1.0)
    add_kv_flags(up)
    up.add_argument("--max-tokens-limit", type=int, default=4096)
    up.add_argument("--restart-max", type=int, default=5)
    up.add_argument("--restart-window", type=float, default=60.0)
    up.add_argument("--shm-root", default=None, metavar="DIR",
                    help="where model files are published for the slices: a tmpfs or hugetlbfs mount "
                         "(default $C2CQ_SHM_ROOT or /dev/shm)")
    up.add_argument("--http", default="127.0.0.1:8000", metavar="HOST:PORT",
                    help="where the OpenAI-compatible HTTP gateway listens (default 127.0.0.1:8000; port 0: any free one)")
    up.add_argument("--no-http", action="store_true", help="run no HTTP gateway")
    up.add_argument("--api-key", default=None,
                    help="require Authorization: Bearer KEY on the gateway's /v1/* (default $C2CQ_API_KEY)")
    up.add_argument("--metrics-auth", action="store_true", help="require the API key on /health and /metrics too")
    up.add_argument("--detach", action="store_true", help="return once every service is ready")
    up.add_argument("--print-config", action="store_true")
    up.add_argument("--notify-fd", type=int, default=None, help=argparse.SUPPRESS)
    roles.add_args(up)
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop a running instance and reap everything")
    down.add_argument("--timeout", type=float, default=30.0)
    down.set_defaults(func=cmd_down)

    st = sub.add_parser("status", help="services, slices, states, restarts")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    gen = sub.add_parser("generate", help="stream a generation to stdout")
    gen.add_argument("prompt")
    gen.add_argument("--model", required=True)
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user message through the model's "
                                                         "chat template (as `c2cq chat` does)")
    gen.set_defaults(func=cmd_generate)


def _specs(args: argparse.Namespace, rd: RunDir) -> tuple[list[ChildSpec], list]:
    kv_options(args)  # bad KV flags fail `c2cq up` at once, not each executor in turn
    if args.role == "control":
        return roles.control_specs(args, rd, gateway_spec), []
    if args.role == "node":
        return roles.node_specs(args, rd)
    home = ["--home", str(rd.home)]
    slices = discover(args.backend, args.slices, args.per_gpu)
    if not slices:
        raise ConfigError(f"no slices found for backend {args.backend!r} (no GPU visible to NVML?)")
    specs = [
        ChildSpec("catalog", service_argv("c2cq.services.catalog.main", *home)),
        ChildSpec("scheduler", service_argv("c2cq.services.scheduler.main", *home,
                                            "--max-tokens-limit", str(args.max_tokens_limit))),
    ]
    for s in slices:
        specs.append(ChildSpec(s.executor_id, service_argv(
            "c2cq.services.executor.main", *home, "--id", s.executor_id, "--backend", s.backend,
            "--device", s.device, "--threads", str(args.threads), "--sim-time-scale", str(args.sim_time_scale),
            *kv_argv(args)),
            env=s.child_env()))
    if not args.no_http:
        specs.append(gateway_spec(args, home))
    return specs, slices


def gateway_spec(args: argparse.Namespace, home: list[str]) -> ChildSpec:
    from c2cq.services.gateway.main import is_loopback, no_key_warning, parse_hostport

    host, port = parse_hostport(args.http)  # a bad --http fails `c2cq up` at once
    key = args.api_key or os.environ.get("C2CQ_API_KEY")
    if not key and not is_loopback(host) and not args.print_config:
        print(no_key_warning(host, port), file=sys.stderr, flush=True)  # here, not only in the gateway's log
    extra = ["--metrics-auth"] if args.metrics_auth else []
    # the key travels in the environment, not on a command line every user can read
    return ChildSpec("gateway", service_argv("c2cq.services.gateway.main", *home, "--http", args.http,
                                             "--identity", "gateway", *extra),
                     env=(("C2CQ_API_KEY", key),) if key else ())


def cmd_up(args: argparse.Namespace) -> int:
    rd = RunDir.from_env(args.home)
    pid = read_pid(rd)
    if pid is not None:
        raise ConfigError(f"an instance already runs in {rd.home} (supervisor pid {pid}); `c2cq down` first")
    specs, slices = _specs(args, rd)
    shm_root = _shm_root(args)
    policy = RestartPolicy(max_restarts=args.restart_max, window_s=args.restart_window)
    if args.print_config:
        print(json.dumps({"home": str(rd.home), "client": rd.client_addr, "executor": rd.executor_addr,
                          "catalog": rd.catalog_addr, "shm": str(shm_root / rd.shm_dir.name), "policy": policy.__dict__ if hasattr(policy, "__dict__") else repr(policy),
                          "services": [{"name": s.name, "argv": list(s.argv),
                                        "env": {k: ("***" if k == "C2CQ_API_KEY" else v) for k, v in s.env}}
                                       for s in specs]},
                         indent=2, default=str))
        return 0
    if args.detach:
        return _detach(args, rd)
    rd.ensure()
    rd.shm_root_file.write_text(f"{shm_root}\n")
    log.configure("supervisor")
    rd.pid_file.write_text(str(os.getpid()))
    meta = {"slices": [{"executor_id": s.executor_id, "backend": s.backend, "device": s.device,
                        "link_group": s.link_group} for s in slices]}
    import uvloop

    return uvloop.run(supervise(rd, specs, policy, meta, args.notify_fd))


def _shm_root(args: argparse.Namespace) -> Path:
    root = Path(args.shm_root or os.environ.get("C2CQ_SHM_ROOT") or "/dev/shm").resolve()
    if not root.is_dir():
        raise ConfigError(f"--shm-root {root}: no such folder")
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"--shm-root {root}: not writable")
    return root


def _detach(args: argparse.Namespace, rd: RunDir) -> int:
    rd.ensure()
    r, w = os.pipe()
    argv = [a for a in sys.argv[1:] if a != "--detach"]
    if args.home and "--home" not in argv:
        argv = ["--home", str(rd.home), *argv]
    logf = open(rd.log_dir / "supervisor.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "c2cq.cli", *argv, "--notify-fd", str(w)], pass_fds=(w,),
                            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
    os.close(w)
    logf.close()
    line = b""
    while not line.endswith(b"\n"):  # the supervisor writes "ready" or "failed …"; EOF: it died first
        chunk = os.read(r, 4096)
        if not chunk:
            break
        line += chunk
    os.close(r)
    if line.startswith(b"ready"):
        print(f"c2cq up: ready (supervisor pid {proc.pid}, home {rd.home})")
        return 0
    reason = line.decode(errors="replace").strip() or f"the supervisor exited with {proc.poll()}"
    print(f"c2cq up: {reason}; see {rd.log_dir}", file=sys.stderr)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return 1


def cmd_down(args: argparse.Namespace) -> int:
    rd = RunDir.from_env(args.home)
    pid = read_pid(rd)
    if pid is None:
        print(f"c2cq down: nothing runs in {rd.home}")
        return 0
    fd = os.pidfd_open(pid)
    os.kill(pid, signal.SIGTERM)
    ready, _, _ = select.select([fd], [], [], args.timeout)
    os.close(fd)
    if not ready:
        os.killpg(pid, signal.SIGKILL)
        raise C2CQError(f"the supervisor {pid} did not stop within {args.timeout} s; killed its process group")
    print("c2cq down: stopped")
    return 0


def load_state(rd: RunDir) -> dict:
    try:
        doc = json.loads(rd.state_file.read_text())
    except FileNotFoundError:
        return {"running": False, "services": []}
    doc["running"] = read_pid(rd) is not None
    try:
        doc["http"] = json.loads((rd.run / "http.json").read_text()) if doc["running"] else None
    except (FileNotFoundError, json.JSONDecodeError):
        doc["http"] = None
    return doc


def require_instance(rd: RunDir) -> None:
    """Fail at once, naming `c2cq up`, where no instance of this home can answer: no supervisor runs
    (no pid file, or its process is gone), it is stopping, or its scheduler failed or stopped. A
    scheduler that is starting or restarting may still answer (the client waits through a restart);
    with C2CQ_CLIENT_ADDR the scheduler is elsewhere, and only its reply can tell."""
    if os.environ.get("C2CQ_CLIENT_ADDR"):
        return
    doc = load_state(rd)
    if not doc["running"]:
        raise ConfigError(f"no c2cq instance runs in {rd.home}; start one with `c2cq up` (or pass --home)")
    if doc.get("stopping"):
        raise ConfigError(f"the instance in {rd.home} is stopping; start it again with `c2cq up` once it is down")
    sched = next((s for s in doc.get("services", []) if s.get("name") == "scheduler"), None)
    if sched is not None and sched.get("state") in ("failed", "stopped"):
        why = f" ({sched['reason']})" if sched.get("reason") else ""
        raise ConfigError(f"the instance in {rd.home} runs, but its scheduler {sched['state']}{why}; see "
                          f"{rd.log_dir / 'scheduler.log'}, then `c2cq down` and `c2cq up`")


def cmd_status(args: argparse.Namespace) -> int:
    rd = RunDir.from_env(args.home)
    doc = load_state(rd)
    doc["executors"] = []
    remote = os.environ.get("C2CQ_CLIENT_ADDR")  # a scheduler elsewhere (c2cq --connect): ask it
    if doc["running"] or remote:
        from c2cq.client import AsyncClient

        async def q():
            async with AsyncClient(home=str(rd.home)) as c:
                return await c.status(timeout=3.0)

        try:
            rep = asyncio.run(q())
            doc["executors"] = [
                {f: getattr(e, f) for f in e.__struct_fields__} for e in rep.executors]
            doc["requests_in_flight"] = rep.requests_in_flight
        except C2CQError as e:
            doc["scheduler_error"] = str(e)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    if remote:
        print(f"scheduler at {remote}: " + (f"error: {doc['scheduler_error']}" if "scheduler_error" in doc
                                            else f"{len(doc['executors'])} slices"))
    else:
        print(f"home {rd.home}: {'running' if doc['running'] else 'not running; start it with `c2cq up`'}")
    for s in doc.get("services", []):
        print(f"  {s['name']:<12} {s['state']:<11} pid={s['pid']} restarts={s['restarts']}"
              + (f" ({s['reason']})" if s.get("reason") else ""))
    if doc.get("http"):
        print(f"  http         {doc['http']['url']}/v1" + (" (API key required)" if doc["http"].get("auth") else ""))
    for e in doc["executors"]:
        print(f"  slice {e['executor_id']:<8} {e['state']:<9} {e['backend']}:{e['device']} model={e['model']} "
              f"alpha={e['alpha']:.2f} active={e['active_requests']}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from c2cq.client import AsyncClient

    if args.chat:  # `c2cq chat` checks for an instance itself
        from c2cq.cli_chat import generate_chat

        return generate_chat(args)
    require_instance(RunDir.from_env(args.home))

    async def run() -> None:
        async with AsyncClient(home=args.home) as c:
            async for piece in c.stream(args.model, args.prompt, max_tokens=args.max_tokens,
                                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                        seed=args.seed):
                sys.stdout.write(piece)
                sys.stdout.flush()
        sys.stdout.write("\n")

    asyncio.run(run())
    return 0
