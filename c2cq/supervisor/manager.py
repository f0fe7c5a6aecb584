"""The supervisor: starts every service, waits for each to say ready, restarts the crashed, stops all.

State lives in memory and is written to ``run/state.json`` on every change (``c2cq status``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from c2cq import lifecycle, log
from c2cq.rundir import RunDir, write_json
from c2cq.supervisor.policy import RestartHistory, RestartPolicy


@dataclass(frozen=True, slots=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    ready_timeout_s: float = 120.0


@dataclass(slots=True)
class ChildState:
    name: str
    state: str = "starting"  # starting | running | restarting | failed | stopped
    pid: int | None = None
    restarts: int = 0
    last_exit: int | None = None
    reason: str | None = None
    history: RestartHistory = field(default_factory=RestartHistory)


class Supervisor:
    def __init__(self, rd: RunDir, specs: list[ChildSpec], policy: RestartPolicy, meta: dict) -> None:
        self.rd, self.specs, self.policy, self.meta = rd, specs, policy, meta
        self.children = {s.name: ChildState(s.name) for s in specs}
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.log = log.get()
        self.all_ready = asyncio.Event()
        self.failed = asyncio.Event()
        self.settled = {s.name: asyncio.Event() for s in specs}  # set once running, or failed

    # -- state file -----------------------------------------------------------------------------
    def write_state(self) -> None:
        doc = {
            "supervisor_pid": os.getpid(),
            "home": str(self.rd.home),
            "stopping": self.stopping,
            "ready": self.all_ready.is_set() and not self.stopping,
            **self.meta,
            "services": [
                {k: v for k, v in asdict(c).items() if k != "history"} for c in self.children.values()
            ],
        }
        write_json(self.rd.state_file, doc, indent=2)

    # -- one child ------------------------------------------------------------------------------
    async def _spawn(self, spec: ChildSpec) -> bool:
        """Start the child and wait for its ready line; False if it died or timed out first."""
        st = self.children[spec.name]
        r, w = os.pipe()
        env = {**os.environ, **dict(spec.env), lifecycle.READY_FD_ENV: str(w), lifecycle.PARENT_PID_ENV: str(os.getpid())}
        logf = open(self.rd.log_dir / f"{spec.name}.log", "ab")
        try:
            proc = await asyncio.create_subprocess_exec(*spec.argv, env=env, pass_fds=(w,), stdout=logf,
                                                        stderr=logf, stdin=asyncio.subprocess.DEVNULL)
        finally:
            os.close(w)
            logf.close()
        self.procs[spec.name] = proc
        st.pid, st.state = proc.pid, "starting"
        self.write_state()
        loop = asyncio.get_running_loop()
        ready = loop.run_in_executor(None, os.read, r, 64)  # EOF (b"") if the child dies first
        try:
            line = await asyncio.wait_for(ready, spec.ready_timeout_s)
        except TimeoutError:
            line = b""
            proc.kill()
        finally:
            os.close(r)
        if line.startswith(b"ready"):
            st.state = "running"
            self.settled[spec.name].set()
            self.write_state()
            self.log.info("child_ready", child=spec.name, pid=proc.pid)
            return True
        return False

    async def run_child(self, spec: ChildSpec) -> None:
        st = self.children[spec.name]
        while not self.stopping:
            ok = await self._spawn(spec)
            if ok:
                self._check_all_ready()
            code = await self.procs[spec.name].wait()
            st.last_exit = code
            if self.stopping:
                break
            delay = st.history.decide(self.policy, time.monotonic())
            self.log.warning("child_exited", child=spec.name, code=code, ready=ok, restart_in=delay)
            if delay is None:
                st.state, st.reason = "failed", f"exited {code}; {self.policy.max_restarts} restarts in {self.policy.window_s:.0f} s"
                self.write_state()
                self.failed.set()
                self.settled[spec.name].set()
                return
            st.state, st.restarts = "restarting", st.restarts + 1
            self.write_state()
            await asyncio.sleep(delay)
        st.state = "stopped"
        self.write_state()

    def _check_all_ready(self) -> None:
        if all(c.state == "running" for c in self.children.values()):
            if not self.all_ready.is_set():
                self.all_ready.set()
                self.write_state()

    # -- everything -----------------------------------------------------------------------------
    async def stop_all(self, timeout_s: float = 15.0) -> None:
        self.stopping = True
        self.write_state()
        # the gateway first (no new HTTP requests; its streams end), executors (they drain), then the
        # scheduler, then the catalog (it unpublishes shm)
        names = [s.name for s in self.specs]
        groups = ([n for n in names if n == "gateway"], [n for n in names if n.startswith("exec")],
                  ["scheduler"], ["catalog"])
        for group in groups:
            procs = [self.procs[n] for n in group if n in self.procs and self.procs[n].returncode is None]
            for p in procs:
                p.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), timeout_s)
            except TimeoutError:
                for p in procs:
                    if p.returncode is None:
                        p.kill()
                await asyncio.gather(*(p.wait() for p in procs))

    def cleanup(self) -> None:
        shutil.rmtree(self.rd.sock_dir, ignore_errors=True)
        shutil.rmtree(self.rd.shm_dir, ignore_errors=True)
        self.rd.pid_file.unlink(missing_ok=True)


async def supervise(rd: RunDir, specs: list[ChildSpec], policy: RestartPolicy, meta: dict, notify_fd: int | None) -> int:
    sup = Supervisor(rd, specs, policy, meta)
    stop = lifecycle.shutdown_flag()
    sup.write_state()
    # the catalog and the scheduler first: executors need both to start serving
    tasks = {}
    for spec in specs:
        tasks[spec.name] = asyncio.create_task(sup.run_child(spec))
        if spec.name in ("catalog", "scheduler"):
            await asyncio.wait([tasks[spec.name], asyncio.create_task(sup.settled[spec.name].wait()),
                                asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(sup.all_ready.wait()),
               asyncio.create_task(sup.failed.wait())}
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if notify_fd is not None:
        ok = sup.all_ready.is_set() and not sup.failed.is_set()
        failed = [f"{c.name}: {c.reason or c.state}" for c in sup.children.values() if c.state != "running"]
        os.write(notify_fd, b"ready\n" if ok else ("failed " + "; ".join(failed) + "\n").encode())
        os.close(notify_fd)
        notify_fd = None
    await stop.wait()
    log.get().info("stopping")
    await sup.stop_all()
    for t in tasks.values():
        t.cancel()
    sup.write_state()
    sup.cleanup()
    return 0


def service_argv(module: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", module, *args)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (killed, not yet reaped by whoever inherited it) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc to tell: it answered the signal


def read_pid(rd: RunDir) -> int | None:
    try:
        pid = int(Path(rd.pid_file).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None
