"""Driving an executor backend through its protocol in a test: requests added, steps run until none is
left, each request's tokens gathered (shared by the cpu, fake-CUDA and GPU backend tests)."""

from __future__ import annotations

from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.client import SamplingParams
from c2cq.schemas.executor import AssignRequest

MAX_STEPS = 10_000


def generate(backend, info: ModelInfo, prompts: list[list[int]], new: int, *, chunk: int,
             sampling: SamplingParams | None = None, switch: bool = True, each_step=None):
    """Greedy (or ``sampling``) continuations of ``prompts`` through the backend protocol, ``chunk`` prefill
    tokens a step, ``each_step(backend)`` after every step; (tokens per prompt, the steps' results)."""
    if switch:
        backend.switch(info)
    for i, p in enumerate(prompts):
        backend.add(AssignRequest(request_id=f"r{i}", model=info.name, prompt_token_ids=tuple(p), max_tokens=new,
                                  sampling=sampling or SamplingParams(ignore_eos=True)))
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    steps = []
    for _ in range(MAX_STEPS):
        if not backend.has_work():
            break
        res = backend.step(chunk)
        for o in res.outputs:
            assert o.error is None, f"{o.request_id}: {o.error}"
            assert o.index == len(tokens[o.request_id])
            tokens[o.request_id].extend(o.token_ids)
        steps.append(res)
        if each_step is not None:
            each_step(backend)
    else:
        raise AssertionError("the backend did not finish its requests")
    return [tokens[f"r{i}"] for i in range(len(prompts))], steps
