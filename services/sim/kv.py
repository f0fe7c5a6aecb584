"""The simulator's KV model: a slice's two KV tiers, the engine's own block scheduling, and the
rotation policy the real executor runs (services/executor/rotation.py ``decide``, the same function),
over the sim backend's roofline.

Capacity. The device pool is the slice's HBM less the weights the plan lets be resident
(α cap × the model's bytes; the controller keeps weights within ``weight_share`` of HBM), in blocks
of ``block_tokens`` tokens; a block of a model holds K and V of every layer:
``block_tokens × layers × 2 × (hidden × kv_dim_share) × dtype bytes``. The host pool is
``host_bytes`` per slice (profiles.toml [kv], with sources).

Each step, as the real engine (services/executor/model/engine.py ``_schedule``) with KVRotor before
it (kv_rotor.py): first the policy's decision from the step's inputs (waiting requests — every one
before its first token, with the blocks its next chunk lacks: one part-way through its prompt still
waits, else the policy, seeing nothing wait, would bring back the request it just rotated out for
it, step after step — with their TTFT deadlines, running ones with their next-token deadlines,
rotated ones, and the blocks the running decodes grow by this step); then the batch in arrival order
— a decode needs room for one more token, a prefill chunk room for its tokens (as much of the chunk
as there is room for: taken whole or not at all, an old long prompt short of a few blocks would
preempt its juniors step after step and never start); when blocks run out the youngest requests
holding blocks are preempted (their KV recomputed later) so the oldest progresses; a decode that
still finds no room preempts itself — except that one whose missing blocks are being copied out this
step waits a step for them instead (a rotation that made room is not followed by a recompute). Under
every policy that much is today's engine; ``block`` adds nothing, ``rotate`` and ``recompute`` make
room for an urgent head, a due rotated request or decodes that cannot grow, as ``decide`` says. A request the policy frees for recompute goes behind the
waiting requests (kept in arrival order it would, being older, take the room straight back from the
head it was freed for, step after step).

Copies. Blocks rotated out are freed only after the step that copies them (never reused before
the copy has finished); blocks rotated in join the batch from the next step on. A step's copies
overlap its compute: host → device bytes share the slice's link share with the step's streaming
reads, device → host bytes go the other way (NVLink-C2C and PCIe are full duplex, DuplexKV's
point) at ``d2h_ratio`` of it; the step lasts as long as the longest of its compute, its reads and
its copies. Bytes copied in count on the link (``copied_bytes``).

With no pressure (every request fits, nothing rotated) the batch is the backend's own and the
step is exactly the backend's: a run with the KV model is the run without it, plus KV figures in
StepStats.

SLO. As the real executor (kv_shell.py, kv_rotor.py): a request's targets are the ones its
AssignRequest carries (``slo``, less ``waited_ms`` for its TTFT), and TPOT is judged on the mean —
its k-th token after the first is due at first + k · TPOT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from c2cq.errors import ConfigError
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.schemas.executor import AssignRequest
from c2cq.services.executor.backend import Output, StepResult
from c2cq.services.executor.rotation import (
    FreeBlocks,
    KVPolicy,
    Rotated,
    RotationConfig,
    Running,
    Waiting,
    decide,
    targets,
)
from c2cq.services.executor.sim import SimBackend, SliceProfile
from c2cq.services.sim.errors import SimError

KV_POLICIES = tuple(p.value for p in KVPolicy)


@dataclass(frozen=True, slots=True)
class KVSetup:
    """One run's KV model (profiles.toml [kv]) and policy."""

    policy: KVPolicy
    block_tokens: int = 16
    kv_dim_share: float = 0.25
    host_bytes: float = 32e9
    d2h_ratio: float = 0.79
    max_blocks_per_step: int = 4096

    def __post_init__(self) -> None:
        if self.block_tokens < 1 or not 0.0 < self.kv_dim_share <= 1.0 or self.host_bytes < 0:
            raise ConfigError("kv: block_tokens >= 1, kv_dim_share in (0, 1], host_bytes >= 0")


