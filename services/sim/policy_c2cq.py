"""The c2cq policy: the real scheduler core fed exactly what its shell would feed it — Submitted,
ExecutorSaid for every simulated executor message, Ticked at the shell's tick period — with its
commands applied to simulated executors in virtual time. It folds through ``core.decide``: the same
commands and state as ``core.apply``, less the Prometheus metrics (no decision reads them, nothing
serves them here; folding them was ~10% of a Mooncake run's CPU time)."""

from __future__ import annotations

from collections.abc import Callable

from c2cq.loadgen.workload import PlannedRequest
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.client import RequestFinished, RequestRejected, TokensEmitted
from c2cq.schemas.enums import FinishReason
from c2cq.services.scheduler import core
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.main import TICK_S
from c2cq.services.scheduler.state import Config, State, ToClient, ToExecutor
from c2cq.services.sim.engine import Engine, Link
from c2cq.services.sim.errors import SimError
from c2cq.services.sim.executor import SimExecutor, SwitchCosts
from c2cq.services.sim.kv import KVBackend, KVSetup
from c2cq.services.sim.metrics import Recorder
from c2cq.services.sim.profiles import Profile, SliceSpec
from c2cq.services.sim.requests import index_of, submit_of

CLIENT = b"sim-client"


class C2cqPolicy:
    name = "c2cq"

    def __init__(self, specs: list[SliceSpec], links: dict[str, Link], models: dict[str, ModelInfo], engine: Engine,
                 rec: Recorder, cfg: Config | None = None,
                 observe: Callable[[ev.SchedEvent], None] | None = None, prof: Profile | None = None,
                 kv: KVSetup | None = None) -> None:
        self.engine, self.rec, self.models, self.observe = engine, rec, models, observe
        self.state = State(cfg=cfg or Config())
        self.last_at = 0.0
        self.feeding = False
        self.plan_steps = 0
        n = len(specs)
        costs = SwitchCosts() if prof is None else SwitchCosts(
            fixed_s=prof.c2cq_switch_fixed_s, eager_copy=prof.c2cq_eager_copy, register_bps=prof.c2cq_register_bps,
            register_on_switch=prof.c2cq_register_on_switch)
        liveness = self.state.cfg.heartbeat_timeout_s / 2  # the core declares an executor lost after the timeout
        self.executors = {s.executor_id: SimExecutor(s, engine, links[s.group], models, self._said, rec,
                                                     phase=0.5 * i / max(1, n), costs=costs, liveness_s=liveness,
                                                     kv=kv)
                          for i, s in enumerate(specs)}

    def start(self) -> None:
        for x in self.executors.values():
            x.start()
        self.engine.after(TICK_S, self._tick)

    def submit(self, req: PlannedRequest) -> None:
        self.rec.arrive(req)
        self._feed(ev.Submitted(at=self.engine.now, client=CLIENT, msg=submit_of(req), info=self.models.get(req.model)))

    def kv_totals(self) -> dict:
        """What the slices' KV tiers did over the run, summed (empty without the KV model)."""
        out: dict[str, int] = {}
        for x in self.executors.values():
            for k, v in (x.backend.totals() if isinstance(x.backend, KVBackend) else {}).items():
                out[k] = out.get(k, 0) + v
        return out

    # -- inputs --------------------------------------------------------------------------------
    def _said(self, eid: str, msg) -> None:
        """An executor sent a message: the scheduler folds it at this virtual time — at once, unless
        it is folding another event (then right after it, as its shell would)."""
        if self.feeding:
            self.engine.at(self.engine.now, self._arrive, eid, msg)
        else:
            self._feed(ev.ExecutorSaid(at=self.engine.now, executor_id=eid, msg=msg))

    def _arrive(self, eid: str, msg) -> None:
        self._feed(ev.ExecutorSaid(at=self.engine.now, executor_id=eid, msg=msg))

    def _tick(self) -> None:
        self._feed(ev.Ticked(at=self.engine.now))
        self.engine.after(TICK_S, self._tick)

    def _feed(self, e: ev.SchedEvent) -> None:
        if e.at < self.last_at:
            raise SimError(f"the scheduler was fed an event at {e.at} after one at {self.last_at}")
        self.last_at = e.at
        if self.observe is not None:
            self.observe(e)
        self.feeding = True
        try:
            cmds = core.decide(self.state, e)  # its metrics unfolded: nothing serves or reads them here
            for c in cmds:
                t = type(c)
                if t is ToExecutor:
                    self.executors[c.executor_id].on_command(c.msg)
                elif t is ToClient:
                    msg = c.msg
                    if type(msg) is not TokensEmitted or msg.seq == 0:  # later batches change no outcome
                        self._to_client(msg)
                else:
                    self.plan_steps += 1
        finally:
            self.feeding = False

    # -- outputs to the client -----------------------------------------------------------------
    def _to_client(self, msg) -> None:
        now = self.engine.now
        if isinstance(msg, TokensEmitted):
            self.rec.first_token(index_of(msg.request_id), now)
        elif isinstance(msg, RequestFinished):
            ok = msg.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
            self.rec.end(index_of(msg.request_id), now, "finished" if ok else "error",
                         tokens=msg.usage.completion_tokens, switched=msg.switched,
                         code=None if ok else str(msg.error_code or msg.finish_reason))
        elif isinstance(msg, RequestRejected):
            if msg.request_id is None:
                raise SimError(f"the scheduler rejected a frame: {msg.message}")
            self.rec.end(index_of(msg.request_id), now, "rejected", code=str(msg.code))
