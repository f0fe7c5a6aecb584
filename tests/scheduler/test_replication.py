"""A hot model is replicated when one slice cannot keep up with it: on a PCIe GPU (three slices
sharing one 50 GB/s link) a steady stream of its requests heavier than one slice can prefill
ends up resident (α = 1) on two slices or more; a lighter stream of the same requests stays on
the one slice that holds it, and the other slices keep their models.

The test plays the three slices: each prefills the requests it is given in order at ``RATE``
prompt tokens a second, sends a request's first token when its prefill is done (with a StepStats
read at the α its plan asked for), and completes it ``DECODE_S`` later."""

from __future__ import annotations

import heapq

from c2cq.schemas import executor as m
from c2cq.schemas.client import SLO, SubmitRequest
from c2cq.services.catalog.sim_models import sim_model
from c2cq.services.scheduler import core
from c2cq.services.scheduler import events as ev
from c2cq.services.scheduler.state import State, ToExecutor

from .history import MODELS, S, completed, tokens
from .test_pcie_policy import slice_ready

HOT = sim_model("m-hot", 3072, 28, 8192, 128256)  # 7.9 GB: fits the 8.6 GB a 10 GiB slice gives weights
INFOS = {**MODELS, HOT.name: HOT}
SLICES = ("e0", "e1", "e2")
RATE = 40_000.0  # prompt tokens a slice prefills per second
DECODE_S = 0.2


def submit(rid: str, at: float, model: str, prompt_tokens: int) -> ev.Submitted:
    msg = SubmitRequest(request_id=rid, model=model, prompt_token_ids=(1,) * prompt_tokens, max_tokens=1,
                        slo=SLO(ttft_ms=1_000.0, tpot_ms=100.0))
    return ev.Submitted(at=at, client=b"c", msg=msg, info=INFOS[model])


def play(arrivals: list[ev.Submitted]) -> tuple[State, list[tuple[str, str]]]:
    """Fold the arrivals and what the played slices say into a fresh core; the state at the end
    and every assignment made, as (executor, model)."""
    st = State()
    for eid in SLICES:
        core.apply(st, slice_ready(eid, "gpu0", max_batch=64))
    due: list[tuple[float, int, ev.SchedEvent]] = [(e.at, k, e) for k, e in enumerate(arrivals)]
    heapq.heapify(due)
    free_at = dict.fromkeys(SLICES, 0.0)  # when each slice's prefill queue is done
    alpha = dict.fromkeys(SLICES, 0.0)  # the α each slice's plan asks for
    placed: list[tuple[str, str]] = []
    n = len(arrivals)
    while due:
        now, _, e = heapq.heappop(due)
        cmds = [c for c in core.apply(st, e)[1] if isinstance(c, ToExecutor)]
        for c in cmds:  # a switch's plan comes right after its assignment: it applies to that request
            if isinstance(c.msg, m.ApplyPlan):
                alpha[c.executor_id] = c.msg.alpha
        for c in cmds:
            eid, msg = c.executor_id, c.msg
            if isinstance(msg, m.AssignRequest):
                placed.append((eid, msg.model))
                free_at[eid] = first = max(now, free_at[eid]) + len(msg.prompt_token_ids) / RATE
                w = INFOS[msg.model].bytes
                hbm = int(alpha[eid] * w)
                for t, said in ((first, tokens(eid, msg.request_id, 0, (7,), first)),
                                (first, ev.ExecutorSaid(at=first, executor_id=eid, msg=S(
                                    eid, m.StepStats, step_s=0.02, tokens=1, prefill_tokens=0, decode_tokens=1,
                                    batch=1, bytes_hbm=hbm, bytes_host=w - hbm, model=msg.model))),
                                (first + DECODE_S, completed(eid, msg.request_id, 1, first + DECODE_S))):
                    heapq.heappush(due, (t, n, said))
                    n += 1
    return st, placed


def warmed_up() -> list[ev.Submitted]:
    """The hot model on e0, two others on e1 and e2, all three idle by t = 2 s."""
    return [submit("h0", 1.0, HOT.name, 1000), submit("b0", 1.01, "m-b", 100), submit("c0", 1.02, "m-c", 100)]


def hot_stream(gap_s: float) -> list[ev.Submitted]:
    """2 s of the hot model's 4,000-token prompts, one every ``gap_s``, from t = 3 s."""
    return [submit(f"h{k + 1}", 3.0 + k * gap_s, HOT.name, 4000) for k in range(int(2.0 / gap_s))]


def test_the_warm_up_leaves_each_slice_a_model_of_its_own():
    st, placed = play(warmed_up())
    assert placed == [("e0", HOT.name), ("e1", "m-b"), ("e2", "m-c")]
    assert st.executors["e0"].alpha == 1.0


def test_a_hot_model_heavier_than_one_slice_ends_up_resident_on_two_slices():
    st, placed = play(warmed_up() + hot_stream(0.05))  # 80,000 prompt tokens/s: twice what one slice prefills
    hot = {eid for eid, model in placed[3:] if model == HOT.name}
    assert len(hot) >= 2, placed
    held = [eid for eid, x in st.executors.items() if x.model == HOT.name and x.alpha == 1.0]
    assert len(held) >= 2, {eid: (x.model, x.alpha) for eid, x in st.executors.items()}
    assert not any(x.active for x in st.executors.values())  # and every request was served


def test_a_hot_model_one_slice_keeps_up_with_stays_on_that_slice():
    st, placed = play(warmed_up() + hot_stream(0.5))  # 8,000 prompt tokens/s: one slice keeps up
    assert {eid for eid, _ in placed[3:]} == {"e0"}
    assert [(x.model, x.alpha) for x in st.executors.values()] == [(HOT.name, 1.0), ("m-b", 1.0), ("m-c", 1.0)]
