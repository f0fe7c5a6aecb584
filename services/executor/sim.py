"""The sim backend: the real protocol, timing from a roofline model of a slice, fake tokens.

Prefill costs FLOPs over the compute rate; a decode step costs the weight bytes over the memory
bandwidth, split by α between HBM and the host link; α rises after a switch as the model
becomes resident (progressive residency at the link's rate). Tokens are deterministic
pseudo-random ids of the model's vocabulary. A backend for scheduler work at scale, not a
stand-in for the model runtime.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import FinishReason
from c2cq.schemas.executor import AssignRequest
from c2cq.services.executor.backend import Output, StepResult


@dataclass(frozen=True, slots=True)
class SliceProfile:
    """A slice's ceilings. Defaults: an H100 SXM 1g.10gb MIG slice (1/7 of the GPU), PCIe Gen5 link."""

    name: str = "h100-1g.10gb"
    flops: float = 989e12 / 7  # dense bf16 FLOP/s
    hbm_bps: float = 3.35e12 / 7  # bytes/s
    link_bps: float = 55e9  # host → device bytes/s
    hbm_bytes: int = 10 * 2**30
    max_batch: int = 64
    time_scale: float = 1.0  # >1 slows simulated time down (for visible demos)


def roofline_s(*, bytes_hbm: float, bytes_host: float, params: int, tokens: int, flops: float, hbm_bps: float,
               link_bps: float) -> float:
    """One step's duration: weight reads from HBM and over the link overlap, compute overlaps both."""
    t_mem = max(bytes_hbm / hbm_bps, bytes_host / link_bps)
    return max(t_mem, 2.0 * params * tokens / flops)


def resident_after(alpha: float, cap: float, busy_s: float, link_bps: float, model_bytes: int) -> float:
    """Progressive residency: the resident share after ``busy_s`` of copying at ``link_bps`` (≤ cap)."""
    if alpha >= cap or model_bytes <= 0:
        return min(alpha, cap)
    return min(cap, alpha + busy_s * link_bps / model_bytes)


def _token(request_id: str, index: int, vocab: int) -> int:
    h = hashlib.blake2b(f"{request_id}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % vocab


def _prompt_len(req: AssignRequest) -> int:
    if req.prompt_token_ids:
        return len(req.prompt_token_ids)
    return max(1, len((req.prompt or "").split()))


@dataclass(slots=True)
class _Seq:
    req: AssignRequest
    prompt_tokens: int
    prefilled: int = 0
    produced: int = 0


class SimBackend:
    name = "sim"
    blocking = False

    def __init__(self, profile: SliceProfile = SliceProfile(), device: str = "sim:0") -> None:
        self.p = profile
        self.device = device
        self.memory_budget_bytes = profile.hbm_bytes
        self.link_bandwidth_bps = profile.link_bps
        self.link_share_bps = profile.link_bps  # what the link gives this slice now (a simulator lowers it)
        self.max_batch = profile.max_batch
        self.model: ModelInfo | None = None
        self._alpha = 0.0
        self._alpha_cap = 1.0
        self.seqs: dict[str, _Seq] = {}

    def switch(self, info: ModelInfo, alpha: float = 0.0) -> None:
        """Serve ``info`` from now on; ``alpha`` > 0 when part of it is already in HBM."""
        self.model, self._alpha = info, min(max(alpha, 0.0), 1.0)

    def add(self, req: AssignRequest) -> None:
        n = _prompt_len(req) + len(req.resume_token_ids)
        self.seqs[req.request_id] = _Seq(req, n, produced=len(req.resume_token_ids))

    def abort(self, request_id: str) -> None:
        self.seqs.pop(request_id, None)

    def has_work(self) -> bool:
        return bool(self.seqs)

    def alpha(self) -> float:
        return self._alpha

    def set_alpha(self, alpha: float) -> None:
        self._alpha_cap = min(max(alpha, 0.0), 1.0)
        self._alpha = min(self._alpha, self._alpha_cap)

    def _resident_cap(self) -> float:
        return min(self._alpha_cap, self.p.hbm_bytes / self.model.bytes) if self.model.bytes else 1.0

    def step(self, chunk_tokens: int) -> StepResult:
        m, res = self.model, StepResult()
        batch = list(self.seqs.values())[: self.max_batch]
        for s in batch:  # resumed with every token already delivered: complete without a token past max_tokens
            if s.produced >= s.req.max_tokens:
                res.outputs.append(Output(s.req.request_id, s.produced, (), "", FinishReason.LENGTH,
                                          prompt_tokens=s.prompt_tokens))
                del self.seqs[s.req.request_id]
        batch = [s for s in batch if s.req.request_id in self.seqs]
        if not batch:
            return res
        budget = max(1, chunk_tokens)
        for s in batch:  # chunked prefill first, within the chunk budget
            if s.prefilled < s.prompt_tokens and budget > 0:
                take = min(budget, s.prompt_tokens - s.prefilled)
                s.prefilled += take
                budget -= take
                res.prefill_tokens += take
        decoding = [s for s in batch if s.prefilled >= s.prompt_tokens]
        res.decode_tokens = len(decoding)
        tokens = res.prefill_tokens + res.decode_tokens
        res.bytes_hbm = int(self._alpha * m.bytes)
        res.bytes_host = m.bytes - res.bytes_hbm
        link = self.link_share_bps
        res.busy_s = roofline_s(bytes_hbm=res.bytes_hbm, bytes_host=res.bytes_host, params=m.parameters, tokens=tokens,
                                flops=self.p.flops, hbm_bps=self.p.hbm_bps, link_bps=link) * self.p.time_scale
        for s in decoding:
            tok = _token(s.req.request_id, s.produced, m.vocab_size)
            idx = s.produced
            s.produced += 1
            done = s.produced >= s.req.max_tokens
            res.outputs.append(Output(s.req.request_id, idx, (tok,), f" t{tok}",
                                      FinishReason.LENGTH if done else None, prompt_tokens=s.prompt_tokens))
            if done:
                del self.seqs[s.req.request_id]
        # progressive residency: the link copies the next share of the model while it serves
        self._alpha = max(self._alpha, resident_after(self._alpha, self._resident_cap(), res.busy_s / self.p.time_scale,
                                                      link, m.bytes))
        return res
