"""Rotary position embeddings: inverse frequencies per rope type, cos/sin per token, rotation."""

from __future__ import annotations

import math

import torch

from c2cq.services.executor.model.config import RopeConfig


def _base_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim))


def inv_freq(rope: RopeConfig, seq_len: int = 0) -> torch.Tensor:
    """fp32 inverse frequencies (head_dim / 2) for a sequence of ``seq_len`` tokens (used by "dynamic")."""
    dim = rope.head_dim
    if rope.rope_type == "default":
        return _base_inv_freq(rope.theta, dim)
    if rope.rope_type == "linear":
        return _base_inv_freq(rope.theta, dim) / rope.factor
    if rope.rope_type == "dynamic":
        seq_len = max(seq_len, rope.max_position_embeddings)
        scale = (rope.factor * seq_len / rope.max_position_embeddings) - (rope.factor - 1)
        return _base_inv_freq(rope.theta * scale ** (dim / (dim - 2)), dim)
    if rope.rope_type == "llama3":
        return _llama3(rope)
    if rope.rope_type == "yarn":
        return _yarn(rope)
    raise AssertionError(f"rope type {rope.rope_type!r} passed config validation")


def _llama3(rope: RopeConfig) -> torch.Tensor:
    freq = _base_inv_freq(rope.theta, rope.head_dim)
    old = rope.original_max_position_embeddings
    low_wavelen, high_wavelen = old / rope.low_freq_factor, old / rope.high_freq_factor
    wavelen = 2 * math.pi / freq
    scaled = torch.where(wavelen > low_wavelen, freq / rope.factor, freq)
    smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(rope: RopeConfig) -> torch.Tensor:
    dim, base, old = rope.head_dim, rope.theta, rope.original_max_position_embeddings

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(old / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolate = 1 - ramp
    pos_freqs = base ** (torch.arange(0, dim, 2).to(torch.float) / dim)
    return (1.0 / (rope.factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate


class Rope:
    """cos/sin tables for a flat batch of positions.

    "dynamic" rope rescales with the sequence's length once it passes max_position_embeddings;
    like Hugging Face, the frequencies for a step follow the longest position of the sequence
    in that step, and keys already cached keep the rotation they were written with.
    """

    def __init__(self, rope: RopeConfig) -> None:
        self.config = rope
        self.inv_freq = inv_freq(rope)
        self._on_device: dict[torch.device, torch.Tensor] = {self.inv_freq.device: self.inv_freq}

    def _inv_freq_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._on_device:
            self._on_device[device] = self.inv_freq.to(device)
        return self._on_device[device]

    def cos_sin(self, positions: torch.Tensor, seq_lens: torch.Tensor,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each [tokens, head_dim] in ``dtype`` on ``positions``' device; ``seq_lens`` is per token."""
        base = self._inv_freq_on(positions.device)
        freq = base.expand(positions.shape[0], -1)
        if self.config.rope_type == "dynamic":
            limit = self.config.max_position_embeddings
            table: dict[int, torch.Tensor] = {}
            lens = seq_lens.tolist()
            for n in lens:
                if n not in table:
                    table[n] = inv_freq(self.config, n).to(positions.device) if n > limit else base
            freq = torch.stack([table[n] for n in lens]) if table else freq
        freqs = positions[:, None].float() * freq
        emb = torch.cat((freqs, freqs), dim=-1)
        scale = self.config.attention_factor
        return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)

    def tables(self, positions: torch.Tensor, seq_lens: torch.Tensor, dtype: torch.dtype) -> "RopeTables":
        """The step's rotation, built once and shared by every layer."""
        cos, sin = self.cos_sin(positions, seq_lens, dtype)
        half = sin.shape[-1] // 2
        return RopeTables(cos[:, None, :], torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)[:, None, :])


class RopeTables:
    """cos and sign-folded sin [tokens, 1, head_dim] of one step: rotating is x·cos + swap(x)·sin′ where
    swap exchanges the two halves of the head and sin′ carries rotate_half's minus sign (−a·s = a·(−s)
    exactly, so the result is Hugging Face's ``x·cos + rotate_half(x)·sin`` bit for bit)."""

    __slots__ = ("cos", "sin")

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor) -> None:
        self.cos, self.sin = cos, sin

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` [tokens, heads, head_dim] (any strides): a new contiguous tensor."""
        t, h, d = x.shape
        swapped = x.unflatten(-1, (2, d // 2)).flip(-2).view(t, h, d)
        return x * self.cos + swapped * self.sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [tokens, heads, head_dim] by per-token ``cos``/``sin`` [tokens, head_dim]."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return x * cos + rotate_half(x) * sin
