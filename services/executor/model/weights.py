"""The checkpoint's tensors as the model reads them: one registry of every linear weight.

Weights are used as they are (same storage, same dtype): no copy, no conversion. Every linear
weight becomes a ``SplitWeight`` made by one injected factory, so a GPU backend can hand out
split weights (HBM share α + host rest) instead of host-only ones, and can find them all here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
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

    @property
    def nbytes(self) -> int:
        w = self.weight
        size = (w.hbm.numel() + w.host.numel()) * w.host.element_size()
        return size + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())

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


class LinearWeights:
    """Every linear layer of one model by its checkpoint name, built through one factory."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], make_linear: MakeLinear = host_only) -> None:
        self._tensors = tensors
        self._make = make_linear
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

    def __iter__(self) -> Iterator[Linear]:
        return iter(self._linears.values())

    def __len__(self) -> int:
        return len(self._linears)
