"""The CPU executor's model engine: continuous batching with chunked prefill over a paged KV cache."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from c2cq.errors import RequestError
from c2cq.schemas.enums import ErrorCode, FinishReason
from c2cq.services.executor.model.batch import FlatBatch
from c2cq.services.executor.model.config import parse_config
from c2cq.services.executor.model.detokenizer import IncrementalDetokenizer, load_tokenizer
from c2cq.services.executor.model.errors import KVRotationError
from c2cq.services.executor.model.kv_host import HostKVPool
from c2cq.services.executor.model.model import Model
from c2cq.services.executor.model.sampler import SamplingParams, new_generator, sample_rows
from c2cq.services.executor.model.sequence import Sequence
from c2cq.services.executor.model.stop import StopText
from c2cq.services.executor.model.weights import MakeLinear, host_only


@dataclass(frozen=True, slots=True)
class StepOutput:
    request_id: str
    new_token_ids: tuple[int, ...]
    text_delta: str
    finished: bool
    finish_reason: str | None  # a FinishReason value once finished


@dataclass(frozen=True, slots=True)
class StepStats:
    prefill_tokens: int
    decode_tokens: int
    num_seqs: int
    weight_bytes: int  # bytes of weights the step's forward read (routed experts only)
    weight_bytes_host: int = 0  # of which read from host memory (the non-resident rows of split weights)
    kv_rotations: int = 0  # requests rotated out or in since the step before
    kv_bytes_rotated: int = 0  # bytes those rotations copied, both directions

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens


@dataclass(frozen=True, slots=True)
class KVState:
    request_id: str
    device_blocks: int
    pending: int  # tokens still to run before its next token can be sampled
    has_output: bool
    rotated: bool
    host_blocks: int
    grow: int = 0  # device blocks its next decode step adds (a decode crossing into a new block)
    cached: int = 0  # tokens whose KV it holds (a part-prefilled request: the chunks run so far)


class Engine:
    """Runs many requests of one model, a step at a time; no I/O, no threads."""

    def __init__(self, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                 tokenizer_json: bytes | None, *, kv_blocks: int, block_size: int,
                 make_linear: MakeLinear = host_only, model: Model | None = None, host_kv_blocks: int = 0) -> None:
        """``model``: layers already built on these tensors (kept by a backend across switches), used as
        they are (``config`` must be theirs; ``tensors`` and ``make_linear`` are then not read).
        ``host_kv_blocks``: size of the host KV pool requests can be rotated to (0: none)."""
        self.config = parse_config(config) if model is None else model.cfg
        self.model = Model(self.config, tensors, make_linear) if model is None else model
        self.cache = self.model.new_cache(kv_blocks, block_size)
        self.host = HostKVPool.like(self.cache, host_kv_blocks) if host_kv_blocks else None
        self._rotated: set[str] = set()  # requests whose KV is on host or on its way (skipped by the schedule)
        self.tokenizer = load_tokenizer(tokenizer_json) if tokenizer_json is not None else None
        self._seqs: dict[str, Sequence] = {}
        self._arrivals = itertools.count()
        self._requeued = itertools.count()  # victims queued behind a head so far (orders them)
        self.last_stats = StepStats(0, 0, 0, 0)
        self.preemptions = 0  # sequences whose KV was dropped for recompute, since start
        self._rotations = 0  # rotations (out or in) not yet reported in a step's stats
        self._bytes_reported = 0  # host pool bytes (out + in) already reported

    # -- requests ---------------------------------------------------------------------------------
    def add(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        if request_id in self._seqs:
            raise RequestError(ErrorCode.DUPLICATE_REQUEST, f"request {request_id!r} is already running", request_id)
        if not prompt_ids:
            raise RequestError(ErrorCode.EMPTY_PROMPT, "the prompt has no tokens", request_id)
        vocab = self.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_ids):
            raise RequestError(ErrorCode.MALFORMED, f"a prompt token id is outside [0, {vocab})", request_id)
        capacity = self.cache.allocator.num_blocks * self.cache.block_size
        if len(prompt_ids) + params.max_tokens > capacity:
            raise RequestError(ErrorCode.PROMPT_TOO_LONG, f"prompt + max_tokens = "
                               f"{len(prompt_ids) + params.max_tokens} exceeds the KV cache's {capacity} tokens",
                               request_id)
        detok = IncrementalDetokenizer(self.tokenizer, prompt_ids) if self.tokenizer is not None else None
        self._seqs[request_id] = Sequence(
            request_id=request_id, prompt_len=len(prompt_ids), params=params, tokens=list(prompt_ids),
            table=self.cache.new_table(), generator=new_generator(params.seed), detok=detok,
            stop_text=StopText(params.stop), arrival=next(self._arrivals))

    def abort(self, request_id: str) -> bool:
        """Drop a request and free its KV blocks; False when it is not (or no longer) here."""
        if request_id not in self._seqs:
            return False
        if request_id in self._rotated:
            self._settle()  # its copy must finish before its blocks can be freed
        seq = self._seqs.pop(request_id)
        if request_id in self._rotated:
            self.host.drop(request_id)
            self._rotated.discard(request_id)
        elif self.host is not None:
            self.host.drop_ahead(request_id)
        seq.table.release(self.cache.allocator)
        return True

    # -- rotation to the host KV pool -------------------------------------------------------------
    def rotate_out(self, request_ids: list[str]) -> None:
        """Copy these requests' KV to the host pool (batched); they skip steps until rotated back in."""
        if self.host is None:
            raise KVRotationError("this engine has no host KV pool")
        for rid in request_ids:
            if rid not in self._seqs or rid in self._rotated:
                raise KVRotationError(f"request {rid!r} is not running here")
        self.host.copy_out(self.cache, {rid: self._seqs[rid].table.blocks for rid in request_ids})
        for rid in request_ids:
            self._seqs[rid].table.blocks = []
            self._rotated.add(rid)
        self._rotations += len(request_ids)

    def rotate_in(self, request_ids: list[str]) -> None:
        """Copy rotated requests' KV back to the device pool; they run again from the next step."""
        if self.host is None:
            raise KVRotationError("this engine has no host KV pool")
        self.host.copy_in(self.cache, request_ids)
        self._rotations += len(request_ids)

    def copy_ahead(self, request_ids: list[str], max_blocks: int) -> int:
        """Copy up to ``max_blocks`` full blocks of these running requests (in this order) to the host pool
        ahead of a rotation, so that rotating one out later copies only its last blocks; blocks copied."""
        if self.host is None:
            raise KVRotationError("this engine has no host KV pool")
        copied = 0
        for rid in request_ids:
            seq = self._seqs.get(rid)
            if seq is None or rid in self._rotated:
                raise KVRotationError(f"request {rid!r} is not running here")
            full = seq.table.blocks[:seq.num_cached // self.cache.block_size]
            copied += self.host.copy_ahead(self.cache, rid, full, max_blocks - copied)
        return copied

    def _settle(self, wait: bool = True) -> None:
        """Finish the pending copies (``wait=False``: those done by now, on cuda; the others stay pending,
        overlapping the step); requests copied back in get their blocks and run again."""
        if self.host is None:
            return
        for rid, blocks in self.host.complete(self.cache, wait=wait).back.items():
            self._seqs[rid].table.blocks = blocks
            self._rotated.discard(rid)

    def _rotated_bytes(self) -> int:
        """Bytes copied between the tiers since the last step's stats."""
        host = self.host
        return 0 if host is None else host.bytes_out + host.bytes_in - self._bytes_reported

    @property
    def kv_blocks(self) -> tuple[int, int, int, int]:
        """(device used, device free, host used, host free) KV blocks now; blocks held by a pending copy
        count as used."""
        alloc, host = self.cache.allocator, self.host
        free_host = 0 if host is None else host.room  # copies ahead are a cache: any rotation takes them
        return (alloc.num_blocks - alloc.num_free, alloc.num_free,
                0 if host is None else host.num_blocks - free_host, free_host)

    @property
    def request_ids(self) -> frozenset[str]:
        return frozenset(self._seqs)

    def kv_states(self) -> list[KVState]:
        """Each request's KV standing, oldest arrival first (what a rotation policy reads)."""
        order = sorted(self._seqs.values(), key=lambda s: s.arrival)
        host = self.host
        return [KVState(s.request_id, len(s.table.blocks), s.pending, s.num_output > 0,
                        s.request_id in self._rotated, host.blocks_of(s.request_id) if host is not None else 0,
                        s.table.blocks_needed(s.num_cached + 1) if s.pending == 1 and s.table.blocks else 0,
                        s.num_cached)
                for s in order]

    def preempt(self, request_id: str, behind: str | None = None) -> None:
        """Free a running request's blocks; it recomputes its KV (prompt + output so far) later. ``behind``:
        the waiting request it made room for, which it then queues behind (else, older, its re-prefill
        would take the freed blocks back first); requests preempted behind one head keep their order."""
        seq = self._seqs.get(request_id)
        if seq is None or request_id in self._rotated:
            raise KVRotationError(f"request {request_id!r} is not running here")
        head = self._seqs.get(behind) if behind is not None else None
        if behind is not None and head is None:
            raise KVRotationError(f"request {behind!r} is not here")
        self._preempt(seq)
        if head is not None and seq.arrival < head.arrival:
            # between the head and whoever came after it (arrivals are whole numbers apart)
            seq.arrival = head.arrival + 1 - 1 / (2 + next(self._requeued))

    @property
    def rotated(self) -> frozenset[str]:
        """Requests whose KV is on host (or being copied there or back)."""
        return frozenset(self._rotated)

    @property
    def num_requests(self) -> int:
        return len(self._seqs)

    @property
    def free_blocks(self) -> int:
        return self.cache.allocator.num_free

    @property
    def tokens_processed(self) -> int:
        """Tokens the last step ran through the model (prefill + decode)."""
        return self.last_stats.tokens

    @property
    def weight_bytes_read(self) -> int:
        """Bytes of weights the last step read."""
        return self.last_stats.weight_bytes

    @property
    def weight_bytes(self) -> int:
        """Bytes of all the model's linear weights (what a step reads at most, experts all routed)."""
        return sum(lin.nbytes for lin in self.model.weights)

    # -- scheduling -------------------------------------------------------------------------------
    def _preempt(self, seq: Sequence) -> None:
        """Free a sequence's blocks; it recomputes its KV (prompt + output so far) later."""
        if self.host is not None:
            self.host.drop_ahead(seq.request_id)
        seq.table.release(self.cache.allocator)
        seq.num_cached = 0
        seq.preemptions += 1
        self.preemptions += 1

    def _make_room(self, seq: Sequence, num_tokens: int, younger: list[Sequence], preempted: set[str]) -> bool:
        """Free blocks for ``seq`` to hold ``num_tokens`` by preempting the youngest sequences first."""
        alloc = self.cache.allocator
        while seq.table.blocks_needed(num_tokens) > alloc.num_free:
            victims = [s for s in younger if s.table.blocks and s.request_id not in preempted]
            if not victims:
                return False
            self._preempt(victims[-1])
            preempted.add(victims[-1].request_id)
        return True

    def _schedule(self, chunk_tokens: int) -> list[tuple[Sequence, int]]:
        """(sequence, tokens to run) in arrival order: each decode takes 1 token, prefill chunks share the
        ``chunk_tokens`` budget first come first served. When KV blocks run out, the youngest sequences
        are preempted (their KV is recomputed later), so the oldest always progresses."""
        order = sorted(self._seqs.values(), key=lambda s: s.arrival)
        alloc, bs = self.cache.allocator, self.cache.block_size
        plan: list[tuple[Sequence, int]] = []
        budget = chunk_tokens
        preempted: set[str] = set()
        releasing = 0 if self.host is None else self.host.releasing  # on cuda: copies out still running
        for i, seq in enumerate(order):
            if seq.request_id in preempted or seq.request_id in self._rotated:
                continue
            decoding = seq.pending == 1 and seq.num_cached > 0
            if not decoding and budget == 0:
                continue
            if 0 < seq.table.blocks_needed(seq.num_cached + 1) - alloc.num_free <= releasing:
                continue  # the blocks a rotation is copying out cover it: wait a step, preempt nobody
            if not self._make_room(seq, seq.num_cached + 1, order[i + 1:], preempted):
                if decoding:
                    self._preempt(seq)
                    preempted.add(seq.request_id)
                continue
            room = (len(seq.table.blocks) + alloc.num_free) * bs - seq.num_cached
            n = 1 if decoding else min(seq.pending, budget, room)
            seq.table.grow(alloc, seq.num_cached + n)
            plan.append((seq, n))
            if not decoding:
                budget -= n
        return plan

    # -- the step ---------------------------------------------------------------------------------
    def step(self, chunk_tokens: int) -> list[StepOutput]:
        """Run one forward over every scheduled sequence; ``chunk_tokens`` caps this step's prefill tokens."""
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        self._settle(wait=False)
        rotations, moved = self._rotations, self._rotated_bytes()
        self._rotations, self._bytes_reported = 0, self._bytes_reported + moved
        plan = self._schedule(chunk_tokens)
        if not plan:
            self.last_stats = StepStats(0, 0, 0, 0, kv_rotations=rotations, kv_bytes_rotated=moved)
            return []
        if self.host is not None:
            for seq, _ in plan:
                self.host.check_write(seq.request_id, seq.num_cached // self.cache.block_size)
        chunks = [(seq.tokens[seq.num_cached:seq.num_cached + n], seq.num_cached, seq.table) for seq, n in plan]
        want = [seq.num_cached + n == len(seq.tokens) for seq, n in plan]
        decode = sum(1 for seq, n in plan if n == 1 and seq.pending == 1 and seq.num_output > 0)
        batch = FlatBatch.build(chunks, want)
        counter = self.model.weights.counter
        counter.reset()
        logits = self.model.forward(batch, self.cache)
        host = counter.host_bytes
        self.last_stats = StepStats(prefill_tokens=sum(n for _, n in plan) - decode, decode_tokens=decode,
                                    num_seqs=len(plan), weight_bytes=counter.reset(), weight_bytes_host=host,
                                    kv_rotations=rotations, kv_bytes_rotated=moved)
        for seq, n in plan:
            seq.num_cached += n
        sampled = [seq for (seq, _), wanted in zip(plan, want, strict=True) if wanted]  # logits' rows, in order
        tokens = sample_rows(logits, [s.params for s in sampled], [s.generator for s in sampled])
        return [self._append(seq, token) for seq, token in zip(sampled, tokens, strict=True)]

    def _append(self, seq: Sequence, token: int) -> StepOutput:
        seq.tokens.append(token)
        params = seq.params
        stop_ids = params.stop_token_ids + (() if params.ignore_eos else self.config.eos_token_ids)
        text = ""
        reason: str | None = None
        if token in stop_ids:
            reason = FinishReason.STOP
        elif seq.detok is not None:
            text = seq.stop_text.add(seq.detok.add(token))
            if seq.stop_text.stopped:
                reason = FinishReason.STOP
        if reason is None and seq.num_output >= params.max_tokens:
            reason = FinishReason.LENGTH
        if reason is not None:
            if seq.detok is not None and not seq.stop_text.stopped:
                text += seq.stop_text.add(seq.detok.flush()) + seq.stop_text.flush()
            seq.finish_reason = str(reason)
            self.abort(seq.request_id)
        return StepOutput(seq.request_id, (token,), text, reason is not None,
                          None if reason is None else str(reason))
