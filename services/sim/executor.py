"""A simulated executor: the real executor's slice loop (services/executor/main.py) in virtual
time — its SliceQueue, the SimBackend roofline, and the messages it sends (SliceReady,
TokensProduced, RequestCompleted, StepStats, ModelResident, Heartbeat) — with the host link
shared by the slices of one GPU.

Two departures from the real loop, both to send the core fewer events without changing what it
learns from them:
- a request's first token goes out at once; later tokens are streamed in batches, at least every
  ``STREAM_S`` and always before the request's completion (as a serving engine's stream interval);
- a heartbeat is skipped when the executor said something else since the last one and is busy
  (any message refreshes the core's ``last_seen``); an idle executor says so at once, then at
  least every ``liveness_s`` (half the core's heartbeat timeout).

A switch is not free (profiles.toml [c2cq]): engine build, the embedding table over the link,
and, if configured, registering the model's mapping — then every step streams what is not
resident while the residency copy shares the same link share.

Shortcuts that change nothing but the simulator's speed (runs of alike decode steps as one
event, steady steps computed in closed form): services/sim/shortcuts.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from c2cq.schemas import executor as m
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.services.executor.backend import StepResult
from c2cq.services.executor.main import ANNOUNCE_S, HEARTBEAT_S
from c2cq.services.executor.sim import SimBackend
from c2cq.services.executor.slice import SliceQueue
from c2cq.services.sim.engine import Engine, Link
from c2cq.services.sim.kv import KVBackend, KVSetup
from c2cq.services.sim.metrics import Recorder
from c2cq.services.sim.profiles import SliceSpec
from c2cq.services.sim.requests import index_of
from c2cq.services.sim.shortcuts import STREAM_S, Shortcuts, _Run, _Steady

__all__ = ["STREAM_S", "SimExecutor", "SwitchCosts"]


@dataclass(frozen=True, slots=True)
class SwitchCosts:
    """What a c2cq switch costs before the first step (profiles.toml [c2cq], with sources)."""

    fixed_s: float = 0.0
    eager_copy: float = 1.0  # share of the embedding table copied into HBM first
    register_bps: float = 0.0
    register_on_switch: bool = False


class SimExecutor(Shortcuts):

    def __init__(self, spec: SliceSpec, engine: Engine, link: Link, models: dict[str, ModelInfo],
                 send: Callable[[str, object], None], rec: Recorder, phase: float = 0.0,
                 costs: SwitchCosts = SwitchCosts(), liveness_s: float = 1.5, kv: KVSetup | None = None) -> None:
        self.spec, self.id, self.engine, self.link, self.models = spec, spec.executor_id, engine, link, models
        self.send, self.rec, self.phase = send, rec, phase
        self.costs, self.liveness_s = costs, liveness_s
        self.boot_id = f"sim-{spec.executor_id}"
        self.backend = self._backend(kv)
        self.queue = SliceQueue()
        self.seq = 0
        self.chunk_tokens = 512
        self.stepping = False
        self.ready_at = 0.0  # a switch's set-up ends here: no step before it
        self.registered: set[str] = set()
        self.switch_at: dict[str, float] = {}  # attempt id → when the switch it waited for began
        self.started: set[str] = set()  # attempts whose first token went out
        self.held: dict[str, list] = {}  # attempt id → [first index, [token ids], [texts]] not yet sent
        self.flush_due: float | None = None
        self.last_said = 0.0
        self.hb_idle = False  # the last heartbeat said idle, and nothing changed since
        self._stats = StepResult()
        self._stats_steps = 0
        self._stats_since = 0.0
        self._run: _Run | None = None  # a run of alike decode steps in flight (one event)
        self._run_gen = 0  # names the event that ends the current run (a cut run's old event is stale)
        self._steady: _Steady | None = None  # set while the next step is a steady one (see _steady_start)
        self._ahead: _Steady | None = None  # the steady step in flight

    def _backend(self, kv: KVSetup | None) -> SimBackend:
        """The sim backend; with a KV setup, the one with bounded KV tiers and a rotation policy (kv.py)."""
        if kv is None:
            return SimBackend(self.spec.profile, device=self.spec.device)
        return KVBackend(self.spec.profile, kv, clock=lambda: self.engine.now, device=self.spec.device)

    def _kv_fields(self) -> dict:
        """StepStats' KV figures (none without the KV model)."""
        b = self.backend
        return b.report() if isinstance(b, KVBackend) else {}

    # -- messages out ------------------------------------------------------------------------
    def emit(self, cls, **fields) -> None:
        self.seq += 1
        now = self.engine.now
        self.last_said = now
        self.send(self.id, cls(source=self.id, seq=self.seq, ts_ns=int(now * 1e9), **fields))

    def announce(self) -> None:
        b = self.backend
        self.emit(m.SliceReady, executor_id=self.id, boot_id=self.boot_id, backend=b.name, device=b.device,
                  memory_budget_bytes=b.memory_budget_bytes, link_bandwidth_bps=b.link_bandwidth_bps,
                  max_batch=b.max_batch)

    def start(self) -> None:
        self.announce()
        self.engine.after(self.phase, self._heartbeat, self.engine.now + self.phase)

    def _heartbeat(self, last_announce: float) -> None:
        now = self.engine.now
        idle = not self.queue.running and not self.queue.pending
        if (idle and not self.hb_idle) or now - self.last_said >= self.liveness_s:
            self.emit(m.Heartbeat, executor_id=self.id, boot_id=self.boot_id, active=len(self.queue.running),
                      waiting=len(self.queue.pending), draining=False)
            self.hb_idle = idle
        if now - last_announce > ANNOUNCE_S:
            self.announce()
            last_announce = now
        self.engine.after(HEARTBEAT_S, self._heartbeat, last_announce)

    # -- commands in (as Executor.on_command) ------------------------------------------------
    def on_command(self, cmd) -> None:
        if self._run is not None:
            self._cut_run()
        if self._steady is not None:
            self._steady_cut()
        if isinstance(cmd, m.AssignRequest):
            self.hb_idle = False
            if self.queue.admit(cmd):
                self.backend.add(cmd)
        elif isinstance(cmd, m.AbortRequest):
            if self.queue.remove(cmd.request_id) == "running":
                self.backend.abort(cmd.request_id)
            self.switch_at.pop(cmd.request_id, None)
            self.started.discard(cmd.request_id)
            self.held.pop(cmd.request_id, None)
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
        self.backend.switch(info)  # maps the weights: servable after the set-up, α rises as it serves
        setup = self._switch_setup(info)
        self.ready_at = self.engine.now + setup
        self.emit(m.ModelResident, model=model, alpha=self.backend.alpha(),
                  bytes_resident=int(self.backend.alpha() * info.bytes), switched_s=setup)
        for r in reqs:
            if r.request_id in self.queue.running:
                self.backend.add(r)
                self.switch_at[r.request_id] = self.engine.now

    def _switch_setup(self, info: ModelInfo) -> float:
        """Seconds from a switch to its first step: engine build, the embedding table over this
        slice's link share (counted on the link), and registering the mapping if configured."""
        c = self.costs
        dtype = info.bytes / info.parameters if info.parameters else 2.0
        eager = c.eager_copy * info.vocab_size * info.hidden_size * dtype
        share = min(self.spec.profile.link_bps, self.link.share(joining=True))
        self.link.bytes += eager
        t = c.fixed_s + eager / share
        if c.register_on_switch and c.register_bps > 0 and info.name not in self.registered:
            t += info.bytes / c.register_bps
        self.registered.add(info.name)
        return t

    def _work(self) -> None:
        b, q = self.backend, self.queue
        if q.pending and not q.running:  # else _switch_if_idle has nothing to do
            self._switch_if_idle()
            while not b.has_work() and q.pending and not q.running:
                self._switch_if_idle()  # the previous switch failed its requests: try the next model
        if not b.has_work():
            self.stepping = False
            return
        engine = self.engine
        if engine.now < self.ready_at:  # the switch is still setting up
            engine.at(self.ready_at, self._work)
            return
        uses_link = b.alpha() < 1.0  # it streams, or copies, or both
        link = self.link
        share = link.capacity_bps / max(1, link.users + 1)  # link.share(joining=True), inlined
        cap = self.spec.profile.link_bps
        b.link_share_bps = cap if cap <= share else share  # min(cap, share)
        if self._steady is not None:
            self._steady_start(self._steady, uses_link)
            return
        res = b.step(self.chunk_tokens)
        if uses_link:
            link.users += 1
        link.bytes += res.bytes_host + b.copied_bytes
        if self.runs and not uses_link and self._run_of_steps(res):
            return
        engine.at(engine.now + res.busy_s, self._publish, res, uses_link)

    def _flush(self) -> None:
        for rid, (idx, toks, texts) in self.held.items():
            self.emit(m.TokensProduced, request_id=rid, index=idx, token_ids=tuple(toks), text="".join(texts))
        self.held.clear()
        self.flush_due = None

    def _publish(self, res: StepResult, streamed: bool) -> None:
        if streamed:
            self.link.users -= 1
        now = self.engine.now
        running, held, started = self.queue.running, self.held, self.started
        for o in res.outputs:
            rid = o.request_id
            if rid not in running:
                continue  # aborted while the step ran
            if o.token_ids:
                if rid not in started:  # the first token: at once
                    started.add(rid)
                    t0 = self.switch_at.pop(rid, None)
                    if t0 is not None:
                        self.rec.switch(index_of(rid), now - t0)
                    self.emit(m.TokensProduced, request_id=rid, index=o.index, token_ids=o.token_ids, text=o.text)
                else:
                    h = held.get(rid)
                    if h is None:
                        held[rid] = [o.index, list(o.token_ids), [o.text]]
                        if self.flush_due is None:
                            self.flush_due = now + STREAM_S
                    else:
                        h[1].extend(o.token_ids)
                        h[2].append(o.text)
            if o.finish is not None:
                h = held.pop(rid, None)
                if h is not None:  # what it holds of this request goes out before its completion
                    self.emit(m.TokensProduced, request_id=rid, index=h[0], token_ids=tuple(h[1]), text="".join(h[2]))
                self.queue.remove(rid)
                self.switch_at.pop(rid, None)
                started.discard(rid)
                self.emit(m.RequestCompleted, request_id=rid, finish_reason=o.finish,
                          prompt_tokens=o.prompt_tokens, completion_tokens=o.index + len(o.token_ids),
                          error_code=(o.code or ErrorCode.INTERNAL) if o.error else None, message=o.error)
        self._stats.accumulate(res)
        self._stats_steps += 1
        # a step that prefilled or left a sequence out is not followed by a steady one (a cheap
        # filter: the step after it is computed, and its own publishing looks again)
        self._said_after_step(None, not res.prefill_tokens and res.decode_tokens == len(self.backend.seqs))

    def _emit_stats(self) -> None:
        """The StepStats of the window since the last (the steps' mean duration, their sums)."""
        s = self._stats
        self.emit(m.StepStats, step_s=s.busy_s / self._stats_steps, tokens=s.prefill_tokens + s.decode_tokens,
                  prefill_tokens=s.prefill_tokens, decode_tokens=s.decode_tokens, batch=len(self.queue.running),
                  bytes_hbm=s.bytes_hbm, bytes_host=s.bytes_host, model=self.queue.model, **self._kv_fields())
        self._stats, self._stats_steps, self._stats_since = StepResult(), 0, self.engine.now
