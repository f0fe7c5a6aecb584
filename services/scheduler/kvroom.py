"""KV capacity in placement (pure): what a slice's StepStats say of its KV pools, whether a request
has room to start there, and how long it would wait for room if not.

A slice reports its device and host KV blocks (used, free) at the end of each StepStats window; a
slice that reports nothing (``kv_device_free`` None: older executors, the recorded replay) is never
judged by KV, so placement there is exactly what it was. Between reports the scheduler keeps its
own account: a request placed there takes its estimated blocks from the reported free count, a
request that completed there gives its blocks back; the next report replaces the account.

Blocks per request are not on the wire (the block size and a token's KV bytes are the executor's
business): the report says how many blocks the slice's requests hold, the scheduler knows how many
tokens they hold (prompt + output so far), so blocks per token is the ratio of the two (kept from
the last report that had both). A request needs its prompt's blocks to start (what the executor's
own admission asks for); an idle slice always has room (both pools return to full when idle).

A slice without room for a request is not priced as if it were free: its TTFT estimate gains the
time until room appears — its soonest-ending request's remaining decode at its measured step time
— so a slice with room wins unless that wait is short; a slice whose whole pool cannot hold the
prompt is not a candidate at all; and a running batch's free slots stop taking waiting requests of
its model until room is reported (``dispatch.fill``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import msgspec

from c2cq.schemas.executor import StepStats
from c2cq.services.scheduler import costmodel

if TYPE_CHECKING:
    from c2cq.services.scheduler.state import ExecutorView, RequestView, State


class KVView(msgspec.Struct, kw_only=True):
    device_used: int = 0
    device_free: int = 0
    host_used: int = 0
    host_free: int = 0
    blocks_per_token: float = 0.0  # 0: not known yet (the slice's requests held nothing at every report)
    pending: float = 0.0  # blocks taken by placements since the report, less those completions gave back
    rotations: int = 0  # requests rotated out or in, summed over the reports
    bytes_rotated: int = 0


def tokens_held(st: "State", req: "RequestView") -> int:
    s = req.submit
    return costmodel.prompt_tokens(s.prompt, s.prompt_token_ids, req.emitted)


def observe(st: "State", x: "ExecutorView", m: StepStats) -> bool:
    """Fold a report into x's KV view; True when it carried KV figures."""
    if m.kv_device_free is None or m.kv_device_used is None:
        return False
    kv = x.kv if x.kv is not None else KVView()
    kv.device_used, kv.device_free = max(0, m.kv_device_used), max(0, m.kv_device_free)
    kv.host_used, kv.host_free = max(0, m.kv_host_used or 0), max(0, m.kv_host_free or 0)
    held = sum(tokens_held(st, r) for r in (st.requests.get(a) for a in x.active) if r is not None)
    used = kv.device_used + kv.host_used
    if held > 0 and used > 0:
        kv.blocks_per_token = used / held
    kv.pending = 0.0
    kv.rotations += max(0, m.kv_rotations)
    kv.bytes_rotated += max(0, m.kv_bytes_rotated)
    x.kv = kv
    return True


def need(x: "ExecutorView", req: "RequestView") -> float:
    """Device blocks ``req`` needs to start on x (0 while x's blocks per token is unknown)."""
    kv = x.kv
    if kv is None or kv.blocks_per_token <= 0.0:
        return 0.0
    s = req.submit
    return math.ceil(costmodel.prompt_tokens(s.prompt, s.prompt_token_ids, req.emitted) * kv.blocks_per_token)


def has_room(x: "ExecutorView", req: "RequestView") -> bool:
    kv = x.kv
    if kv is None or not x.active:
        return True
    return need(x, req) <= kv.device_free - kv.pending


def placed(x: "ExecutorView", req: "RequestView") -> None:
    if x.kv is not None:
        x.kv.pending += need(x, req)


def completed(st: "State", x: "ExecutorView", req: "RequestView") -> None:
    """``req`` ended on x: the blocks it held (its tokens at blocks per token) are free again."""
    kv = x.kv
    if kv is not None and kv.blocks_per_token > 0.0:
        kv.pending -= math.ceil(tokens_held(st, req) * kv.blocks_per_token)


def wait_s(st: "State", x: "ExecutorView", req: "RequestView") -> float:
    """How long ``req`` would wait on x for KV room: 0 if it has room, for ever if it needs more than
    x's whole device pool, else until x's soonest-ending request finishes (its remaining tokens at
    x's step time; the default TPOT before a sample)."""
    if has_room(x, req):
        return 0.0
    if need(x, req) > x.kv.device_used + x.kv.device_free:
        return math.inf  # more than its whole pool holds: it would never start there
    left = min((r.submit.max_tokens - r.emitted for r in (st.requests.get(a) for a in x.active) if r is not None),
               default=0)
    step = x.est.step_s if x.est.step_s > 0 else st.cfg.default_tpot_ms / 1e3
    return max(0, left) * step
