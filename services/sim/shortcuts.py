"""The sim executor's shortcuts: steps it does not compute one by one with ``SimBackend.step``,
each giving exactly what that would (the same messages, at the same times, in the same order).

- A **run** of alike, silent decode steps (the same batch, every sequence past its prefill, the
  model wholly resident: the same duration, nothing read over the link; no first token, no
  completion, no stream flush or StepStats due) is one engine event, not one per step
  (``_run_of_steps``). Their end times are the same sums as step by step; a command that arrives
  within the run ends it at the step in flight, where the command would have taken effect.
- A **steady** step (``_steady_next``): a decode of the same batch as the step before, every
  sequence past its first token, none completing, nothing copied (α at its cap). It is computed
  in closed form — its duration is the roofline ``step`` evaluates, at the link share it starts
  with, so a streaming slice follows its siblings' comings and goings on the shared link step by
  step — and its tokens are drawn when it ends. One that streams (α < 1) keeps its own engine
  event, scheduled at the same point as ``step``'s would be, so every event runs in the same
  order as without the shortcut, and its end publishes what ``_publish`` would (tokens held for
  the stream, the stats window, both sent when due). One that is resident starts a run without
  computing its first step. A command that arrives within a steady step makes it the StepResult
  ``step`` would have given at its start; the step after is computed as usual.

``SimExecutor.runs`` / ``SimExecutor.steady`` False turn them off (the reference they must match).
"""

from __future__ import annotations

from dataclasses import dataclass

from c2cq.services.executor.backend import StepResult
from c2cq.services.executor.main import STATS_S
from c2cq.services.executor.sim import _GOLDEN, _MASK, SimBackend, _roofline

STREAM_S = 0.1  # later tokens of a request go out at least this often (the real executor: every step)


@dataclass(slots=True)
class _Run:
    """Alike decode steps in flight as one event: the first began at ``start``; each takes ``step_s``."""

    start: float
    step_s: float
    steps: int
    first: StepResult | None  # the first step's result (None: a steady run's, drawn at the end)
    batch: list  # the backend's sequences the steps run
    n: int  # sequences decoded per step
    hbm: int  # bytes read from HBM per step
    last: int  # the step in which the first sequence completes


@dataclass(slots=True)
class _Steady:
    """The next step decodes ``batch`` (every sequence of the backend, in step order), reading
    ``hbm`` bytes from HBM and ``host`` over the link, copying none; ``left``: steps until the
    first sequence completes (the step that does is computed by ``step``)."""

    batch: list
    hbm: int
    host: int
    left: int
    link: bool = False  # the step in flight streams (counted among the link's users)
    busy_s: float = 0.0  # the step in flight's duration
    res: StepResult | None = None  # the step in flight as ``step`` gives it (a command came)


