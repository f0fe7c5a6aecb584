"""The open-loop runner: send each planned request at its offset, whatever the server does.

The schedule (absolute offsets from the start, computed before the run by workload.py) is
kept whatever the latency: a dispatcher sleeps until each offset and starts the request as its
own task, with no cap on how many are in flight. Each request records when it was meant to go
and when it went (send lag), and ends as exactly one of finished, rejected (by code) or error
(by code or exception type), so the counts add up to the number sent.

Pure pieces: :func:`to_record` (an observation → a report record), :func:`error_outcome`
(an exception → status and code) and :func:`run_open_loop` (the dispatcher, with the clock
and the target passed in). The I/O shell is :class:`ClientTarget` (c2cq.AsyncClient).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from c2cq.errors import C2CQError, RequestError
from c2cq.loadgen.report import RequestRecord, Status
from c2cq.loadgen.workload import PlannedRequest

INTERRUPTED = "interrupted"  # error code of a request still in flight when the run was stopped


class Clock(Protocol):
    """Monotonic seconds, and a way to wait for a given reading."""

    def now(self) -> float: ...

    async def sleep_until(self, t: float) -> None: ...


class MonotonicClock:
    """time.monotonic (the clock c2cq.client stamps tokens with); never wakes early."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, t: float) -> None:
        while (left := t - time.monotonic()) > 0:
            await asyncio.sleep(left)


@dataclass(frozen=True, slots=True)
class Observation:
    """What a target saw of one request, in clock seconds (absolute readings)."""

    status: Status
    error_code: str | None = None
    token_times: tuple[float, ...] = ()  # when each output token arrived
    ended_at: float | None = None  # when the request finished (or failed)
    switched: bool | None = None  # the server had to switch a slice to the model for it
    message: str | None = None  # the error's text, kept for the run's error examples


class Target(Protocol):
    """Sends one request and follows it to its end. It may raise: the runner files any
    exception as an error (see :func:`error_outcome`)."""

    async def send(self, req: PlannedRequest, clock: Clock) -> Observation: ...


def error_outcome(exc: BaseException, *, accepted: bool) -> tuple[Status, str]:
    """(status, code) of a request that ended in ``exc``.

    A RequestError before the server accepted the request is a rejection (RequestRejected);
    after it, the request failed (an error Finished, a token gap). Timeouts, a dead scheduler
    and unexpected exceptions are errors, by code where they carry one, else by type name.
    """
    if isinstance(exc, RequestError):
        return (Status.ERROR if accepted else Status.REJECTED), exc.code
    if isinstance(exc, C2CQError):
        return Status.ERROR, exc.code
    return Status.ERROR, type(exc).__name__


def to_record(req: PlannedRequest, t0: float, sent_at: float, obs: Observation) -> RequestRecord:
    """The report record of one request sent at ``sent_at`` of a run started at ``t0``.

    TTFT and token times are measured from the actual send; E2E ends when the request ended.
    The switch latency of a switched request is its TTFT: the time to first token of a request
    that needed a model switch (the cold start a user sees; the server does not report the
    switch itself to clients).
    """
    rel = tuple(max(0.0, t - sent_at) for t in obs.token_times)
    ttft = rel[0] if rel else None
    finished = obs.status == Status.FINISHED
    e2e = None
    if finished:
        end = obs.ended_at if obs.ended_at is not None else (obs.token_times or (sent_at,))[-1]
        e2e = max(end - sent_at, rel[-1] if rel else 0.0)
    return RequestRecord(
        planned_offset_s=req.offset_s,
        sent_offset_s=sent_at - t0,
        model=req.model,
        slo_class=req.slo_class,
        status=obs.status,
        error_code=obs.error_code,
        ttft_s=ttft if finished else None,
        token_times_s=rel if finished else (),
        n_tokens=len(rel),
        e2e_s=e2e,
        switched=False if obs.status == Status.REJECTED else obs.switched,  # it never ran
        switch_latency_s=ttft if finished and obs.switched else None,
        ttft_ms=req.ttft_ms,
        tpot_ms=req.tpot_ms,
    )


@dataclass
class RunResult:
    """One record per sent request, in send order; ``error_examples`` holds the first message
    seen for each rejection or error code."""

    records: list[RequestRecord]
    interrupted: bool
    started_at: float
    ended_at: float
    error_examples: dict[str, str] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return len(self.records)

    def counts(self) -> dict[str, int]:
        """sent, finished, rejected, errors (the last three add up to the first)."""
        c = {s.value: 0 for s in Status}
        for r in self.records:
            c[Status(r.status).value] += 1
        out = {"sent": self.sent, "finished": c["finished"], "rejected": c["rejected"],
               "errors": c["error"]}
        assert out["finished"] + out["rejected"] + out["errors"] == out["sent"]
        return out