def block_bytes(info: ModelInfo, kv: KVSetup) -> int:
    dtype = info.bytes / info.parameters if info.parameters else 2.0
    return max(1, int(kv.block_tokens * info.num_layers * 2 * info.hidden_size * kv.kv_dim_share * dtype))


@dataclass(slots=True)
class _Blocks:
    ttft_deadline: float
    tpot_s: float
    resumed: int = 0  # tokens delivered before it came here (a migration)
    device: int = 0
    host: int = 0
    rotated: bool = False
    joins: bool = False  # rotated back in this step: runs from the next step on
    first_token: float | None = None  # when its first token here was seen (the start of the step after it)

    def token_deadline(self, produced: int, now: float) -> float:
        """When its next token is due, TPOT judged on the mean as KVRotor does: the k-th token after
        the first at first + k · TPOT (before its first token: a TPOT from now)."""
        if self.first_token is None:
            return now + self.tpot_s
        return self.first_token + (produced - self.resumed) * self.tpot_s


class KVBackend(SimBackend):
    """The sim backend with a bounded, two-tier KV cache and a rotation policy."""

    def __init__(self, profile: SliceProfile, kv: KVSetup, clock: Callable[[], float], device: str = "sim:0") -> None:
        super().__init__(profile, device=device)
        self.kv, self.clock = kv, clock
        self.blocks: dict[str, _Blocks] = {}
        self.releasing = 0  # device blocks whose copy out runs in the current step
        self.rotations = self.bytes_rotated = 0  # since the last report
        self.total_rotations = self.total_recomputes = self.total_preemptions = self.total_bytes = 0
        self.cfg = RotationConfig(policy=kv.policy, max_blocks_per_step=kv.max_blocks_per_step)

    # -- sizes ------------------------------------------------------------------------------------
    def block_bytes(self) -> int:
        return block_bytes(self.model, self.kv)

    def device_blocks(self) -> int:
        m = self.model
        resident = min(self._alpha_cap, self.p.hbm_bytes / m.bytes if m.bytes else 1.0) * m.bytes
        return max(0, int((self.p.hbm_bytes - resident) // self.block_bytes()))

    def host_blocks(self) -> int:
        return int(self.kv.host_bytes // self.block_bytes()) if self.model is not None else 0

    def _used(self) -> tuple[int, int]:
        return (sum(b.device for b in self.blocks.values()) + self.releasing,
                sum(b.host for b in self.blocks.values()))

    @staticmethod
    def _kv_tokens(s) -> int:
        """Tokens of ``s`` with KV (its prefilled prompt and the output after it; a recompute
        preemption sets ``prefilled`` to minus the output, so this is 0 and the re-prefill covers both)."""
        return s.prefilled + s.produced - len(s.req.resume_token_ids)

    def _need(self, tokens: int) -> int:
        return -(-tokens // self.kv.block_tokens)

    # -- requests ---------------------------------------------------------------------------------
    def add(self, req: AssignRequest) -> None:
        super().add(req)
        ttft, tpot = targets(req)
        self.blocks[req.request_id] = _Blocks(self.clock() + ttft, tpot, resumed=len(req.resume_token_ids))

    def abort(self, request_id: str) -> None:
        super().abort(request_id)
        self.blocks.pop(request_id, None)

    def _decode(self, decoding: list, outputs: list[Output]) -> None:
        super()._decode(decoding, outputs)  # also the path of a run's steps (decode_again): the finished go
        for o in outputs:
            if o.finish is not None:
                self.blocks.pop(o.request_id, None)

    def _preempt(self, s) -> None:
        """Free ``s``'s device blocks; its KV (prompt and output so far) is recomputed later."""
        self.blocks[s.rid].device = 0
        s.prefilled = -(s.produced - len(s.req.resume_token_ids))

    # -- the policy -------------------------------------------------------------------------------
    def _decide(self, now: float, chunk: int, cap: int, host_cap: int) -> tuple[int, int]:
        """The rotation decision, applied; the bytes it copies (in, out)."""
        waiting, running, rotated = [], [], []
        per_token = 2.0 * self.model.parameters / self.p.flops
        growth = 0
        for s in self.seqs.values():
            b = self.blocks[s.rid]
            deadline = b.token_deadline(s.produced, now)
            if b.rotated:
                rotated.append(Rotated(s.rid, b.host, deadline))
            elif s.produced == 0:  # before its first token, whatever of its prompt it holds
                pending = s.prompt_tokens - s.prefilled
                need = max(0, self._need(self._kv_tokens(s) + min(pending, chunk)) - b.device)
                waiting.append(Waiting(s.rid, need, b.ttft_deadline, pending * per_token))
            elif b.device:
                # as KVRotor: a decode crossing into a new block grows the running set; only a decoding
                # request makes room (one re-prefilling after a recompute would lose that work too)
                decoding = s.prefilled >= s.prompt_tokens
                growth += max(0, self._need(self._kv_tokens(s) + 1) - b.device) if decoding else 0
                running.append(Running(s.rid, b.device, decoding, deadline))
        used, host_used = self._used()
        free = max(0, cap - used)
        if not waiting and not rotated and growth <= free:
            return 0, 0  # decide's "no pressure", without building it
        d = decide(now, waiting, running, rotated, FreeBlocks(free, max(0, host_cap - host_used)), self.cfg,
                   growth)
        bb, moved_in, moved_out = self.block_bytes(), 0, 0
        for mv in d.rotate_out:
            b = self.blocks[mv.request_id]
            b.host, b.rotated, self.releasing = b.device, True, self.releasing + b.device
            moved_out += b.device
            b.device = 0
        for mv in d.rotate_in:
            b = self.blocks[mv.request_id]
            b.device, b.host, b.rotated, b.joins = b.host, 0, False, True
            moved_in += b.device
        for mv in d.recompute:  # behind the head it made room for (else, older, it would take the room back)
            self._preempt(self.seqs[mv.request_id])
            self.seqs[mv.request_id] = self.seqs.pop(mv.request_id)
            self.total_recomputes += 1
        n = len(d.rotate_out) + len(d.rotate_in)
        self.rotations += n
        self.total_rotations += n
        self.bytes_rotated += (moved_in + moved_out) * bb
        self.total_bytes += (moved_in + moved_out) * bb
        return moved_in * bb, moved_out * bb

    # -- the batch --------------------------------------------------------------------------------
    def _plan(self, chunk: int, cap: int) -> tuple[list, int]:
        """The step's sequences in arrival order (engine._schedule) and the prefill tokens they take:
        room for each one's tokens, the youngest preempted when blocks run out — unless blocks
        being copied out this step cover what it lacks: then it waits for them (a decode skips the
        step; a prefill takes what room there is), so a rotation that made room is not followed by a
        recompute; a prefill chunk short of room takes what room there is (and is the step's last
        prefill); at most max_batch."""
        order = [s for s in self.seqs.values() if not self.blocks[s.rid].rotated and not self.blocks[s.rid].joins]
        used, _ = self._used()
        bt = self.kv.block_tokens
        free, budget, taken = cap - used, max(1, chunk), 0
        coming = self.releasing  # blocks this step's copies out free: room from the next step on
        plan, preempted = [], set()
        for i, s in enumerate(order):
            if len(plan) == self.max_batch:
                break
            if s.rid in preempted:
                continue
            b = self.blocks[s.rid]
            decoding = s.prefilled >= s.prompt_tokens
            kv = self._kv_tokens(s)
            take = 1 if decoding else min(budget, s.prompt_tokens - s.prefilled)
            want, partial, waits = self._need(kv + take) - b.device, False, False
            if 0 < want - free <= coming:  # the room it lacks is being copied out: it waits a step, drops nothing
                coming -= want - free
                waits = True
            elif want > free:
                for v in reversed(order[i + 1:]):  # the youngest holders first
                    if want <= free:
                        break
                    vb = self.blocks[v.rid]
                    if vb.device and v.rid not in preempted:
                        free += vb.device
                        self._preempt(v)
                        preempted.add(v.rid)
                        self.total_preemptions += 1
            if want > free:
                room = (b.device + free) * bt - kv  # tokens its blocks and the free ones hold
                if decoding or room < 1:
                    if decoding and b.device and not waits:
                        free += b.device
                        self._preempt(s)
                        self.total_preemptions += 1
                    continue
                take, partial = room, True  # the room is used up: no later prefill gets any
                want = self._need(kv + take) - b.device
            if want > 0:
                b.device += want
                free -= want
            plan.append(s)
            if not decoding:
                taken += take
                budget = 0 if partial else budget - take
        return plan, taken

    def step(self, chunk_tokens: int) -> StepResult:
        now, m = self.clock(), self.model
        self.releasing = 0  # the last step's copies out have finished
        self.copied_bytes = 0.0  # (the backend's step resets it too, but a step may run nothing)
        for s in self.seqs.values():
            b = self.blocks[s.rid]
            b.joins = False
            if b.first_token is None and s.produced > b.resumed:  # its first token came in a step that ended by now
                b.first_token = now
        cap, host_cap = self.device_blocks(), self.host_blocks()
        failed = self._too_big(cap)
        moved_in, moved_out = self._decide(now, chunk_tokens, cap, host_cap)
        plan, taken = self._plan(chunk_tokens, cap)
        everyone = self.seqs
        if not plan and not (failed or moved_in or moved_out) and everyone:
            raise SimError(f"KV model: nothing can run of {len(everyone)} requests ({cap} device blocks)")
        self.seqs = {s.rid: s for s in plan}
        try:
            # the backend hands out prefill in the plan's order: a budget of the tokens planned gives
            # each prefill its planned take (the partial one, last, what is left)
            res = super().step(max(1, taken)) if plan else StepResult()
            res.outputs.extend(failed)
        finally:
            done = [s.rid for s in plan if s.rid not in self.seqs]
            self.seqs = everyone
        for rid in done:
            del everyone[rid]
            self.blocks.pop(rid, None)
        link = max(self.link_share_bps, 1.0)
        t_copy = max((res.bytes_host + moved_in) / link, moved_out / (link * self.kv.d2h_ratio))
        res.busy_s = max(res.busy_s, t_copy * self.p.time_scale)
        self.copied_bytes += moved_in
        return res

    def _too_big(self, cap: int) -> list[Output]:
        """Requests whose prompt and output so far (plus the next token) need more blocks than the
        whole device pool holds fail at once, as a prompt too long for the slice (vLLM refuses a
        prompt past its KV capacity likewise): kept, the oldest of them would preempt every younger
        request for its next chunk, step after step, and never finish."""
        out = []
        for s in list(self.seqs.values()):
            if self._need(s.prompt_tokens + s.produced - len(s.req.resume_token_ids) + 1) > cap:
                out.append(Output(s.rid, s.produced, (), "", FinishReason.ERROR, prompt_tokens=s.prompt_tokens,
                                  error=f"needs more KV blocks than the slice's device pool ({cap})",
                                  code=ErrorCode.PROMPT_TOO_LONG))
                del self.seqs[s.rid]
                self.blocks.pop(s.rid, None)
        return out

    def remaining(self) -> int:
        """As the backend's, but never past the steps the free blocks hold for the whole batch
        (a run of alike decode steps must not outgrow the pool: the simulator's run shortcut)."""
        left = super().remaining()
        if self.model is None or not self.seqs:
            return left
        used, _ = self._used()
        free = self.device_blocks() - used
        bt = self.kv.block_tokens
        slack = min(self.blocks[s.rid].device * bt - self._kv_tokens(s) for s in self.seqs.values())
        return max(0, min(left, slack + bt * (max(0, free) // len(self.seqs))))

    # -- reports ----------------------------------------------------------------------------------
    def report(self) -> dict:
        """StepStats' KV fields for the window since the last report."""
        if self.model is None:
            return {}
        used, host_used = self._used()
        out = dict(kv_device_used=used, kv_device_free=max(0, self.device_blocks() - used), kv_host_used=host_used,
                   kv_host_free=max(0, self.host_blocks() - host_used), kv_rotations=self.rotations,
                   kv_bytes_rotated=self.bytes_rotated)
        self.rotations = self.bytes_rotated = 0
        return out

    def totals(self) -> dict:
        return {"rotations": self.total_rotations, "recomputes": self.total_recomputes,
                "preemptions": self.total_preemptions, "bytes_rotated": self.total_bytes}