class Shortcuts:
    """Mixed into SimExecutor (services/sim/executor.py), whose state these methods share."""

    runs = True  # a run of alike, silent decode steps is one event (False: one event per step)
    steady = True  # a steady step is computed in closed form (False: by SimBackend.step)

    def _run_length(self, d: float, last: int) -> tuple[int, float]:
        """Steps of ``d`` from now up to the first whose end says something (the ``last``-th
        completes a sequence), and the end time, summed as engine.after would, step by step."""
        t, due, since = self.engine.now, self.flush_due, self._stats_since
        k = 0
        if due is None:  # nothing held yet: the first step's tokens are, due a stream interval on
            k, t = 1, t + d
            if k == last or t - since >= STATS_S:
                return k, t
            due = t + STREAM_S
        while True:
            k += 1
            t = t + d
            if k == last or t >= due or t - since >= STATS_S:
                return k, t

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
        last = b.remaining() + 1  # the step in which the first sequence completes
        k, t = self._run_length(res.busy_s, last)
        if k == 1:
            return False
        self._run = _Run(start=self.engine.now, step_s=res.busy_s, steps=k, first=res, batch=b.batch(),
                         n=res.decode_tokens, hbm=res.bytes_hbm, last=last)
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
        step), then the last step — with them when it completes nothing, else as usual."""
        if gen != self._run_gen or self._run is None:
            return  # the run was cut: a later event ends it
        r, self._run = self._run, None
        b, first = self.backend, r.first
        if r.steps == 1:  # cut in its first step: that step is the last
            self._publish(first if first is not None else self._result(r.batch, r.step_s, r.n, r.hbm, 0), False)
            return
        whole = r.steps < r.last and type(b) is SimBackend  # the last step too is a plain decode
        draw = r.steps - (0 if whole else 1) - (0 if first is None else 1)
        more = b.decode_many(r.batch, draw) if draw > 0 else {}
        if first is None:
            items = [(s.rid, s.produced - draw, more[s.rid]) for s in r.batch if s.rid in more]
        else:
            items = [(o.request_id, o.index, [*o.token_ids, *more.get(o.request_id, ())]) for o in first.outputs]
        running, held = self.queue.running, self.held
        for rid, idx, toks in items:  # request by request (their order in held is per request)
            if rid not in running:
                continue  # aborted while the run went on
            text = " t" + " t".join(map(str, toks))  # the backend's texts of the steps, joined
            h = held.get(rid)
            if h is None:
                held[rid] = [idx, toks, [text]]
                if self.flush_due is None:
                    self.flush_due = r.start + r.step_s + STREAM_S  # held from the first step's end
            else:
                h[1].extend(toks)
                h[2].append(text)
        n = r.steps if whole else r.steps - 1
        st = self._stats
        busy, d = st.busy_s, r.step_s
        for _ in range(n):  # summed step by step, as the steps' own ends would
            busy += d
        st.busy_s = busy
        st.decode_tokens += r.n * n
        st.bytes_hbm += r.hbm * n
        self._stats_steps += n
        if not whole:
            self._publish(self._result(r.batch, r.step_s, r.n, r.hbm, 0), False)
            return
        self._said_after_step()

    def _result(self, batch: list, busy_s: float, n: int, hbm: int, host: int) -> StepResult:
        """The StepResult ``step`` gives for a decode of ``batch`` (those of it still in the backend)."""
        return StepResult(outputs=self.backend.decode_again(batch), busy_s=busy_s, decode_tokens=n, bytes_hbm=hbm,
                          bytes_host=host)

    def _said_after_step(self, nxt: _Steady | None = None, look: bool = True) -> None:
        """The end of ``_publish`` once a step's outputs are held and its figures counted: the next
        steady step if any (``nxt``: known already; ``look``: else whether to look for one; before
        anything is sent, so that a command it brings clears it), the stream flush and the
        StepStats if due, the next step."""
        if self.steady:
            self._steady = nxt if nxt is not None else self._steady_next() if look else None
        now = self.engine.now
        if self.flush_due is not None and (now >= self.flush_due or not self.held):
            self._flush()
        if now - self._stats_since >= STATS_S:
            self._emit_stats()
        self._work()

    # -- steady steps ------------------------------------------------------------------------
    def _steady_next(self) -> _Steady | None:
        """After publishing a step: the next, if it is a steady one — a decode of every sequence in
        the backend (each past its prefill and its first token, none completing), nothing copied
        (α at its cap) — else None. Read off the backend as the next ``step`` will find it."""
        b = self.backend
        if type(b) is not SimBackend or b.model is None or b._alpha < b._resident_cap():
            return None
        seqs = b.seqs
        if not seqs or len(seqs) > b.max_batch:
            return None
        started, running = self.started, self.queue.running
        left = None
        for sq in seqs.values():
            if sq.prefilled < sq.prompt_tokens or sq.rid not in started or sq.rid not in running:
                return None
            r = sq.req.max_tokens - sq.produced
            if left is None or r < left:
                left = r
        if left < 2:
            return None
        size = b.model.bytes
        hbm = int(b._alpha * size)
        return _Steady(batch=list(seqs.values()), hbm=hbm, host=size - hbm, left=left)

    def _steady_start(self, st: _Steady, uses_link: bool) -> None:
        """``_work``'s step when it is a steady one: what ``SimBackend.step`` computes for it (the
        duration at the link share just set, the bytes on the link), then as ``_work`` goes on."""
        b = self.backend
        p = b.p
        st.busy_s = busy = _roofline(st.hbm, st.host, b.model.parameters, len(st.batch), p.flops, p.hbm_bps,
                                     b.link_share_bps, 0.0, p.copy_share) * p.time_scale
        b.copied_bytes = 0.0
        link = self.link
        if uses_link:
            link.users += 1
        link.bytes += st.host + b.copied_bytes
        st.link = uses_link
        if not uses_link and self.runs:
            k, t = self._run_length(busy, st.left)  # the step in which the first completes: the left-th
            if k > 1:
                self._steady = None  # the run's end decides the next
                self._run = _Run(start=self.engine.now, step_s=busy, steps=k, first=None, batch=st.batch,
                                 n=len(st.batch), hbm=st.hbm, last=st.left)
                self._schedule_run_end(t)
                return
        self._ahead = st
        self.engine.at(self.engine.now + busy, self._steady_end)

    def _steady_cut(self) -> None:
        """A command arrived: the step after this one is computed by ``step``; a steady step in
        flight becomes the StepResult ``step`` would have given at its start (the backend is as then)."""
        st, self._steady = self._steady, None
        if self._ahead is st:
            st.res = self._result(st.batch, st.busy_s, len(st.batch), st.hbm, st.host)

    def _steady_end(self) -> None:
        """A steady step ended: ``_publish`` of its outputs (each sequence's next token, held for
        the stream; none is a first token or a completion), written out for that case."""
        st, self._ahead = self._ahead, None
        if st.res is not None:  # a command made it a StepResult
            self._publish(st.res, st.link)
            return
        if st.link:
            self.link.users -= 1
        now, held = self.engine.now, self.held
        vocab = self.backend.model.vocab_size
        for s in st.batch:  # SimBackend._decode and _publish's held tokens, inlined
            idx = s.produced
            z = (s.seed + (idx + 1) * _GOLDEN) & _MASK
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
            tok = (z ^ (z >> 31)) % vocab
            s.produced = idx + 1
            h = held.get(s.rid)
            if h is None:
                held[s.rid] = [idx, [tok], [f" t{tok}"]]
                if self.flush_due is None:
                    self.flush_due = now + STREAM_S
            else:
                h[1].append(tok)
                h[2].append(f" t{tok}")
        s = self._stats  # StepResult.accumulate of the step (no prefill, no KV)
        s.busy_s += st.busy_s
        s.decode_tokens += len(st.batch)
        s.bytes_hbm += st.hbm
        s.bytes_host += st.host
        self._stats_steps += 1
        st.left -= 1  # the same batch again, one token further (nothing came to change it)
        self._said_after_step(st if st.left >= 2 else None, False)
