"""A simulated executor: the real executor's slice loop (services/executor/main.py) in virtual
time — its SliceQueue, the SimBackend roofline, and exactly the messages it sends (SliceReady,
TokensProduced, RequestCompleted, StepStats, ModelResident, Heartbeat) — with the host link
shared by the slices of one GPU."""

from __future__ import annotations

from collections.abc import Callable

from c2cq.schemas import executor as m
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.services.executor.backend import StepResult
from c2cq.services.executor.main import ANNOUNCE_S, HEARTBEAT_S, STATS_S
from c2cq.services.executor.sim import SimBackend
from c2cq.services.executor.slice import SliceQueue
from c2cq.services.sim.engine import Engine, Link
from c2cq.services.sim.metrics import Recorder
from c2cq.services.sim.profiles import SliceSpec
from c2cq.services.sim.requests import index_of


class SimExecutor:
    def __init__(self, spec: SliceSpec, engine: Engine, link: Link, models: dict[str, ModelInfo],
                 send: Callable[[str, object], None], rec: Recorder, phase: float = 0.0) -> None:
        self.spec, self.id, self.engine, self.link, self.models = spec, spec.executor_id, engine, link, models
        self.send, self.rec, self.phase = send, rec, phase
        self.boot_id = f"sim-{spec.executor_id}"
        self.backend = SimBackend(spec.profile, device=spec.device)
        self.queue = SliceQueue()
        self.seq = 0
        self.chunk_tokens = 512
        self.stepping = False
        self.switch_at: dict[str, float] = {}  # attempt id → when the switch it waited for began
        self._stats = StepResult()
        self._stats_steps = 0
        self._stats_since = 0.0

    # -- messages out ------------------------------------------------------------------------
    def emit(self, cls, **fields) -> None:
        self.seq += 1
        self.send(self.id, cls(source=self.id, seq=self.seq, ts_ns=int(self.engine.now * 1e9), **fields))

    def announce(self) -> None:
        b = self.backend
        self.emit(m.SliceReady, executor_id=self.id, boot_id=self.boot_id, backend=b.name, device=b.device,
                  memory_budget_bytes=b.memory_budget_bytes, link_bandwidth_bps=b.link_bandwidth_bps,
                  max_batch=b.max_batch)

    def start(self) -> None:
        self.announce()
        self.engine.after(self.phase, self._heartbeat, self.engine.now + self.phase)

    def _heartbeat(self, last_announce: float) -> None:
        self.emit(m.Heartbeat, executor_id=self.id, boot_id=self.boot_id, active=len(self.queue.running),
                  waiting=len(self.queue.pending), draining=False)
        if self.engine.now - last_announce > ANNOUNCE_S:
            self.announce()
            last_announce = self.engine.now
        self.engine.after(HEARTBEAT_S, self._heartbeat, last_announce)

    # -- commands in (as Executor.on_command) ------------------------------------------------
    def on_command(self, cmd) -> None:
        if isinstance(cmd, m.AssignRequest):
            if self.queue.admit(cmd):
                self.backend.add(cmd)
        elif isinstance(cmd, m.AbortRequest):
            if self.queue.remove(cmd.request_id) == "running":
                self.backend.abort(cmd.request_id)
            self.switch_at.pop(cmd.request_id, None)
        elif isinstance(cmd, m.ApplyPlan):
            self.chunk_tokens = max(1, cmd.chunk_tokens)
            self.backend.set_alpha(cmd.alpha)
        if not self.stepping:
            self.stepping = True
            self.engine.at(self.engine.now, self._work)

    # -- work (as Executor.work_loop, one step per event) ------------------------------------
    def _switch_if_idle(self) -> None:
        nxt = self.queue.next_switch()
        if nxt is None:
            return
        model, reqs = nxt
        info = self.models.get(model)
        if info is None:
            for r in reqs:
                self.queue.remove(r.request_id)
                self.emit(m.RequestCompleted, request_id=r.request_id, finish_reason=FinishReason.ERROR,
                          prompt_tokens=0, completion_tokens=0, error_code=ErrorCode.UNKNOWN_MODEL,
                          message=f"unknown model {model!r}")
            self.queue.model = None
            return
        self.backend.switch(info)  # maps the weights: servable at once, α rises as it serves
        self.emit(m.ModelResident, model=model, alpha=self.backend.alpha(),
                  bytes_resident=int(self.backend.alpha() * info.bytes), switched_s=0.0)
        for r in reqs:
            if r.request_id in self.queue.running:
                self.backend.add(r)
                self.switch_at[r.request_id] = self.engine.now

    def _work(self) -> None:
        b = self.backend
        self._switch_if_idle()
        while not b.has_work() and self.queue.pending and not self.queue.running:
            self._switch_if_idle()  # the previous switch failed its requests: try the next model
        if not b.has_work():
            self.stepping = False
            return
        alpha0 = b.alpha()
        streams = alpha0 < 1.0
        b.link_share_bps = min(self.spec.profile.link_bps, self.link.share(joining=True))
        res = b.step(self.chunk_tokens)
        copied = max(0.0, b.alpha() - alpha0) * b.model.bytes
        if streams:
            self.link.users += 1
        self.link.bytes += res.bytes_host + copied
        self.engine.after(res.busy_s, self._publish, res, streams)

    def _publish(self, res: StepResult, streamed: bool) -> None:
        if streamed:
            self.link.users -= 1
        now = self.engine.now
        for o in res.outputs:
            if o.request_id not in self.queue.running:
                continue  # aborted while the step ran
            if o.token_ids:
                t0 = self.switch_at.pop(o.request_id, None)
                if t0 is not None:
                    self.rec.switch(index_of(o.request_id), now - t0)
                self.emit(m.TokensProduced, request_id=o.request_id, index=o.index, token_ids=o.token_ids,
                          text=o.text)
            if o.finish is not None:
                self.queue.remove(o.request_id)
                self.switch_at.pop(o.request_id, None)
                self.emit(m.RequestCompleted, request_id=o.request_id, finish_reason=o.finish,
                          prompt_tokens=o.prompt_tokens, completion_tokens=o.index + len(o.token_ids),
                          error_code=(o.code or ErrorCode.INTERNAL) if o.error else None, message=o.error)
        s = self._stats
        s.busy_s += res.busy_s
        s.prefill_tokens += res.prefill_tokens
        s.decode_tokens += res.decode_tokens
        s.bytes_hbm += res.bytes_hbm
        s.bytes_host += res.bytes_host
        self._stats_steps += 1
        if now - self._stats_since >= STATS_S:
            self.emit(m.StepStats, step_s=s.busy_s / self._stats_steps, tokens=s.prefill_tokens + s.decode_tokens,
                      prefill_tokens=s.prefill_tokens, decode_tokens=s.decode_tokens, batch=len(self.queue.running),
                      bytes_hbm=s.bytes_hbm, bytes_host=s.bytes_host, model=self.queue.model)
            self._stats, self._stats_steps, self._stats_since = StepResult(), 0, now
        self._work()