class Progress(Protocol):
    def on_sent(self, req: PlannedRequest) -> None: ...

    def on_done(self, record: RequestRecord) -> None: ...


async def run_open_loop(
    plan: Iterable[PlannedRequest],
    target: Target,
    clock: Clock,
    *,
    progress: Progress | None = None,
) -> RunResult:
    """Send every planned request at ``start + offset_s`` and wait for all of them to end.

    ``plan`` is read lazily in offset order (prompts are built as it is read, before the wait
    for their offset). Cancelling this coroutine (Ctrl-C) stops sending and cancels what is in
    flight; those requests are errors with code ``interrupted`` and the result, marked
    interrupted, covers what was sent.
    """
    tasks: list[asyncio.Task] = []
    examples: dict[str, str] = {}
    t0 = clock.now()

    async def one(req: PlannedRequest) -> RequestRecord:
        sent_at = clock.now()
        try:
            obs = await target.send(req, clock)
        except asyncio.CancelledError:
            obs = Observation(Status.ERROR, INTERRUPTED, ended_at=clock.now())
        except Exception as e:  # noqa: BLE001 — every outcome is filed, none is lost
            status, code = error_outcome(e, accepted=False)
            obs = Observation(status, code, ended_at=clock.now(), message=f"{type(e).__name__}: {e}")
        if obs.status != Status.FINISHED and obs.error_code and obs.message:
            examples.setdefault(obs.error_code, obs.message)
        rec = to_record(req, t0, sent_at, obs)
        if progress is not None:
            progress.on_done(rec)
        return rec

    interrupted = False
    try:
        for req in plan:
            await clock.sleep_until(t0 + req.offset_s)
            tasks.append(asyncio.create_task(one(req), name=f"loadgen-{req.index}"))
            if progress is not None:
                progress.on_sent(req)
        if tasks:
            await asyncio.wait(tasks)
    except asyncio.CancelledError:
        interrupted = True
        for t in tasks:
            t.cancel()
    # A task that started files its own outcome, cancelled or not; one cancelled before it
    # started never sent anything, so it is not a sent request.
    await asyncio.gather(*tasks, return_exceptions=True)
    records = [t.result() for t in tasks if not t.cancelled()]
    return RunResult(records, interrupted, t0, clock.now(), examples)


# --- the I/O shell: a running instance through c2cq.AsyncClient ------------------------------


class ClientTarget:
    """Sends through one :class:`c2cq.client.AsyncClient` (one socket, any number of streams).

    Prompts go as token ids (the planned ids) or, when a request has none, as text of
    ``prompt_tokens`` words. Output length follows the plan: EOS is ignored. The request's SLO
    targets travel with it unless ``send_slo`` is False.
    """

    def __init__(self, client, *, send_slo: bool = True) -> None:
        self.client, self.send_slo = client, send_slo

    async def send(self, req: PlannedRequest, clock: Clock) -> Observation:
        from c2cq.schemas.client import SLO
        from c2cq.schemas.enums import FinishReason

        if req.prompt_ids is not None:
            prompt = {"prompt_token_ids": req.prompt_ids.tolist()}
        else:
            prompt = {"prompt": word_prompt(req.prompt_tokens or 1)}
        slo = SLO(ttft_ms=req.ttft_ms, tpot_ms=req.tpot_ms) if self.send_slo else None
        stream = await self.client.submit(
            req.model, **prompt, max_tokens=req.max_tokens, ignore_eos=True, slo=slo,
            client_request_id=str(req.index))
        try:
            async for _ in stream:
                pass
        except asyncio.CancelledError:
            await _cancel_quietly(stream)  # free the server's slot (a no-op once it ended)
            raise
        except C2CQError as e:
            accepted = stream.accepted is not None or stream.finished is not None
            status, code = error_outcome(e, accepted=accepted)
            return Observation(status, code, tuple(stream.token_times), clock.now(),
                               stream.finished.switched if stream.finished else None, str(e))
        fin = stream.finished
        ended = clock.now()
        if fin.finish_reason == FinishReason.CANCELLED:  # cancelled by someone else
            return Observation(Status.ERROR, "cancelled", tuple(stream.token_times), ended, fin.switched,
                               fin.message or "cancelled")
        return Observation(Status.FINISHED, None, tuple(stream.token_times), ended, fin.switched)


async def _cancel_quietly(stream) -> None:
    try:
        await stream.cancel()
    except C2CQError:
        pass  # the scheduler is gone or not taking messages: nothing left to cancel


def word_prompt(n_tokens: int) -> str:
    """A text of ``n_tokens`` words (one token each for the sim backend; roughly so elsewhere)."""
    return " ".join(["hello"] * max(1, n_tokens))
