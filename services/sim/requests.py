"""Planned requests as the scheduler receives them (shared by every policy; pure)."""

from __future__ import annotations

from functools import lru_cache

from c2cq.loadgen.workload import PlannedRequest
from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.client import SLO, RequestRejected, SubmitRequest
from c2cq.services.scheduler.validate import Limits, check_submit


@lru_cache(maxsize=4096)
def prompt_ids(n: int) -> tuple[int, ...]:
    """A prompt of ``n`` tokens (one shared tuple per length: the simulator only counts them)."""
    return (1,) * max(1, n)


def request_id(index: int) -> str:
    return f"r{index}"


def index_of(request_id: str) -> int:
    """The planned index behind a request id or an attempt id (``r12~1``)."""
    return int(request_id[1:].split("~", 1)[0])


def submit_of(req: PlannedRequest) -> SubmitRequest:
    return SubmitRequest(request_id=request_id(req.index), model=req.model,
                         prompt_token_ids=prompt_ids(req.prompt_tokens or 1), max_tokens=req.max_tokens,
                         slo=SLO(ttft_ms=req.ttft_ms, tpot_ms=req.tpot_ms))


def refusal(req: PlannedRequest, info: ModelInfo | None, limits: Limits = Limits()) -> RequestRejected | None:
    """The scheduler's input checks, applied alike to every policy (unknown model, too long, ...)."""
    return check_submit(submit_of(req), info, limits)
