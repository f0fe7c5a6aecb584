"""The per-step KV rotation policy (SuperInfer's RotaSched, simplified): pure, time passed in.

When the head waiting request cannot get its blocks and its TTFT slack (deadline − now − estimated
prefill) runs low, or the running requests cannot grow by the blocks their next tokens need, decoding
requests that already have their first token make room: under ``rotate`` their KV goes to the host
pool, the ones with the most TPOT slack (next token's deadline − now) first; under ``recompute`` it is
freed and re-prefilled later, the ones with the least to redo first; under ``block`` (today's
behaviour) nothing moves, the head waits and the engine drops its youngest request to grow. Rotated
requests come back when their inter-token deadline nears, the one lagging most first — swapping with
running requests of more slack when there is no room — and sooner when the room they take still
leaves the head what it needs (or nothing waits). At most
``max_blocks_per_step`` blocks change tier per step. With no memory pressure (the head fits, the
running requests can grow, nothing rotated) the decision is empty.
Every decision carries the slack figures that explain it (``log_fields``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from c2cq.errors import ConfigError
from c2cq.schemas.executor import AssignRequest

# what a request that names no target gets (the scheduler sends its defaults; these cover old senders)
DEFAULT_TTFT_S = 10.0
DEFAULT_TPOT_S = 1.0


def targets(req: AssignRequest) -> tuple[float, float]:
    """(TTFT s from now, TPOT s) of a request an executor takes now: the targets its AssignRequest
    carries (the defaults where it names none) less the time it already waited at the scheduler; a
    migrated request's next token is due a TPOT on. The executor and the simulator both derive them here."""
    slo = req.slo
    tpot = slo.tpot_ms / 1e3 if slo.tpot_ms is not None else DEFAULT_TPOT_S
    if req.resume_token_ids:
        return tpot, tpot
    return (slo.ttft_ms / 1e3 if slo.ttft_ms is not None else DEFAULT_TTFT_S) - req.waited_ms / 1e3, tpot


class KVPolicy(enum.StrEnum):
    ROTATE = "rotate"
    RECOMPUTE = "recompute"
    BLOCK = "block"


@dataclass(frozen=True, slots=True)
class RotationConfig:
    policy: KVPolicy = KVPolicy.ROTATE
    max_blocks_per_step: int = 64  # blocks moved (or freed, under recompute) per step, at most
    ttft_slack_s: float = 0.5  # the head waiting request gets room once its TTFT slack is below this
    victim_min_slack_s: float = 0.2  # a running request makes room only with more TPOT slack than this
    return_slack_s: float = 0.05  # a rotated request comes back once its TPOT slack is below this
    copy_s_per_block: float = 0.0  # estimated time to copy one block in (taken off a rotated request's slack)
    ahead_blocks_per_step: int = 8  # full blocks of likely victims copied to host ahead per step (0: none)

    def __post_init__(self) -> None:
        if self.max_blocks_per_step < 1:
            raise ConfigError(f"max_blocks_per_step must be >= 1, got {self.max_blocks_per_step}")
        if self.ahead_blocks_per_step < 0:
            raise ConfigError(f"ahead_blocks_per_step must be >= 0, got {self.ahead_blocks_per_step}")
        if self.copy_s_per_block < 0:
            raise ConfigError(f"copy_s_per_block must be >= 0, got {self.copy_s_per_block}")
        if self.return_slack_s >= self.victim_min_slack_s:  # else a request could go out and back every step
            raise ConfigError(f"return_slack_s ({self.return_slack_s}) must be below victim_min_slack_s "
                              f"({self.victim_min_slack_s})")


@dataclass(frozen=True, slots=True)
class Waiting:
    request_id: str
    blocks_needed: int  # device blocks it needs to start (its next prefill chunk)
    ttft_deadline: float  # when its first token is due
    est_prefill_s: float  # estimated time to its first token once it runs


@dataclass(frozen=True, slots=True)
class Running:
    request_id: str
    blocks: int  # device blocks it holds
    first_token: bool  # it has emitted its first token (only those make room)
    token_deadline: float  # when its next token is due (last token + TPOT target)


@dataclass(frozen=True, slots=True)
class Rotated:
    request_id: str
    blocks: int  # host blocks it holds (what it needs on device to come back)
    token_deadline: float


@dataclass(frozen=True, slots=True)
class FreeBlocks:
    device: int
    host: int


@dataclass(frozen=True, slots=True)
class Move:
    request_id: str
    blocks: int
    slack_s: float  # the slack that chose it: TPOT slack of a victim, lag-adjusted slack of a return


