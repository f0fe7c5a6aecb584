"""The checkpoint's tensors as the model reads them: one registry of every linear weight.

Weights are used as they are (same storage, same dtype): no copy, no conversion. Every linear
weight becomes a ``SplitWeight`` made by one injected factory, so a GPU backend can hand out
split weights (HBM share α + host rest) instead of host-only ones, and can find them all here.

Linears that read the same input (q/k/v, gate/up) become one product when their weights lie back to
back in host memory with the same width — as the catalog's forward-ordered file lays them out: the
fused weight is a view spanning their bytes, never a copy.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from c2cq.kernels.linear import SplitWeight, hybrid_linear
from c2cq.services.executor.model.errors import ModelConfigError

MakeLinear = Callable[[str, torch.Tensor], SplitWeight]


def host_only(name: str, tensor: torch.Tensor) -> SplitWeight:
    """The CPU backend's factory: the whole weight stays in (shared) host memory."""
    return SplitWeight.host_only(tensor)


class ReadCounter:
    """Bytes of weights read since the last reset (a weight read by a step counts once per call), and
    how many of them came from the host part of split weights."""

    def __init__(self) -> None:
        self.bytes = 0
        self.host_bytes = 0

    def add(self, n: int, host: int = 0) -> None:
        self.bytes += n
        self.host_bytes += host

    def reset(self) -> int:
        """Zero both counts; return the total."""
        n, self.bytes, self.host_bytes = self.bytes, 0, 0
        return n


@dataclass(slots=True, eq=False)
class Linear:
    """Y = X·Wᵀ (+ b) through HybridGEMM, counting the bytes of W and b it reads.

    ``weight`` changes only through ``resplit``: the same weight split at another row, as a GPU
    backend moves rows into (or out of) HBM between steps.
    """

    name: str
    weight: SplitWeight
    bias: torch.Tensor | None
    counter: ReadCounter
    nbytes: int = 0  # bytes of W and b a call reads (set from the weight; a resplit keeps the total)

    def __post_init__(self) -> None:
        w = self.weight
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        self.nbytes = (w.hbm.numel() + w.host.numel()) * w.host.element_size() + bias

    def resplit(self, weight: SplitWeight) -> None:
        """Swap in ``weight``, the same N × K weight split at another row."""
        old = self.weight
        if (weight.n, weight.k) != (old.n, old.k) or weight.host.dtype != old.host.dtype:
            raise ModelConfigError(self.name, f"resplit to {weight.n}×{weight.k} {weight.host.dtype} changes "
                                              f"the weight ({old.n}×{old.k} {old.host.dtype})")
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight  # read once: a resplit between calls never mixes two splits in one product
        self.counter.add(self.nbytes, w.host.numel() * w.host.element_size())
        return hybrid_linear(x, w, self.bias)


def adjacent_rows(parts: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """One [sum of rows, K] tensor viewing host tensors that lie back to back in memory, or None.

    The view holds the parts (and so the mapping under them) for as long as it lives."""
    first = parts[0]
    ptr = first.data_ptr()
    for p in parts:
        if (p.device.type != "cpu" or p.dim() != 2 or p.dtype != first.dtype or p.shape[1] != first.shape[1]
                or not p.is_contiguous() or p.data_ptr() != ptr or p.numel() == 0):
            return None
        ptr += p.numel() * p.element_size()
    span = type("WeightSpan", (ctypes.c_char * (ptr - first.data_ptr()),), {}).from_address(first.data_ptr())
    span.parts = tuple(parts)  # keep-alive: torch.frombuffer keeps ``span``
    return torch.frombuffer(span, dtype=first.dtype).view(-1, first.shape[1])


class Projection:
    """Linears over the same input, run as one product where their weights could be fused: the outputs
    in order."""

    def __init__(self, linears: list[Linear], sizes: list[int]) -> None:
        self.linears, self.sizes = linears, sizes

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if len(self.linears) == 1 and len(self.sizes) > 1:
            return list(self.linears[0](x).split(self.sizes, dim=-1))
        return [lin(x) for lin in self.linears]

    def fused(self, x: torch.Tensor) -> torch.Tensor | None:
        """All outputs side by side [.., sum of sizes] from the one fused product; None when not fused."""
        return self.linears[0](x) if len(self.linears) == 1 else None


class LinearWeights:
    """Every linear layer of one model by its checkpoint name, built through one factory."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], make_linear: MakeLinear = host_only) -> None:
        self._tensors = tensors
        self._make = make_linear
        self.fuse = make_linear is host_only  # a GPU backend plans residency per checkpoint weight
        self._linears: dict[str, Linear] = {}
        self.counter = ReadCounter()

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """A checkpoint tensor by name, checked against the shape the config implies."""
        if name not in self._tensors:
            raise ModelConfigError(name, "tensor missing from the checkpoint")
        t = self._tensors[name]
        if shape is not None and tuple(t.shape) != shape:
            raise ModelConfigError(name, f"shape {tuple(t.shape)} does not match the config's {shape}")
        return t

    def has(self, name: str) -> bool:
        return name in self._tensors

    def linear(self, prefix: str, out_features: int, in_features: int, weight: torch.Tensor | None = None) -> Linear:
        """The linear layer ``prefix`` (``prefix.weight`` and an optional ``prefix.bias``)."""
        w = weight if weight is not None else self.tensor(f"{prefix}.weight", (out_features, in_features))
        if tuple(w.shape) != (out_features, in_features):
            raise ModelConfigError(prefix, f"shape {tuple(w.shape)} is not {(out_features, in_features)}")
        bias_name = f"{prefix}.bias"
        bias = self.tensor(bias_name, (out_features,)) if bias_name in self._tensors else None
        lin = Linear(prefix, self._make(prefix, w), bias, self.counter)
        self._linears[prefix] = lin
        return lin

    def projection(self, parts: list[tuple[str, int, torch.Tensor | None]], in_features: int) -> Projection:
        """The linears (prefix, out_features, weight or None for ``prefix.weight``) over one input: one
        fused Linear when their weights lie back to back (biases, if any, concatenated: a copy of a few
        KB), else one Linear each."""
        weights = [w if w is not None else self.tensor(f"{p}.weight", (n, in_features)) for p, n, w in parts]
        fused = adjacent_rows(weights) if self.fuse and len(parts) > 1 else None
        if fused is None or fused.shape[1] != in_features:
            return Projection([self.linear(p, n, in_features, w) for (p, n, _), w in zip(parts, weights, strict=True)],
                              [n for _, n, _ in parts])
        for (p, n, _), w in zip(parts, weights, strict=True):
            if tuple(w.shape) != (n, in_features):
                raise ModelConfigError(p, f"shape {tuple(w.shape)} is not {(n, in_features)}")
        biases = [f"{p}.bias" for p, _, _ in parts]
        have = [b in self._tensors for b in biases]
        bias = None
        if any(have):
            bias = torch.cat([self.tensor(b, (n,)) if h else fused.new_zeros(n)
                              for b, h, (_, n, _) in zip(biases, have, parts, strict=True)])
        name = "+".join(p for p, _, _ in parts)
        lin = Linear(name, self._make(name, fused), bias, self.counter)
        self._linears[name] = lin
        return Projection([lin], [n for _, n, _ in parts])

    def __iter__(self) -> Iterator[Linear]:
        return iter(self._linears.values())

    def __len__(self) -> int:
        return len(self._linears)
