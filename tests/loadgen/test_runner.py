"""The open-loop runner's core, in virtual time: the schedule is kept whatever the target's
latency, lag is what was measured, and every sent request ends as exactly one outcome."""

from __future__ import annotations

import asyncio
import selectors

import numpy as np
import pytest

from c2cq.client import Stream
from c2cq.errors import PeerDeadError, RequestError, RequestTimeout
from c2cq.loadgen import arrivals as A
from c2cq.loadgen import runner as RN
from c2cq.loadgen import workload as W
from c2cq.loadgen.report import Report, Status
from c2cq.schemas.client import RequestAccepted, RequestFinished, Timings, TokensEmitted, Usage
from c2cq.schemas.enums import FinishReason

# --- virtual time ---------------------------------------------------------------------------


class _VirtualSelector(selectors.DefaultSelector):
    """Polls real fds without blocking; when nothing is ready, jumps the clock by the wait."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout=None):
        ready = super().select(0)
        if not ready:
            if timeout is None:
                raise RuntimeError("deadlock: every task waits and no timer is due")
            self.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose time advances only when every task waits (discrete-event time)."""

    def __init__(self) -> None:
        self._vsel = _VirtualSelector()
        super().__init__(self._vsel)

    def time(self) -> float:
        return self._vsel.now


def run_virtual(coro):
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


class LoopClock:
    """The runner's clock on the running loop's (virtual) time; ``late`` oversleeps each wait."""

    def __init__(self, late: float = 0.0) -> None:
        self.late = late

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self.now()) + self.late)


# --- plans and targets ----------------------------------------------------------------------


def _plan(offsets, *, seed: int = 0) -> list[W.PlannedRequest]:
    cfg = W.WorkloadConfig(catalog=("a", "b", "c"), lengths=((16, 4), (32, 8)), seed=seed)
    return W.Workload(W.from_schedule(offsets), cfg, W.SyntheticPrompts(seed=seed)).plan()


class SlowTarget:
    """Every request takes ``latency`` seconds and streams ``tokens`` evenly."""

    def __init__(self, latency: float, tokens: int = 4) -> None:
        self.latency, self.tokens = latency, tokens
        self.in_flight = self.max_in_flight = self.calls = 0

    async def send(self, req, clock) -> RN.Observation:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        times = []
        try:
            for _ in range(self.tokens):
                await asyncio.sleep(self.latency / self.tokens)
                times.append(clock.now())
        finally:
            self.in_flight -= 1
        return RN.Observation(Status.FINISHED, token_times=tuple(times), ended_at=clock.now(),
                              switched=req.index % 3 == 0)


# --- the schedule is kept -------------------------------------------------------------------


def test_schedule_is_kept_under_a_slow_target():
    offsets = A.schedule(50.0, pattern="gamma", cv=3.0, count=300, seed=3)
    plan = _plan(offsets)
    target = SlowTarget(latency=30.0)  # each request outlives the whole 6-s schedule

    result = run_virtual(RN.run_open_loop(iter(plan), target, LoopClock()))

    assert target.calls == result.sent == len(plan) == 300
    assert target.max_in_flight == 300  # no concurrency cap: every request was in flight at once
    planned = np.array([r.planned_offset_s for r in result.records])
    sent = np.array([r.sent_offset_s for r in result.records])
    assert np.array_equal(planned, np.sort(offsets))
    assert np.max(np.abs(sent - planned)) < 1e-9  # sent at its offset, not after the one before
    assert all(r.e2e_s == pytest.approx(30.0) for r in result.records)
    assert not result.interrupted
    assert result.ended_at - result.started_at == pytest.approx(planned[-1] + 30.0)


def test_lag_is_measured_and_late_requests_are_still_sent():
    # The dispatcher oversleeps every wait by 0.1 s; requests 0-4 share offset 0, so each one
    # goes 0.1 s after the previous: the lag grows and is recorded as it happened.
    offsets = np.array([0.0] * 5 + [10.0, 20.0])
    result = run_virtual(RN.run_open_loop(iter(_plan(offsets)), SlowTarget(latency=1.0), LoopClock(late=0.1)))
    lags = [r.sent_offset_s - r.planned_offset_s for r in result.records]
    assert lags == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.1, 0.1])
    rep = Report.from_records(result.records)
    assert rep.send_lag_s.max == pytest.approx(0.5)
    assert rep.requests == rep.finished == 7
    # TTFT is measured from the actual send, not from the planned time.
    assert all(r.ttft_s == pytest.approx(0.25) for r in result.records)


# --- every outcome is accounted for ---------------------------------------------------------