@dataclass(frozen=True, slots=True)
class Decision:
    policy: KVPolicy
    reason: str
    rotate_out: tuple[Move, ...] = ()  # copy to the host pool (rotate)
    recompute: tuple[Move, ...] = ()  # free; re-prefill later (recompute)
    rotate_in: tuple[Move, ...] = ()  # copy back from the host pool (rotate)
    head: str | None = None
    head_ttft_slack_s: float | None = None
    head_short: int = 0  # device blocks the head waiting request lacked
    free: FreeBlocks = field(default_factory=lambda: FreeBlocks(0, 0))

    @property
    def empty(self) -> bool:
        return not (self.rotate_out or self.recompute or self.rotate_in)

    @property
    def blocks_moved(self) -> int:
        return sum(m.blocks for m in (*self.rotate_out, *self.recompute, *self.rotate_in))

    def log_fields(self) -> dict[str, Any]:
        moves = lambda ms: [(m.request_id, m.blocks, round(m.slack_s, 4)) for m in ms]  # noqa: E731
        return {"kv_policy": str(self.policy), "reason": self.reason, "head": self.head,
                "head_ttft_slack_s": None if self.head_ttft_slack_s is None else round(self.head_ttft_slack_s, 4),
                "head_short": self.head_short, "free_device": self.free.device, "free_host": self.free.host,
                "rotate_out": moves(self.rotate_out), "recompute": moves(self.recompute),
                "rotate_in": moves(self.rotate_in)}


def decide(now: float, waiting: Sequence[Waiting], running: Sequence[Running], rotated: Sequence[Rotated],
           free_blocks: FreeBlocks, cfg: RotationConfig, growth: int = 0) -> Decision:
    """What moves between the tiers this step; ``waiting`` in queue order, head first. ``growth``: device
    blocks the running requests take this step to go on (a decode crossing into a new block): what is
    free beyond it is the room; a deficit (``growth`` > free) makes room at once, by slack, rather than
    leaving the engine to drop its youngest request for recompute."""
    head = waiting[0] if waiting else None
    room = free_blocks.device - growth
    deficit = max(0, -room)
    room = max(0, room)
    short = max(0, head.blocks_needed - room) if head is not None else 0
    head_slack = None if head is None else head.ttft_deadline - now - head.est_prefill_s
    base = dict(policy=cfg.policy, head=None if head is None else head.request_id, head_ttft_slack_s=head_slack,
                head_short=short, free=free_blocks)
    if short == 0 and deficit == 0 and not rotated:
        return Decision(reason="no pressure", **base)
    if cfg.policy is KVPolicy.BLOCK:
        return Decision(reason="block: the head waits", **base)
    head_urgent = short > 0 and head_slack is not None and head_slack <= cfg.ttft_slack_s

    # returns: most lag first (lowest slack), strictly in that order so a big lagging one is not starved;
    # one not yet due comes back too when it leaves the head the room it needs (or nothing waits)
    lag_order = sorted(((r.token_deadline - now - r.blocks * cfg.copy_s_per_block, r) for r in rotated),
                       key=lambda sr: (sr[0], sr[1].request_id))
    if not deficit and not (head_urgent and lag_order and head_slack < lag_order[0][0]):
        back, budget = [], cfg.max_blocks_per_step
        need = head.blocks_needed if head is not None else 0
        for s, r in lag_order:
            due = s <= cfg.return_slack_s
            if r.blocks > budget or r.blocks > room or not (due or r.blocks + need <= room):
                break
            back.append(Move(r.request_id, r.blocks, s))
            room -= r.blocks
            budget -= r.blocks
        if back:
            reason = ("return: nothing waits" if head is None else
                      "return: inter-token deadline near" if back[0].slack_s <= cfg.return_slack_s else
                      "return: room left for the head")
            return Decision(reason=reason, rotate_in=tuple(back), **base)

    # the most lagging rotated request, due and without room, swaps with running requests of more slack
    # (unless the head is the more urgent): rotated requests keep their pace rather than wait for an end
    first_due = lag_order[0] if lag_order and lag_order[0][0] <= cfg.return_slack_s else None
    head_first = head_urgent and (first_due is None or head_slack < first_due[0])
    swap = first_due[1].blocks - room if first_due is not None and not head_first and first_due[1].blocks > room else 0
    want = deficit + (short if head_urgent else 0) + swap
    if not want:
        if short:
            return Decision(reason="head has TTFT slack", **base)
        return Decision(reason="no room to return" if first_due else "rotated requests not due", **base)
    rotate = cfg.policy is KVPolicy.ROTATE
    # rotate: the most TPOT slack first (a copy out and back costs little); recompute: the least work to
    # redo first (fewest blocks), then the most slack
    victims = sorted(((r.token_deadline - now, r) for r in running
                      if r.first_token and r.blocks > 0 and r.token_deadline - now > cfg.victim_min_slack_s),
                     key=lambda sr: (-sr[0], sr[1].request_id) if rotate else (sr[1].blocks, -sr[0], sr[1].request_id))
    moves, freed, budget, host_room = [], 0, cfg.max_blocks_per_step, free_blocks.host
    for s, r in victims:
        if freed >= want:
            break
        if r.blocks > budget or (rotate and r.blocks > host_room):
            continue
        moves.append(Move(r.request_id, r.blocks, s))
        freed += r.blocks
        budget -= r.blocks
        host_room -= r.blocks if rotate else 0
    what = " and ".join(w for w, n in (("running requests to grow", deficit), ("the head", short if head_urgent else 0),
                                       ("a lagging rotated request", swap)) if n)
    if not moves:
        return Decision(reason=f"{what} short of blocks, no request can make room", **base)
    if rotate:
        return Decision(reason=f"make room for {what}: rotate out", rotate_out=tuple(moves), **base)
    return Decision(reason=f"make room for {what}: recompute", recompute=tuple(moves), **base)
