"""The baselines (each a small policy of its own, sharing the slice model of SimBackend):

- load-then-serve (ServerlessLLM-style): a cold start loads the whole checkpoint into HBM at the
  loader's bandwidth (a share of the host link, shared with the GPU's other loading slices), then
  starts the inference engine (profiles.toml [loader]: every figure with its source), before the
  first token; it then serves from HBM (α = 1). A slice keeps loaded models in its HBM
  (least recently used evicted first when a new one needs room; dropped after keep-alive idle);
  a request goes to a slice serving or loading its model with a free batch slot, else to an idle
  slice holding it warm, else to the idle slice with the most free HBM (a cold start).
- time-sharing: one model per slice, a switch is a full load, FIFO: an idle slice takes the
  oldest waiting request and the waiting requests of its model (one batch), and serves that
  batch to the end before the next.

Requests wait at most the scheduler's ``max_wait_s``, then fail as the core fails them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from c2cq.loadgen.workload import PlannedRequest
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.executor import AssignRequest
from c2cq.services.executor.backend import StepResult
from c2cq.services.executor.sim import SimBackend
from c2cq.services.sim.engine import Engine, Link
from c2cq.services.sim.metrics import Recorder
from c2cq.services.sim.profiles import Profile, SliceSpec
from c2cq.services.sim.requests import index_of, prompt_ids, refusal, request_id

CHUNK_TOKENS = 512
EXPIRE_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class LoadRules:
    name: str
    cache: bool  # keep several loaded models (LRU + keep-alive) instead of one
    join: bool  # new requests join a batch serving (or loading) their model


LOAD_THEN_SERVE = LoadRules("load-then-serve", cache=True, join=True)
TIME_SHARE = LoadRules("time-share", cache=False, join=False)


class LoadSlice:
    def __init__(self, spec: SliceSpec, weight_share: float) -> None:
        self.spec = spec
        self.backend = SimBackend(spec.profile, device=spec.device)
        self.capacity = weight_share * spec.profile.hbm_bytes  # bytes of weights it may hold
        self.resident: dict[str, float] = {}  # model → last used (LRU order: oldest first)
        self.model: str | None = None  # serving or loading
        self.loading_until: float | None = None
        self.load_started = 0.0
        self.active: dict[int, None] = {}  # request indices in its batch
        self.stepping = False

    @property
    def idle(self) -> bool:
        return not self.active and self.loading_until is None

    def free_bytes(self, models: dict[str, ModelInfo]) -> float:
        return self.capacity - sum(models[m].bytes for m in self.resident)


class LoadPolicy:
    def __init__(self, rules: LoadRules, specs: list[SliceSpec], links: dict[str, Link],
                 models: dict[str, ModelInfo], engine: Engine, rec: Recorder, prof: Profile,
                 max_wait_s: float = 60.0) -> None:
        self.rules, self.name = rules, rules.name
        self.links, self.models, self.engine, self.rec, self.prof = links, models, engine, rec, prof
        self.max_wait_s = max_wait_s
        self.slices = [LoadSlice(s, prof.weight_share) for s in specs]
        self.largest = max(s.capacity for s in self.slices)
        self.waiting: deque[int] = deque()  # request indices in arrival order (may hold placed ones)
        self.by_model: dict[str, deque[int]] = {}
        self.reqs: dict[int, PlannedRequest] = {}  # waiting or running
        self.placed: dict[int, LoadSlice] = {}
        self.switch_started: dict[int, float] = {}

    def start(self) -> None:
        self.engine.after(EXPIRE_EVERY_S, self._expire)

    def submit(self, req: PlannedRequest) -> None:
        self.rec.arrive(req)
        info = self.models.get(req.model)
        no = refusal(req, info)
        if no is not None:
            self.rec.end(req.index, self.engine.now, "rejected", code=str(no.code))
            return
        if info.bytes > self.largest:
            self.rec.end(req.index, self.engine.now, "rejected", code="model_too_large")
            return
        self.reqs[req.index] = req
        self.waiting.append(req.index)
        self.by_model.setdefault(req.model, deque()).append(req.index)
        self._dispatch()

    # -- placement -----------------------------------------------------------------------------
    def _next(self, q: deque[int]) -> int | None:
        while q:
            i = q[0]
            if i in self.reqs and i not in self.placed:
                return i
            q.popleft()
        return None

    def _dispatch(self) -> None:
        if self.rules.join:
            for s in self.slices:
                if s.model is not None and (s.active or s.loading_until is not None):
                    self._fill(s)
        idle = [s for s in self.slices if s.idle]
        skipped: list[int] = []
        while idle:
            i = self._next(self.waiting)
            if i is None:
                break
            self.waiting.popleft()
            req = self.reqs[i]
            s = self._choose(idle, req.model)
            if s is None:  # no idle slice can hold it now: it keeps its place, later ones may go
                skipped.append(i)
                continue
            idle.remove(s)
            self._begin(s, req.model)
            self._fill(s)
        self.waiting.extendleft(reversed(skipped))

    def _choose(self, idle: list[LoadSlice], model: str) -> LoadSlice | None:
        size = self.models[model].bytes
        warm = [s for s in idle if s.model == model or model in s.resident]
        if warm:
            return warm[0]
        fits = [s for s in idle if s.capacity >= size]
        if not fits:
            return None
        return max(fits, key=lambda s: (s.free_bytes(self.models), -self.slices.index(s)))

    def _fill(self, s: LoadSlice) -> None:
        """Take waiting requests of the slice's model into its batch (up to max_batch)."""
        q = self.by_model.get(s.model)
        while q and len(s.active) < s.backend.max_batch:
            i = self._next(q)
            if i is None:
                break
            q.popleft()
            self.placed[i] = s
            s.active[i] = None
            if s.loading_until is not None:
                self.switch_started.setdefault(i, s.load_started)
            else:
                self._add(s, i)
        if s.loading_until is None:
            self._kick(s)

    def _begin(self, s: LoadSlice, model: str) -> None:
        now, info = self.engine.now, self.models[model]
        warm = s.model == model or model in s.resident
        s.model = model
        if warm:
            s.resident[model] = s.resident.pop(model, now)
            s.backend.switch(info, alpha=1.0)
            return
        if not self.rules.cache:
            s.resident.clear()
        while s.resident and s.free_bytes(self.models) < info.bytes:
            del s.resident[next(iter(s.resident))]  # least recently used first
        link = self.links[s.spec.group]
        bw = self.prof.loader_efficiency * min(s.spec.profile.link_bps, link.share(joining=True))
        link.users += 1
        link.bytes += info.bytes
        s.load_started = now
        pin = info.bytes / self.prof.loader_pin_bps if self.prof.loader_pin_bps > 0 else 0.0
        copied_at = now + pin + info.bytes / bw  # the checkpoint is in HBM; the link is free again
        self.engine.at(copied_at, self._copied, link)
        s.loading_until = copied_at + self.prof.loader_engine_start_s  # then the engine starts up
        self.engine.at(s.loading_until, self._loaded, s)

    def _copied(self, link: Link) -> None:
        link.users -= 1

    def _loaded(self, s: LoadSlice) -> None:
        s.loading_until = None
        s.resident[s.model] = self.engine.now
        s.backend.switch(self.models[s.model], alpha=1.0)
        for i in s.active:
            self._add(s, i)
        if self.rules.join:
            self._fill(s)
        self._kick(s)
        if not s.active:
            self._dispatch()

    def _add(self, s: LoadSlice, i: int) -> None:
        r = self.reqs[i]
        s.backend.add(AssignRequest(request_id=request_id(i), model=r.model, prompt_token_ids=prompt_ids(r.prompt_tokens or 1),
                                    max_tokens=r.max_tokens))

    # -- serving -------------------------------------------------------------------------------
    def _kick(self, s: LoadSlice) -> None:
        if not s.stepping and s.backend.has_work():
            s.stepping = True
            self.engine.at(self.engine.now, self._step, s)

    def _step(self, s: LoadSlice) -> None:
        if not s.backend.has_work():
            s.stepping = False
            return
        res = s.backend.step(CHUNK_TOKENS)
        self.engine.after(res.busy_s, self._publish, s, res)

    def _publish(self, s: LoadSlice, res: StepResult) -> None:
        now = self.engine.now
        for o in res.outputs:
            i = index_of(o.request_id)
            if o.token_ids and o.index == 0:
                self.rec.first_token(i, now)
                t0 = self.switch_started.pop(i, None)
                if t0 is not None:
                    self.rec.switch(i, now - t0)
            if o.finish is not None:
                self._end(i, now, "finished", tokens=o.index + len(o.token_ids))
        s.resident.pop(s.model, None)
        s.resident[s.model] = now  # most recently used
        s.stepping = False
        if s.active:
            if self.rules.join:
                self._fill(s)
            self._kick(s)
        else:
            self._dispatch()

    def _end(self, i: int, now: float, status: str, *, tokens: int = 0, code: str | None = None) -> None:
        s = self.placed.pop(i, None)
        if s is not None:
            s.active.pop(i, None)
        self.reqs.pop(i, None)
        self.switch_started.pop(i, None)
        self.rec.end(i, now, status, tokens=tokens, code=code)

    def _expire(self) -> None:
        """Waiting too long fails a request; idle loaded models past keep-alive leave HBM."""
        now = self.engine.now
        while (i := self._next(self.waiting)) is not None and now - self.reqs[i].offset_s > self.max_wait_s:
            self.waiting.popleft()
            self._end(i, now, "error", code="no_executor")
        for s in self.slices:
            for mname, used in list(s.resident.items()):
                if mname != s.model and now - used > self.prof.keep_alive_s:
                    del s.resident[mname]
        self.engine.after(EXPIRE_EVERY_S, self._expire)