class MixedTarget:
    """Outcome by index: finished, rejected, failed after acceptance, or a raised exception."""

    KINDS = ("finished", "rejected", "error_obs", "peer_dead", "timeout", "bug", "raised_reject")

    async def send(self, req, clock) -> RN.Observation:
        await asyncio.sleep(0.5)
        kind = self.KINDS[req.index % len(self.KINDS)]
        if kind == "finished":
            return RN.Observation(Status.FINISHED, token_times=(clock.now(),), ended_at=clock.now())
        if kind == "rejected":
            return RN.Observation(Status.REJECTED, "queue_full", ended_at=clock.now(), message="full")
        if kind == "error_obs":
            return RN.Observation(Status.ERROR, "executor_lost", ended_at=clock.now(), message="lost")
        if kind == "peer_dead":
            raise PeerDeadError("gone")
        if kind == "timeout":
            raise RequestTimeout("silent")
        if kind == "bug":
            raise ValueError("a bug in the target")
        raise RequestError("unknown_model", "no such model", str(req.index))


def test_counts_add_up_by_code():
    n = 70
    result = run_virtual(RN.run_open_loop(iter(_plan(np.linspace(0, 5, n))), MixedTarget(), LoopClock()))
    counts = result.counts()
    assert counts == {"sent": n, "finished": 10, "rejected": 20, "errors": 40}
    rep = Report.from_records(result.records)
    assert (rep.requests, rep.finished, rep.rejected, rep.errors) == (n, 10, 20, 40)
    assert rep.rejected_by_code == {"queue_full": 10, "unknown_model": 10}
    assert rep.errors_by_code == {"executor_lost": 10, "peer_dead": 10, "timeout": 10, "ValueError": 10}
    assert result.error_examples["ValueError"] == "ValueError: a bug in the target"
    assert set(result.error_examples) == {"queue_full", "unknown_model", "executor_lost", "peer_dead",
                                          "timeout", "ValueError"}


def test_cancelling_the_run_files_in_flight_requests_as_interrupted():
    offsets = np.arange(10, dtype=float)  # one a second; each takes 3.5 s

    async def main():
        task = asyncio.ensure_future(RN.run_open_loop(iter(_plan(offsets)), SlowTarget(3.5), LoopClock()))
        await asyncio.sleep(5.25)  # sent: 0..5; finished: 0, 1 (at 3.5, 4.5); in flight: 2..5
        task.cancel()
        return await task

    result = run_virtual(main())
    assert result.interrupted
    assert result.sent == 6
    assert [r.status for r in result.records] == ["finished"] * 2 + ["error"] * 4
    assert {r.error_code for r in result.records[2:]} == {RN.INTERRUPTED}
    assert sum(result.counts()[k] for k in ("finished", "rejected", "errors")) == 6


def test_cancelling_during_a_send_loses_no_request():
    # Cancelled from inside the dispatcher, right after it created the third request's task:
    # that task still runs (it was scheduled first), so the target saw exactly what is recorded.
    target = SlowTarget(3.0)

    class CancelOnThirdSend:
        task: asyncio.Task

        def on_sent(self, req):
            if req.index == 2:
                self.task.cancel()

        def on_done(self, rec):
            pass

    async def main():
        progress = CancelOnThirdSend()
        progress.task = asyncio.ensure_future(
            RN.run_open_loop(iter(_plan(np.arange(5, dtype=float))), target, LoopClock(), progress=progress))
        return await progress.task

    result = run_virtual(main())
    assert result.interrupted and target.calls == result.sent == 3
    assert [r.error_code for r in result.records] == [RN.INTERRUPTED] * 3


def test_progress_hears_every_send_and_end():
    class Tally:
        sent, done = [], []

        def on_sent(self, req):
            self.sent.append(req.index)

        def on_done(self, rec):
            self.done.append(rec.status)

    tally = Tally()
    run_virtual(RN.run_open_loop(iter(_plan(np.linspace(0, 5, 14))), MixedTarget(), LoopClock(),
                                 progress=tally))
    assert tally.sent == list(range(14)) and len(tally.done) == 14


# --- pure pieces ----------------------------------------------------------------------------


def test_to_record_measures_from_the_actual_send():
    (req,) = _plan(np.array([2.0]))
    obs = RN.Observation(Status.FINISHED, token_times=(10.4, 10.5, 10.9), ended_at=11.0, switched=True)
    rec = RN.to_record(req, t0=8.0, sent_at=10.1, obs=obs)
    assert rec.planned_offset_s == 2.0 and rec.sent_offset_s == pytest.approx(2.1)
    assert rec.ttft_s == pytest.approx(0.3) and rec.e2e_s == pytest.approx(0.9)
    assert rec.token_times_s == pytest.approx((0.3, 0.4, 0.8)) and rec.n_tokens == 3
    assert rec.switched and rec.switch_latency_s == pytest.approx(0.3)
    assert (rec.ttft_ms, rec.tpot_ms, rec.slo_class, rec.model) == (req.ttft_ms, req.tpot_ms, req.slo_class,
                                                                    req.model)
    warm = RN.to_record(req, 8.0, 10.1, RN.Observation(Status.FINISHED, token_times=(10.4,), ended_at=10.4,
                                                        switched=False))
    assert warm.switch_latency_s is None and warm.switched is False
    failed = RN.to_record(req, 8.0, 10.1, RN.Observation(Status.ERROR, "executor_lost", (10.4,), 10.6))
    assert failed.ttft_s is None and failed.e2e_s is None and failed.token_times_s == ()
    assert failed.n_tokens == 1 and failed.error_code == "executor_lost" and failed.switched is None
    rejected = RN.to_record(req, 8.0, 10.1, RN.Observation(Status.REJECTED, "queue_full", ended_at=10.2))
    assert rejected.switched is False and rejected.switch_latency_s is None  # it never ran anywhere


