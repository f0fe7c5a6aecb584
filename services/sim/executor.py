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

One shortcut that changes nothing but the simulator's speed: a run of decode steps that are
alike (the same batch, every sequence past its prefill, the model wholly resident: the same
duration, nothing read over the link) and say nothing (no first token, no completion, no
stream flush or StepStats due) is one engine event, not one per step (``_run_of_steps``). Their
end times are the same sums as step by step; a command that arrives within the run ends it at
the step in flight, which is where the command would have taken effect."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from c2cq.schemas import executor as m
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.services.executor.backend import StepResult
from c2cq.services.executor.main import ANNOUNCE_S, HEARTBEAT_S, STATS_S
from c2cq.services.executor.sim import SimBackend
from c2cq.services.executor.slice import SliceQueue
from c2cq.services.sim.engine import Engine, Link
from c2cq.services.sim.kv import KVBackend, KVSetup
from c2cq.services.sim.metrics import Recorder
from c2cq.services.sim.profiles import SliceSpec
from c2cq.services.sim.requests import index_of

STREAM_S = 0.1  # later tokens of a request go out at least this often (the real executor: every step)


@dataclass(frozen=True, slots=True)
class SwitchCosts:
    """What a c2cq switch costs before the first step (profiles.toml [c2cq], with sources)."""

    fixed_s: float = 0.0
    eager_copy: float = 1.0  # share of the embedding table copied into HBM first
    register_bps: float = 0.0
    register_on_switch: bool = False


@dataclass(slots=True)
class _Run:
    """Alike decode steps in flight as one event: the first began at ``start``; each takes ``step_s``."""

    start: float
    step_s: float
    steps: int
    first: StepResult  # the first step's result (computed as usual)
    batch: list  # the backend's sequences the steps run


class SimExecutor:
    runs = True  # a run of alike, silent decode steps is one event (False: one event per step)

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
        res = b.step(self.chunk_tokens)
        if uses_link:
            link.users += 1
        link.bytes += res.bytes_host + b.copied_bytes
        if self.runs and not uses_link and self._run_of_steps(res):
            return
        engine.at(engine.now + res.busy_s, self._publish, res, uses_link)

    # -- runs of alike, silent decode steps (one event for many) ------------------------------
    def _run_of_steps(self, res: StepResult) -> bool:
        """``res`` was just computed, its model wholly resident: if the steps after it will be the
        same (a pure decode of the same batch) and the publishing of it and of the next ones says
        nothing, schedule one event for the whole run up to the first step whose end says
        something; False when that is this step."""
        b = self.backend
        if res.prefill_tokens or b.copied_bytes or res.decode_tokens != len(b.seqs) or not res.outputs:
            return False
        started, running = self.started, self.queue.running
        for o in res.outputs:
            if o.finish is not None or o.request_id not in started or o.request_id not in running:
                return False
        d, t, due, since = res.busy_s, self.engine.now, self.flush_due, self._stats_since
        last = b.remaining() + 1  # the step in which the first sequence completes
        k = 0
        while True:
            k += 1
            t = t + d  # as engine.after would sum it, step by step
            if k == last or (due is not None and t >= due) or t - since >= STATS_S:
                break
            if due is None:
                due = t + STREAM_S
        if k == 1:
            return False
        self._run = _Run(start=self.engine.now, step_s=d, steps=k, first=res, batch=b.batch())
        self._schedule_run_end(t)
        return True

    def _schedule_run_end(self, t: float) -> None:
        self._run_gen += 1
        self.engine.at(t, self._end_run, self._run_gen)

    def _cut_run(self) -> None:
        """A command arrived within a run: it ends with the step in flight (the steps that ended
        before now are published with it; the command takes effect from the next step on)."""
        r, now = self._run, self.engine.now
        t, k = r.start, 0
        while k < r.steps - 1 and t + r.step_s < now:
            t += r.step_s
            k += 1
        if k + 1 < r.steps:
            r.steps = k + 1
            self._schedule_run_end(t + r.step_s)

    def _end_run(self, gen: int) -> None:
        """The run's last step ended: publish the silent steps before it as their own ends would
        have (tokens held for the stream, from the first step's end on; the stats window, step by
        step), then the last step as usual."""
        if gen != self._run_gen or self._run is None:
            return  # the run was cut: a later event ends it
        r, self._run = self._run, None
        first = r.first
        if r.steps == 1:  # cut in its first step: that step is the last
            self._publish(first, False)
            return
        b, running, held = self.backend, self.queue.running, self.held
        more = b.decode_many(r.batch, r.steps - 2) if r.steps > 2 else {}
        for o in first.outputs:  # steps 1 .. steps-1, request by request (their order in held is per request)
            rid = o.request_id
            if rid not in running:
                continue  # aborted while the run went on
            toks = more.get(rid, ())
            texts = [o.text, " t" + " t".join(map(str, toks))] if toks else [o.text]  # the backend's text of each
            h = held.get(rid)
            if h is None:
                held[rid] = [o.index, [*o.token_ids, *toks], texts]
                if self.flush_due is None:
                    self.flush_due = r.start + r.step_s + STREAM_S  # held from the first step's end
            else:
                h[1].extend(o.token_ids)
                h[1].extend(toks)
                h[2].extend(texts)
        st = self._stats
        for _ in range(r.steps - 1):  # summed step by step, as the steps' own ends would
            st.busy_s += r.step_s
        st.decode_tokens += first.decode_tokens * (r.steps - 1)
        st.bytes_hbm += first.bytes_hbm * (r.steps - 1)
        self._stats_steps += r.steps - 1
        res = StepResult(outputs=b.decode_again(r.batch), busy_s=r.step_s, decode_tokens=first.decode_tokens,
                         bytes_hbm=first.bytes_hbm)
        self._publish(res, False)

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
        if self.flush_due is not None and (now >= self.flush_due or not held):
            self._flush()
        s = self._stats
        s.accumulate(res)
        self._stats_steps += 1
        if now - self._stats_since >= STATS_S:
            self.emit(m.StepStats, step_s=s.busy_s / self._stats_steps, tokens=s.prefill_tokens + s.decode_tokens,
                      prefill_tokens=s.prefill_tokens, decode_tokens=s.decode_tokens, batch=len(running),
                      bytes_hbm=s.bytes_hbm, bytes_host=s.bytes_host, model=self.queue.model, **self._kv_fields())
            self._stats, self._stats_steps, self._stats_since = StepResult(), 0, now
        self._work()
