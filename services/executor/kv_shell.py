"""The KV rotor in a backend's step loop, on the real clock.

``KVShell`` binds a ``KVRotor`` to whatever engine the backend serves with now (a switch or a failed
forward makes a new one), tracks each assigned request's SLO (the targets the scheduler sent, less the time it already
waited there), runs the policy before every engine step and feeds it the tokens the step made. The
prefill time it estimates for a waiting request comes from the engine's measured steps: a running
average of seconds per token over the steps that ran prefill. Under ``block`` (the default) there is
no rotor at all: the schedule is exactly the engine's own.
"""

from __future__ import annotations

from c2cq.schemas.executor import AssignRequest
from c2cq.services.executor.model.engine import Engine, StepOutput
from c2cq.services.executor.model.kv_rotor import KVRotor
from c2cq.services.executor.kv_flags import KVOptions
from c2cq.services.executor.rotation import KVPolicy, targets

PREFILL_S_PER_TOKEN = 1e-3  # the estimate before any prefill step was measured
EWMA = 0.2  # weight of the newest step in the running average


class KVShell:
    def __init__(self, opts: KVOptions) -> None:
        self.opts = opts
        self.rotor: KVRotor | None = None
        self.prefill_s_per_token = PREFILL_S_PER_TOKEN
        self._measured = False

    def bind(self, engine: Engine | None) -> KVRotor | None:
        """The rotor of this engine (a new one when the engine changed); None under ``block``."""
        if engine is None or self.opts.policy is KVPolicy.BLOCK:
            self.rotor = None
        elif self.rotor is None or self.rotor.engine is not engine:
            self.rotor = KVRotor(engine, self.opts.config, prefill_s_per_token=self.prefill_s_per_token)
        return self.rotor

    def added(self, req: AssignRequest, now: float) -> None:
        if self.rotor is None:
            return
        ttft, tpot = targets(req)
        self.rotor.track(req.request_id, now, ttft_s=ttft, tpot_s=tpot)

    def before_step(self, engine: Engine, now: float, chunk_tokens: int) -> None:
        rotor = self.bind(engine)
        if rotor is None:
            return
        rotor.prefill_s_per_token = self.prefill_s_per_token
        rotor.prune(engine.request_ids)
        rotor.before_step(now, chunk_tokens)

    def after_step(self, outs: list[StepOutput], now: float, busy_s: float, prefill_tokens: int,
                   decode_tokens: int) -> None:
        if prefill_tokens:
            per_token = busy_s / (prefill_tokens + decode_tokens)
            self.prefill_s_per_token = (per_token if not self._measured
                                        else (1 - EWMA) * self.prefill_s_per_token + EWMA * per_token)
            self._measured = True
        rotor = self.rotor
        if rotor is None:
            return
        for o in outs:
            if o.finished:
                rotor.forget(o.request_id)
            else:
                rotor.token(o.request_id, now)