def test_error_outcome():
    e = RequestError("prompt_too_long", "too long")
    assert RN.error_outcome(e, accepted=False) == (Status.REJECTED, "prompt_too_long")
    assert RN.error_outcome(e, accepted=True) == (Status.ERROR, "prompt_too_long")
    assert RN.error_outcome(PeerDeadError("x"), accepted=False) == (Status.ERROR, "peer_dead")
    assert RN.error_outcome(RequestTimeout("x"), accepted=True) == (Status.ERROR, "timeout")
    assert RN.error_outcome(OSError("x"), accepted=True) == (Status.ERROR, "OSError")


# --- the client target, on the client library's own Stream ----------------------------------


def _finished(reason, *, switched=False, code=None) -> RequestFinished:
    return RequestFinished(request_id="r", finish_reason=reason, usage=Usage(prompt_tokens=1, completion_tokens=2),
                           timings=Timings(queued_ms=0.0, ttft_ms=None, e2e_ms=1.0), switched=switched,
                           error_code=code, message="failed" if code else None)


SCRIPTS = {
    "finished": [RequestAccepted(request_id="r", model="a"),
                 TokensEmitted(request_id="r", seq=0, token_ids=(5, 6), text="xy"),
                 _finished(FinishReason.LENGTH, switched=True)],
    "rejected": [RequestError("unknown_model", "no such model", "r")],
    "failed": [RequestAccepted(request_id="r", model="a"),
               TokensEmitted(request_id="r", seq=0, token_ids=(5,), text="x"),
               _finished(FinishReason.ERROR, code="executor_lost")],
    "dead": [RequestAccepted(request_id="r", model="a"), PeerDeadError("the scheduler went away")],
}


class ScriptedClient:
    """Stands in for AsyncClient.submit: a real Stream fed a scripted reply sequence."""

    def __init__(self, script) -> None:
        self.script, self.submitted, self.cancelled, self.streams = script, [], [], []
        self._streams: dict[str, Stream] = {}  # what Stream touches on a timeout

    async def submit(self, model, prompt=None, **kw) -> Stream:
        self.submitted.append(dict(model=model, prompt=prompt, **kw))
        stream = Stream(self, "r", timeout=5.0)
        for item in self.script:
            stream.queue.put_nowait(item)
        self.streams.append(stream)
        return stream

    async def cancel(self, request_id) -> None:
        self.cancelled.append(request_id)


@pytest.mark.parametrize("name, status, code, tokens, switched", [
    ("finished", Status.FINISHED, None, 2, True),
    ("rejected", Status.REJECTED, "unknown_model", 0, None),  # to_record files it as not switched
    ("failed", Status.ERROR, "executor_lost", 1, False),
    ("dead", Status.ERROR, "peer_dead", 0, None),
])
async def test_client_target_classifies_the_stream(name, status, code, tokens, switched):
    (req,) = _plan(np.array([0.0]))
    client = ScriptedClient(SCRIPTS[name])
    obs = await RN.ClientTarget(client).send(req, RN.MonotonicClock())
    assert (obs.status, obs.error_code, len(obs.token_times), obs.switched) == (status, code, tokens, switched)
    (sub,) = client.submitted
    assert sub["model"] == req.model and sub["max_tokens"] == req.max_tokens and sub["ignore_eos"]
    assert sub["prompt_token_ids"] == req.prompt_ids.tolist() and sub["prompt"] is None
    assert (sub["slo"].ttft_ms, sub["slo"].tpot_ms) == (req.ttft_ms, req.tpot_ms)
    assert sub["client_request_id"] == str(req.index)


async def test_client_target_cancels_the_server_request_when_interrupted():
    (req,) = _plan(np.array([0.0]))
    client = ScriptedClient([RequestAccepted(request_id="r", model="a")])  # then silence
    task = asyncio.ensure_future(RN.ClientTarget(client, send_slo=False).send(req, RN.MonotonicClock()))
    # Cancel once the stream waits on an empty queue: on Python 3.11, asyncio.wait_for (which
    # Stream uses) drops a cancellation that lands as its item arrives.
    while not (client.streams and client.streams[0].accepted is not None):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.cancelled == ["r"] and client.submitted[0]["slo"] is None
