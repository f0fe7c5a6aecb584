"""The rotation policy over an Engine: before each step, ``decide`` is fed from the engine's requests
and their SLO targets (clock passed in), and its decision applied — rotate out/in through the host
pool, or preempt for recompute. Counts what moved and logs every non-empty decision with its slack
figures. Off the engine's path unless a backend calls ``before_step``.

A request's TPOT target is judged on its mean (as c2cq's metrics and the loadgen judge it): its k-th
token after the first is due at first token + k · TPOT, so a request that ran ahead of its pace has
banked slack (it makes a cheap victim) and one rotated out falls due as that bank runs out."""

from __future__ import annotations

from dataclasses import dataclass

from c2cq import log
from c2cq.errors import ConfigError
from c2cq.services.executor.model.engine import Engine
from c2cq.services.executor.model.kv_host import Tier
from c2cq.services.executor.rotation import (
    Decision, FreeBlocks, KVPolicy, Rotated, RotationConfig, Running, Waiting, decide,
)


@dataclass(slots=True)
class _Clock:
    ttft_deadline: float
    tpot_s: float
    first_token: float | None = None
    since_first: int = 0  # tokens after the first


class KVRotor:
    def __init__(self, engine: Engine, cfg: RotationConfig, *, prefill_s_per_token: float) -> None:
        if cfg.policy is KVPolicy.ROTATE and engine.host is None:
            raise ConfigError("kv policy 'rotate' needs a host KV pool (the engine has none)")
        self.engine, self.cfg = engine, cfg
        self.prefill_s_per_token = prefill_s_per_token
        self._clocks: dict[str, _Clock] = {}
        self.rotations = 0  # requests moved out or in, since start
        self.recomputes = 0
        self.last: Decision | None = None
        self.log = log.get()

    def track(self, request_id: str, now: float, *, ttft_s: float, tpot_s: float) -> None:
        """A request was added at ``now`` with these targets."""
        self._clocks[request_id] = _Clock(now + ttft_s, tpot_s)

    def token(self, request_id: str, now: float) -> None:
        clock = self._clocks.get(request_id)
        if clock is None:
            return
        if clock.first_token is None:
            clock.first_token = now
        else:
            clock.since_first += 1

    def forget(self, request_id: str) -> None:
        self._clocks.pop(request_id, None)

    def prune(self, live: frozenset[str]) -> None:
        """Forget the requests that are no longer here (aborted, or ended by a failed forward)."""
        if len(self._clocks) > len(live):
            for rid in [r for r in self._clocks if r not in live]:
                del self._clocks[rid]

    def _deadline(self, rid: str, now: float) -> float:
        clock = self._clocks.get(rid)
        if clock is None:  # not tracked: never urgent, never a victim worth its copy
            return now
        if clock.first_token is None:
            return now + clock.tpot_s
        return clock.first_token + (clock.since_first + 1) * clock.tpot_s

    def _copy_ahead(self, now: float, d: Decision, running: list[Running]) -> None:
        """Under pressure (a decision that was not "no pressure", or a quarter of the device pool or less
        free) and with host room to spare (over half the pool free), copy the full blocks of the
        likely victims ahead — the decoding requests of most TPOT slack first, as ``decide`` picks them —
        so that rotating one out later moves only its last block."""
        eng = self.engine
        if d.reason == "no pressure" and eng.free_blocks > eng.cache.allocator.num_blocks // 4:
            return
        spare = min(self.cfg.ahead_blocks_per_step, eng.host.num_free - eng.host.num_blocks // 2)
        if spare <= 0:
            return
        out = {m.request_id for m in d.rotate_out} | {m.request_id for m in d.recompute}
        likely = sorted((r for r in running if r.first_token and r.request_id not in out),
                        key=lambda r: (-(r.token_deadline - now), r.request_id))
        eng.copy_ahead([r.request_id for r in likely], spare)

    def before_step(self, now: float, chunk_tokens: int) -> Decision:
        eng = self.engine
        bs = eng.cache.block_size
        waiting, running, rotated = [], [], []
        growth = 0
        for st in eng.kv_states():
            clock = self._clocks.get(st.request_id)
            if st.rotated:
                if eng.host is not None and eng.host.tier(st.request_id) is Tier.HOST:
                    rotated.append(Rotated(st.request_id, st.host_blocks, self._deadline(st.request_id, now)))
            elif not st.has_output:
                # before its first token it waits, whatever of its prompt it holds (a part-prefilled head
                # counted as running would drop out of the waiting list, and the policy, seeing nothing
                # wait, would bring back the request it had just rotated out for it): with the blocks its
                # next chunk still lacks
                need = max(0, -(-(st.cached + min(st.pending, chunk_tokens)) // bs) - st.device_blocks)
                deadline = clock.ttft_deadline if clock is not None else float("inf")
                waiting.append(Waiting(st.request_id, need, deadline, st.pending * self.prefill_s_per_token))
            elif st.device_blocks:
                growth += st.grow
                # only a decoding request makes room: one still (re-)prefilling would lose that work too
                running.append(Running(st.request_id, st.device_blocks, st.has_output and st.pending == 1,
                                       self._deadline(st.request_id, now)))
        host_free = eng.host.room if eng.host is not None else 0  # copies ahead are taken back as needed
        d = decide(now, waiting, running, rotated, FreeBlocks(eng.free_blocks, host_free), self.cfg,
                   growth)
        if d.rotate_out:
            eng.rotate_out([m.request_id for m in d.rotate_out])
        if d.rotate_in:
            eng.rotate_in([m.request_id for m in d.rotate_in])
        for m in d.recompute:
            eng.preempt(m.request_id, behind=d.head)
        self.rotations += len(d.rotate_out) + len(d.rotate_in)
        if self.cfg.policy is KVPolicy.ROTATE and self.cfg.ahead_blocks_per_step:
            self._copy_ahead(now, d, running)
        self.recomputes += len(d.recompute)
        self.last = d
        if not d.empty:
            self.log.info("kv rotation", **d.log_fields(), engine_preemptions=eng.preemptions)
        return d
