"""The sim backend: the real protocol, timing from a roofline model of a slice, fake tokens.

Prefill costs FLOPs over the compute rate; a decode step costs the weight bytes over the memory
bandwidth, split by α between HBM and the host link; α rises after a switch as the model
becomes resident (progressive residency). The residency copy and the step's streaming reads
share the slice's link: while both run, the copy takes ``copy_share`` of it and the reads the rest;
whatever the reads leave idle during a step, the copy gets (``link_time_s``, ``resident_after``).
Tokens are deterministic pseudo-random ids of the model's vocabulary (one hash per request, a
counter-based mix per token). A backend for scheduler work at scale, not a stand-in for the
model runtime.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import islice

import numpy as np

from c2cq.schemas.catalog import ModelInfo
from c2cq.schemas.enums import FinishReason
from c2cq.schemas.executor import AssignRequest
from c2cq.services.executor.backend import Output, StepResult

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_LENGTH = FinishReason.LENGTH


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
    # Share of the slice's link the residency copy takes while the step also streams over it (an
    # even split assumed: the copy engine and the kernel's reads contend for the same link).
    copy_share: float = 0.5


def link_time_s(bytes_host: float, bytes_copy: float, link_bps: float, copy_share: float = 0.5) -> float:
    """How long the step's ``bytes_host`` streaming reads take over a link of ``link_bps`` that a
    residency copy of (up to) ``bytes_copy`` shares: the copy takes ``copy_share`` of the link until
    it is done, the reads the rest. If the copy ends first the reads then get the whole link
    ((host + copy) / link); else the reads run at (1 − share) of it throughout."""
    if bytes_host <= 0:
        return 0.0
    # max() and min() of two written out (the same results: they run at every step)
    together = (bytes_host + (bytes_copy if bytes_copy > 0.0 else 0.0)) / link_bps
    if copy_share >= 1.0:
        return together
    apart = bytes_host / ((1.0 - copy_share) * link_bps)
    return apart if apart < together else together


def roofline_s(*, bytes_hbm: float, bytes_host: float, params: int, tokens: int, flops: float, hbm_bps: float,
               link_bps: float, bytes_copy: float = 0.0, copy_share: float = 0.5) -> float:
    """One step's duration: weight reads from HBM and over the link overlap, compute overlaps both;
    a residency copy in flight (``bytes_copy`` still to go) slows the link reads it shares the link with."""
    return _roofline(bytes_hbm, bytes_host, params, tokens, flops, hbm_bps, link_bps, bytes_copy, copy_share)


def _roofline(bytes_hbm, bytes_host, params, tokens, flops, hbm_bps, link_bps, bytes_copy, copy_share) -> float:
    """``roofline_s`` with positional arguments (the step's hot path)."""
    t_hbm, t_link = bytes_hbm / hbm_bps, link_time_s(bytes_host, bytes_copy, link_bps, copy_share)
    t_mem = t_link if t_link > t_hbm else t_hbm  # max(), written out
    t_comp = 2.0 * params * tokens / flops
    return t_comp if t_comp > t_mem else t_mem


def resident_after(alpha: float, cap: float, busy_s: float, link_bps: float, model_bytes: int,
                   bytes_host: float = 0.0) -> float:
    """Progressive residency: the resident share after a step of ``busy_s`` that streamed
    ``bytes_host`` over a link of ``link_bps`` — the copy gets what the reads left of the link
    (busy_s · link − bytes_host), up to the cap. The link is never counted twice."""
    if alpha >= cap or model_bytes <= 0:
        return min(alpha, cap)
    return min(cap, alpha + max(0.0, busy_s * link_bps - bytes_host) / model_bytes)


def _seed(request_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")


def _token(seed: int, index: int, vocab: int) -> int:
    """Token ``index`` of the stream ``seed`` (splitmix64 of a counter: cheap, deterministic)."""
    z = (seed + (index + 1) * _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) % vocab


def _tokens(seed: int, start: int, n: int, vocab: int) -> list[int]:
    """Tokens ``start`` .. ``start + n - 1`` of the stream ``seed``: ``_token`` of each, with numpy's
    uint64 arithmetic (it wraps as the masks do) once the run is long enough to pay for it."""
    if n < 24:  # _token of each, inlined (no call per token; numpy pays from ~24 on)
        out = []
        add = out.append
        z0 = seed + start * _GOLDEN
        for _ in range(n):
            z0 += _GOLDEN
            z = z0 & _MASK
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
            add((z ^ (z >> 31)) % vocab)
        return out
    z = np.uint64(seed) + np.arange(start + 1, start + n + 1, dtype=np.uint64) * _U_GOLDEN
    z = (z ^ (z >> _U30)) * _U_M1
    z = (z ^ (z >> _U27)) * _U_M2
    return ((z ^ (z >> _U31)) % np.uint64(vocab)).tolist()


_U_GOLDEN, _U_M1, _U_M2 = np.uint64(_GOLDEN), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_U27, _U30, _U31 = np.uint64(27), np.uint64(30), np.uint64(31)


def _prompt_len(req: AssignRequest) -> int:
    if req.prompt_token_ids:
        return len(req.prompt_token_ids)
    return max(1, len((req.prompt or "").split()))


@dataclass(slots=True)
class _Seq:
    req: AssignRequest
    rid: str
    seed: int
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
        self.copied_bytes = 0.0  # residency bytes copied over the link by the last step

    def switch(self, info: ModelInfo, alpha: float = 0.0) -> None:
        """Serve ``info`` from now on; ``alpha`` > 0 when part of it is already in HBM."""
        self.model, self._alpha = info, min(max(alpha, 0.0), 1.0)

    def add(self, req: AssignRequest) -> None:
        n = _prompt_len(req) + len(req.resume_token_ids)
        self.seqs[req.request_id] = _Seq(req, req.request_id, _seed(req.request_id), n,
                                         produced=len(req.resume_token_ids))

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
        # one pass over the batch (it runs for every step of every slice: written for speed)
        m, res = self.model, StepResult()
        self.copied_bytes = 0.0
        seqs = self.seqs
        batch = list(seqs.values()) if len(seqs) <= self.max_batch else list(islice(seqs.values(), self.max_batch))
        outputs = res.outputs
        budget = max(1, chunk_tokens)
        prefill = 0
        live = False
        decoding = []
        for s in batch:
            if s.produced >= s.req.max_tokens:  # resumed with every token delivered: complete without a token past max_tokens
                outputs.append(Output(s.rid, s.produced, (), "", FinishReason.LENGTH, prompt_tokens=s.prompt_tokens))
                del seqs[s.rid]
                continue
            live = True
            if s.prefilled < s.prompt_tokens:  # chunked prefill first, within the chunk budget
                if budget > 0:
                    take = min(budget, s.prompt_tokens - s.prefilled)
                    s.prefilled += take
                    budget -= take
                    prefill += take
                if s.prefilled < s.prompt_tokens:
                    continue
            decoding.append(s)
        if not live:
            return res
        res.prefill_tokens = prefill
        res.decode_tokens = len(decoding)
        alpha, p, size = self._alpha, self.p, m.bytes
        cap = min(self._alpha_cap, p.hbm_bytes / size) if size else 1.0
        res.bytes_hbm = hbm = int(alpha * size)
        res.bytes_host = host = size - hbm
        link = self.link_share_bps
        to_copy = (cap - alpha) * size
        if not to_copy > 0.0:
            to_copy = 0.0  # max(0.0, …)
        busy = _roofline(hbm, host, m.parameters, prefill + len(decoding), p.flops, p.hbm_bps, link, to_copy,
                         p.copy_share)
        res.busy_s = busy * p.time_scale
        self._decode(decoding, outputs)
        # progressive residency: the copy gets what the step's reads left of the link
        if alpha < cap:
            new = resident_after(alpha, cap, busy, link, size, host)
            self.copied_bytes = (new - alpha) * size
            self._alpha = new
        return res

    def _decode(self, decoding: list[_Seq], outputs: list[Output]) -> None:
        """Each sequence produces its next token (and ends at max_tokens); ``_token`` inlined."""
        seqs, vocab, add = self.seqs, self.model.vocab_size, outputs.append
        for s in decoding:
            idx = s.produced
            z = (s.seed + (idx + 1) * _GOLDEN) & _MASK
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
            tok = (z ^ (z >> 31)) % vocab
            s.produced = idx = idx + 1
            if idx >= s.req.max_tokens:
                add(Output(s.rid, idx - 1, (tok,), f" t{tok}", _LENGTH, s.prompt_tokens))
                del seqs[s.rid]
            else:
                add(Output(s.rid, idx - 1, (tok,), f" t{tok}", None, s.prompt_tokens))

    def batch(self) -> list[_Seq]:
        """The sequences the next step runs, in step order (a simulator repeating a decode step)."""
        return list(self.seqs.values())[: self.max_batch]

    def decode_again(self, batch: list[_Seq]) -> list[Output]:
        """One more pure-decode step of ``batch`` (those of it still in the backend): what ``step``
        gives when every sequence has finished its prefill, for a simulator that has shown the
        step to be the same as the last one (same batch, α = 1, so the same duration)."""
        outputs: list[Output] = []
        self._decode([s for s in batch if s.rid in self.seqs], outputs)
        return outputs

    def decode_many(self, batch: list[_Seq], steps: int) -> dict[str, list[int]]:
        """``steps`` more pure-decode steps of ``batch`` at once, none of which may complete a
        sequence: each one's next tokens (as ``steps`` calls of ``decode_again`` would give them)."""
        out: dict[str, list[int]] = {}
        vocab = self.model.vocab_size
        for s in batch:
            if s.rid not in self.seqs:
                continue
            idx, seed = s.produced, s.seed
            assert idx + steps < s.req.max_tokens, "decode_many may not complete a sequence"
            out[s.rid] = _tokens(seed, idx, steps, vocab)
            s.produced = idx + steps
        return out

    def remaining(self) -> int:
        """The fewest tokens any sequence still has to produce."""
        return min((s.req.max_tokens - s.produced for s in self.seqs.values()), default=0)
