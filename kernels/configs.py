"""Autotune configurations for HybridGEMM and the early pruning that keeps the search short.

Decode shapes (M ≤ 64) are memory-bound: small BLOCK_M, narrow BLOCK_N so that enough programs
stream the weight, deep pipelines. Prefill shapes are compute-bound: the Triton tutorial's tiles.
Under ``TRITON_INTERPRET=1`` one large tile is enough (every program × K-step costs ~2 ms there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import triton

DECODE_MAX_M = 64


@dataclass(frozen=True, slots=True)
class TileConfig:
    """One explicit launch configuration (bypasses autotuning)."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3

    def meta(self) -> dict[str, int]:
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k, "GROUP_M": self.group_m}


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _config(bm: int, bn: int, bk: int, warps: int, stages: int, group_m: int = 8) -> triton.Config:
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m}, num_warps=warps, num_stages=stages
    )


def decode_configs() -> list[triton.Config]:
    """Memory-bound tiles: BLOCK_M ∈ {16, 32, 64}, narrow N tiles, long K tiles."""
    out = []
    for bm in (16, 32, 64):
        for bn in (16, 32, 64):
            for bk in (128, 256, 512):
                if bn * bk > 16384:  # keep one stage ≤ 32 KiB at fp16
                    continue
                for stages in (3, 4):
                    out.append(_config(bm, bn, bk, 4, stages, group_m=1))
    return out


def prefill_configs() -> list[triton.Config]:
    """Compute-bound tiles, after the Triton matmul tutorial's Hopper list."""
    return [
        _config(128, 256, 64, 8, 3),
        _config(256, 128, 64, 8, 3),
        _config(128, 128, 64, 8, 4),
        _config(128, 128, 64, 4, 4),
        _config(128, 64, 64, 4, 4),
        _config(64, 128, 64, 4, 4),
    ]


def interpreter_configs() -> list[triton.Config]:
    """One large tile: the interpreter's cost is per program and per K-step."""
    return [_config(64, 64, 64, 4, 1)]


def all_configs() -> list[triton.Config]:
    """Every configuration the autotuner may consider on this host."""
    if interpreting():
        return interpreter_configs()
    return decode_configs() + prefill_configs()


def host_share_bucket(n: int, split: int) -> int:
    """Autotune key for α: ⌈4·(host rows / N)⌉ ∈ {0..4}; the best tiles differ as the link share grows."""
    return (4 * (n - split) + n - 1) // n if n else 0


def tuning_bench(fn, quantiles=None):
    """The autotuner's timer: short warm-up and repeat (milliseconds) so tuning stays quick."""
    return triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


def m_bucket(m: int) -> int:
    """The autotune key for M: the next power of two, capped, so a varying batch reuses tuning."""
    return min(triton.next_power_of_2(max(m, 1)), 4096)


def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Keep decode tiles for small M and prefill tiles for large M; drop tiles far wider than N or K."""
    m, n, k = named_args["M"], named_args["N"], named_args["K"]
    return prune_for(configs, m, n, k)


def prune_for(configs: list[triton.Config], m: int, n: int, k: int) -> list[triton.Config]:
    """Pure core of :func:`prune` (tested directly)."""
    if len(configs) <= 1:
        return list(configs)
    m_cap = max(16, triton.next_power_of_2(m))
    n_cap = max(16, triton.next_power_of_2(n))
    k_cap = max(16, triton.next_power_of_2(k))
    decode = m <= DECODE_MAX_M
    kept = []
    for c in configs:
        bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        is_decode_cfg = c.kwargs["GROUP_M"] == 1
        if decode != is_decode_cfg:
            continue
        if decode and bm != min(m_cap, 64):
            continue
        if bn > n_cap or bk > k_cap:
            continue
        kept.append(c)
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])]
