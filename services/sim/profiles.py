"""The performance model's parameters (profiles.toml or a measured replacement) and the cluster
of slices built from them (pure)."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from c2cq.errors import ConfigError
from c2cq.services.executor.sim import SliceProfile

DEFAULT_PROFILE = Path(__file__).with_name("profiles.toml")


@dataclass(frozen=True, slots=True)
class GpuSpec:
    name: str
    hbm_bytes: float
    hbm_bps: float
    flops: float
    link_bps: float  # host → GPU, shared by the GPU's slices


@dataclass(frozen=True, slots=True)
class Profile:
    gpus: dict[str, GpuSpec]
    mig: dict[str, tuple[float, float]]  # profile → (compute share, memory share)
    max_batch: int
    weight_share: float
    loader_efficiency: float
    loader_engine_start_s: float  # a baseline's cold start: engine start-up before the load
    keep_alive_s: float
    sources: dict[str, str]  # "gpu.gh200-96.link_bps" → where the number comes from
    copy_share: float = 0.5  # the residency copy's share of a slice's link while the step streams
    loader_pin_bps: float = 0.0  # page-locking a load's host buffers (0: a pre-pinned pool)
    c2cq_switch_fixed_s: float = 0.0  # c2cq's switch: engine build before the first step
    c2cq_eager_copy: float = 1.0  # share of the embedding table copied into HBM before the first step
    c2cq_register_bps: float = 0.0  # page-locking a mapping not registered before (0: never charged)
    c2cq_register_on_switch: bool = False
    # the KV model (services/sim/kv.py; profiles.toml [kv]), used when a run sets a KV policy
    kv_block_tokens: int = 16
    kv_dim_share: float = 0.25
    kv_host_bytes: float = 32e9
    kv_d2h_ratio: float = 0.79
    kv_max_blocks_per_step: int = 4096


@dataclass(frozen=True, slots=True)
class SliceSpec:
    executor_id: str
    device: str  # GROUP/DEVICE: slices of one GPU share its link (the scheduler's link groups)
    group: str
    profile: SliceProfile
    link_bps: float  # the group's link capacity


def _num(table: dict, key: str, where: str, lo: float = 0.0, hi: float = math.inf) -> float:
    v = table.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not (lo < v <= hi):
        raise ConfigError(f"{where}.{key} must be a number in ({lo}, {hi}], got {v!r}")
    return float(v)


def _opt(table: dict, key: str, where: str, default: float, hi: float = math.inf) -> float:
    """An optional number in [0, hi] (the default when absent)."""
    v = table.get(key, default)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0.0 <= v <= hi):
        raise ConfigError(f"{where}.{key} must be a number in [0, {hi}], got {v!r}")
    return float(v)


def load_profile(path: Path | None = None) -> Profile:
    """Read a profile file; every GPU needs hbm_bytes, hbm_bps, flops and link_bps."""
    p = Path(path) if path is not None else DEFAULT_PROFILE
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read the profile {p}: {e}") from None
    sources: dict[str, str] = {}

    def collect(prefix: str, table: dict) -> None:
        for k, v in table.items():
            if k.endswith("_source"):
                sources[f"{prefix}.{k[: -len('_source')]}"] = str(v)

    gpus = {}
    for name, t in doc.get("gpu", {}).items():
        w = f"gpu.{name}"
        gpus[name] = GpuSpec(name, _num(t, "hbm_bytes", w), _num(t, "hbm_bps", w), _num(t, "flops", w),
                             _num(t, "link_bps", w))
        collect(w, t)
    if not gpus:
        raise ConfigError(f"{p}: no [gpu.NAME] table")
    mig = {name: (_num(t, "compute", f"mig.{name}", hi=1.0), _num(t, "memory", f"mig.{name}", hi=1.0))
           for name, t in doc.get("mig", {}).items()}
    if not mig:
        raise ConfigError(f"{p}: no [mig.PROFILE] table")
    s, ld, cq, kv = doc.get("slice", {}), doc.get("loader", {}), doc.get("c2cq", {}), doc.get("kv", {})
    collect("slice", s)
    collect("loader", ld)
    collect("c2cq", cq)
    collect("kv", kv)
    reg = cq.get("register_on_switch", False)
    if not isinstance(reg, bool):
        raise ConfigError(f"c2cq.register_on_switch must be true or false, got {reg!r}")
    return Profile(gpus=gpus, mig=mig, max_batch=int(_num(s, "max_batch", "slice")),
                   weight_share=_num(s, "weight_share", "slice", hi=1.0),
                   loader_efficiency=_num(ld, "efficiency", "loader", hi=1.0),
                   loader_engine_start_s=_opt(ld, "engine_start_s", "loader", 0.0),
                   keep_alive_s=_num(ld, "keep_alive_s", "loader"), sources=sources,
                   copy_share=_opt(s, "copy_share", "slice", 0.5, hi=1.0),
                   loader_pin_bps=_opt(ld, "pin_bps", "loader", 0.0),
                   c2cq_switch_fixed_s=_opt(cq, "switch_fixed_s", "c2cq", 0.0),
                   c2cq_eager_copy=_opt(cq, "eager_copy", "c2cq", 1.0, hi=1.0),
                   c2cq_register_bps=_opt(cq, "register_bps", "c2cq", 0.0),
                   c2cq_register_on_switch=reg,
                   kv_block_tokens=int(_opt(kv, "block_tokens", "kv", 16, hi=4096) or 16),
                   kv_dim_share=_opt(kv, "kv_dim_share", "kv", 0.25, hi=1.0) or 0.25,
                   kv_host_bytes=_opt(kv, "host_bytes", "kv", 32e9),
                   kv_d2h_ratio=_opt(kv, "d2h_ratio", "kv", 0.79, hi=1.0) or 0.79,
                   kv_max_blocks_per_step=int(_opt(kv, "max_blocks_per_step", "kv", 4096) or 4096))


def parse_layout(spec: str, prof: Profile) -> tuple[str, ...]:
    """``3g,2g,2g`` → the MIG profiles of one GPU (their compute shares must fit the GPU)."""
    layout = tuple(x.strip() for x in spec.split(",") if x.strip())
    unknown = [x for x in layout if x not in prof.mig]
    if not layout or unknown:
        raise ConfigError(f"--layout {spec!r}: expected MIG profiles from {', '.join(prof.mig)}")
    if sum(prof.mig[x][0] for x in layout) > 1.0 + 1e-6 or sum(prof.mig[x][1] for x in layout) > 1.0 + 1e-6:
        raise ConfigError(f"--layout {spec!r}: the slices need more than one GPU's compute or memory")
    return layout


def build_cluster(prof: Profile, gpu: str, layout: tuple[str, ...], slices: int) -> list[SliceSpec]:
    """``slices`` slices, filling GPUs of type ``gpu`` one after another with ``layout``."""
    if gpu not in prof.gpus:
        raise ConfigError(f"unknown GPU {gpu!r}; the profile has {', '.join(prof.gpus)}")
    if slices < 1:
        raise ConfigError("--slices must be >= 1")
    g = prof.gpus[gpu]
    out = []
    for i in range(slices):
        k, j = divmod(i, len(layout))
        mig = layout[j]
        c, m = prof.mig[mig]
        sp = SliceProfile(name=f"{gpu}-{mig}", flops=g.flops * c, hbm_bps=g.hbm_bps * m, link_bps=g.link_bps,
                          hbm_bytes=int(g.hbm_bytes * m), max_batch=prof.max_batch, copy_share=prof.copy_share)
        group = f"gpu{k:03d}"
        out.append(SliceSpec(executor_id=f"x{i:03d}", device=f"{group}/mig{j}.{mig}", group=group, profile=sp,
                             link_bps=g.link_bps))
    return out
