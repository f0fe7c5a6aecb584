"""A workload: trace or synthetic arrivals turned into the requests an open-loop runner sends.

Pure and seeded. Each random choice (model, lengths, SLO class) draws from its own stream
derived from the seed, so changing one option leaves the others' draws unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from c2cq.errors import ConfigError
from c2cq.loadgen.traces import TraceRequest

_STREAM_MODEL, _STREAM_LENGTH, _STREAM_SLO, _STREAM_SHARED, _STREAM_OWN = 1, 2, 3, 4, 5
BLOCK_TOKENS = 512  # Mooncake's hash_ids name one block of this many prompt tokens


@dataclass(frozen=True, slots=True)
class SloClass:
    """A latency target: time to first token and time per output token, in milliseconds."""

    name: str
    ttft_ms: float
    tpot_ms: float

    def __post_init__(self) -> None:
        if not (self.ttft_ms > 0 and self.tpot_ms > 0):
            raise ConfigError(f"SLO class {self.name!r}: ttft_ms and tpot_ms must be > 0")


DEFAULT_SLO_CLASSES = (SloClass("interactive", 1000.0, 100.0), SloClass("batch", 10000.0, 500.0))


@dataclass(frozen=True, slots=True, eq=False)
class PlannedRequest:
    """One request to send at ``offset_s`` after the run starts.

    ``prompt_ids`` is int32 token ids (None when the workload builds no prompts);
    ``prefix_hash_ids`` are the trace's shared-prefix block ids (Mooncake), else empty.
    """

    index: int
    offset_s: float
    model: str
    prompt_tokens: int | None
    prompt_ids: np.ndarray | None
    max_tokens: int
    slo_class: str
    ttft_ms: float
    tpot_ms: float
    prefix_hash_ids: tuple[int, ...] = ()
    failed_in_trace: bool = False


def zipf_probabilities(n: int, exponent: float) -> np.ndarray:
    """P(rank i) ∝ 1 / i^exponent for ranks 1..n (exponent 0 is uniform)."""
    if n <= 0:
        raise ConfigError("a Zipf popularity needs at least one model")
    if not (math.isfinite(exponent) and exponent >= 0):
        raise ConfigError(f"Zipf exponent must be finite and >= 0, got {exponent}")
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


@dataclass(frozen=True)
class WorkloadConfig:
    """How trace requests become planned requests.

    models: "trace" uses each request's model (through ``model_map``); "zipf" draws from
    ``catalog`` with popularity falling by rank in catalog order; "auto" is "trace" when the
    request names a model, else "zipf". ``lengths`` is a pool of (prompt, output) token
    pairs drawn from (seeded) where the trace has no lengths (ServeGen, synthetic schedules).
    ``slo_weights`` are the probabilities of ``slo_classes`` (default: uniform);
    ``slo_by_tag`` fixes the class from a trace tag (e.g. BurstGPT's Log Type).
    """

    catalog: tuple[str, ...] = ()
    models: Literal["trace", "zipf", "auto"] = "auto"
    zipf_exponent: float = 1.0
    model_map: Mapping[str, str] = field(default_factory=dict)
    lengths: Sequence[tuple[int, int]] = ()
    max_tokens_limit: int | None = None
    min_max_tokens: int = 1
    drop_failed: bool = False
    slo_classes: tuple[SloClass, ...] = DEFAULT_SLO_CLASSES
    slo_weights: tuple[float, ...] | None = None
    slo_by_tag: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.models not in ("trace", "zipf", "auto"):
            raise ConfigError(f"models must be trace, zipf or auto, got {self.models!r}")
        if not self.slo_classes:
            raise ConfigError("at least one SLO class is needed")
        names = [c.name for c in self.slo_classes]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate SLO class names: {names}")
        if self.slo_weights is not None and (
            len(self.slo_weights) != len(self.slo_classes)
            or any(w < 0 for w in self.slo_weights)
            or sum(self.slo_weights) <= 0
        ):
            raise ConfigError("slo_weights must be one non-negative weight per class, sum > 0")
        for tag, cls in self.slo_by_tag.items():
            if cls not in names:
                raise ConfigError(f"slo_by_tag[{tag!r}] names unknown class {cls!r}")
        if self.max_tokens_limit is not None and self.max_tokens_limit < self.min_max_tokens:
            raise ConfigError("max_tokens_limit must be >= min_max_tokens")
        if self.min_max_tokens < 1:
            raise ConfigError("min_max_tokens must be >= 1")
        if any(p < 0 or o < 0 for p, o in self.lengths):
            raise ConfigError("lengths must be non-negative token counts")
        if self.models == "zipf" and not self.catalog:
            raise ConfigError("models='zipf' needs a catalog")
        zipf_probabilities(max(len(self.catalog), 1), self.zipf_exponent)


def from_schedule(offsets: Iterable[float]) -> list[TraceRequest]:
    """Trace requests with only arrival times (lengths and models come from the config)."""
    return [TraceRequest(float(t), None, None) for t in offsets]


# --- prompts --------------------------------------------------------------------------------


class PromptBuilder(Protocol):
    """Builds the token ids of request ``index``: ``n_tokens`` ids, int32."""

    def build(self, index: int, n_tokens: int, hash_ids: tuple[int, ...]) -> np.ndarray: ...


def _assemble(
    n_tokens: int,
    hash_ids: tuple[int, ...],
    block_tokens: int,
    shared: Callable[[int], np.ndarray],
    own: Callable[[int], np.ndarray],
) -> np.ndarray:
    """Leading blocks named by ``hash_ids`` (the same id → the same ids), then own tokens."""
    n_shared = min(len(hash_ids), math.ceil(n_tokens / block_tokens))
    parts = [shared(h) for h in hash_ids[:n_shared]]
    rest = n_tokens - n_shared * block_tokens
    if rest > 0:
        parts.append(own(rest))
    if not parts:
        return np.empty(0, dtype=np.int32)
    return np.concatenate(parts)[:n_tokens].astype(np.int32, copy=False)


@dataclass(frozen=True)
class SyntheticPrompts:
    """Random token ids in [first_id, vocab_size); deterministic per hash id and per request."""

    vocab_size: int = 32000
    first_id: int = 0
    seed: int = 0
    block_tokens: int = BLOCK_TOKENS

    def __post_init__(self) -> None:
        if not 0 <= self.first_id < self.vocab_size or self.block_tokens < 1:
            raise ConfigError("need 0 <= first_id < vocab_size and block_tokens >= 1")

    def _ids(self, key: list[int], n: int) -> np.ndarray:
        rng = np.random.default_rng(key)
        return rng.integers(self.first_id, self.vocab_size, n, dtype=np.int32)

    def build(self, index: int, n_tokens: int, hash_ids: tuple[int, ...] = ()) -> np.ndarray:
        return _assemble(
            n_tokens, hash_ids, self.block_tokens,
            lambda h: self._ids([self.seed, _STREAM_SHARED, h], self.block_tokens),
            lambda m: self._ids([self.seed, _STREAM_OWN, index], m),
        )


class TokenizerPrompts:
    """Spans of a tokenized text: ``encode`` is any tokenizer-like callable str → ids.

    Each block or request reads ``n`` consecutive ids of the encoded corpus (wrapping) from a
    start drawn from (seed, hash id) or (seed, request index).
    """

    def __init__(
        self,
        encode: Callable[[str], Sequence[int]],
        corpus: str,
        *,
        seed: int = 0,
        block_tokens: int = BLOCK_TOKENS,
    ) -> None:
        self._ids = np.asarray(list(encode(corpus)), dtype=np.int32)
        if self._ids.size == 0:
            raise ConfigError("the corpus encodes to no tokens")
        if block_tokens < 1:
            raise ConfigError("block_tokens must be >= 1")
        self.seed, self.block_tokens = seed, block_tokens

    def _span(self, key: list[int], n: int) -> np.ndarray:
        start = int(np.random.default_rng(key).integers(0, self._ids.size))
        return np.take(self._ids, np.arange(start, start + n), mode="wrap")

    def build(self, index: int, n_tokens: int, hash_ids: tuple[int, ...] = ()) -> np.ndarray:
        return _assemble(
            n_tokens, hash_ids, self.block_tokens,
            lambda h: self._span([self.seed, _STREAM_SHARED, h], self.block_tokens),
            lambda m: self._span([self.seed, _STREAM_OWN, index], m),
        )


class Workload:
    """Sorted trace requests plus a config; :meth:`plan` gives the requests to send."""

    def __init__(
        self,
        requests: Iterable[TraceRequest],
        config: WorkloadConfig,
        prompts: PromptBuilder | None = None,
    ) -> None:
        reqs = [r for r in requests if not (config.drop_failed and r.failed)]
        # Stable sort keeps file order among equal times (Mooncake has many at t = 0).
        self.requests: list[TraceRequest] = sorted(reqs, key=lambda r: r.arrival_s)
        self.config = config
        self.prompts = prompts
        self._classes = {c.name: c for c in config.slo_classes}
        self._choices = self._draw()

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def duration_s(self) -> float:
        """Offset of the last request (0 for an empty workload)."""
        return self.requests[-1].arrival_s if self.requests else 0.0

    def plan(self) -> list[PlannedRequest]:
        """Every planned request, prompts built (see :meth:`iter_plan` to build them lazily)."""
        return list(self.iter_plan())

    def iter_plan(self) -> Iterator[PlannedRequest]:
        """Planned requests in send order; prompt ids are built as each one is yielded."""
        models, lengths, classes = self._choices
        for i, r in enumerate(self.requests):
            prompt_len, out_len = lengths[i]
            cls = self._classes[classes[i]]
            ids = None if self.prompts is None else self.prompts.build(i, prompt_len, r.hash_ids)
            yield PlannedRequest(
                index=i,
                offset_s=r.arrival_s,
                model=models[i],
                prompt_tokens=prompt_len,
                prompt_ids=ids,
                max_tokens=self._max_tokens(out_len),
                slo_class=cls.name,
                ttft_ms=cls.ttft_ms,
                tpot_ms=cls.tpot_ms,
                prefix_hash_ids=r.hash_ids,
                failed_in_trace=r.failed,
            )

    def _max_tokens(self, out_len: int) -> int:
        cfg = self.config
        n = max(out_len, cfg.min_max_tokens)
        return n if cfg.max_tokens_limit is None else min(n, cfg.max_tokens_limit)

    def _draw(self) -> tuple[list[str], list[tuple[int, int]], list[str]]:
        cfg = self.config
        n = len(self.requests)
        rng_model = np.random.default_rng([cfg.seed, _STREAM_MODEL])
        rng_len = np.random.default_rng([cfg.seed, _STREAM_LENGTH])
        rng_slo = np.random.default_rng([cfg.seed, _STREAM_SLO])

        zipf = None
        if cfg.catalog:
            p = zipf_probabilities(len(cfg.catalog), cfg.zipf_exponent)
            zipf = rng_model.choice(len(cfg.catalog), size=n, p=p)
        models: list[str] = []
        for i, r in enumerate(self.requests):
            use_trace = cfg.models == "trace" or (cfg.models == "auto" and r.model is not None)
            if use_trace:
                if r.model is None:
                    raise ConfigError("models='trace' but the trace names no model")
                models.append(cfg.model_map.get(r.model, r.model))
            elif zipf is None:
                raise ConfigError("the trace names no model and no catalog was given")
            else:
                models.append(cfg.catalog[int(zipf[i])])

        pool = np.asarray(cfg.lengths, dtype=np.int64).reshape(-1, 2)
        picks = rng_len.integers(0, len(pool), size=n) if len(pool) else None
        lengths: list[tuple[int, int]] = []
        for i, r in enumerate(self.requests):
            if r.prompt_tokens is not None and r.output_tokens is not None:
                lengths.append((r.prompt_tokens, r.output_tokens))
            elif picks is None:
                raise ConfigError("the trace has no token lengths; give config.lengths")
            else:
                p_len, o_len = pool[picks[i]]
                lengths.append((
                    int(p_len) if r.prompt_tokens is None else r.prompt_tokens,
                    int(o_len) if r.output_tokens is None else r.output_tokens,
                ))

        names = [c.name for c in cfg.slo_classes]
        weights = np.asarray(cfg.slo_weights or [1.0] * len(names), dtype=np.float64)
        drawn = rng_slo.choice(len(names), size=n, p=weights / weights.sum())
        classes = [
            cfg.slo_by_tag.get(r.tag, names[int(drawn[i])]) if r.tag else names[int(drawn[i])]
            for i, r in enumerate(self.requests)
        ]
        return models, lengths, classes


def length_pool(
    requests: Iterable[TraceRequest], *, skip_failed: bool = True
) -> list[tuple[int, int]]:
    """(prompt, output) pairs of a trace that has both, for ``WorkloadConfig.lengths``."""
    return [
        (r.prompt_tokens, r.output_tokens)
        for r in requests
        if r.prompt_tokens is not None
        and r.output_tokens is not None
        and not (skip_failed and r.failed)
    ]
