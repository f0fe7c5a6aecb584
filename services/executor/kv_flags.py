"""The executor's KV flags, shared by ``c2cq-executor`` and ``c2cq up`` (which checks and passes them on),
and the options they make (``KVOptions``: policy, device and host pool sizes); with them the other
per-slice memory budget, a CPU slice's packed weights. No torch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from c2cq.errors import ConfigError
from c2cq.services.executor.rotation import KVPolicy, RotationConfig


@dataclass(frozen=True, slots=True)
class KVOptions:
    policy: KVPolicy = KVPolicy.BLOCK
    device_blocks: int = 0  # device KV pool in blocks (0: the backend sizes it from its KV bytes)
    host_blocks: int = 0  # host KV pool in blocks (0: none)
    rotation: RotationConfig | None = None  # the policy's thresholds (None: RotationConfig's defaults)

    def __post_init__(self) -> None:
        if self.device_blocks < 0 or self.host_blocks < 0:
            raise ConfigError(f"KV pool sizes must be >= 0 blocks, got device {self.device_blocks}, "
                              f"host {self.host_blocks}")
        if self.policy is KVPolicy.ROTATE and self.host_blocks == 0:
            raise ConfigError("--kv-policy rotate needs a host KV pool (--kv-host-blocks N)")

    @property
    def config(self) -> RotationConfig:
        cfg = self.rotation or RotationConfig()
        return cfg if cfg.policy is self.policy else replace(cfg, policy=self.policy)


PACKED_MB = 2048  # packing.DEFAULT_PACKED_BYTES (a test keeps them equal): why, there


def add_kv_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv-policy", choices=[str(k) for k in KVPolicy], default=str(KVPolicy.BLOCK),
                   help="when the KV pool is full: rotate running requests' KV to the host pool by SLO slack, "
                        "free it to recompute later, or make new requests wait (default: block)")
    p.add_argument("--kv-blocks", type=int, default=0, metavar="N",
                   help="device KV pool in blocks of 16 tokens (default 0: sized from the slice's memory)")
    p.add_argument("--kv-host-blocks", type=int, default=0, metavar="N",
                   help="host KV pool in blocks, what rotate moves requests to (default 0: none)")
    p.add_argument("--packed-mb", type=int, default=PACKED_MB, metavar="MIB",
                   help="cpu: MiB of private packed (oneDNN blocked, and transposed for single rows) weight copies a "
                        f"slice makes of the models it serves, read faster than the shared pages; 0: none "
                        f"(default {PACKED_MB})")


def kv_argv(args: argparse.Namespace) -> tuple[str, ...]:
    """The flags to give an executor for what ``add_kv_flags`` parsed."""
    return ("--kv-policy", args.kv_policy, "--kv-blocks", str(args.kv_blocks),
            "--kv-host-blocks", str(args.kv_host_blocks), "--packed-mb", str(args.packed_mb))


def kv_options(args: argparse.Namespace) -> KVOptions:
    """What ``add_kv_flags`` parsed; ConfigError when they do not go together."""
    return KVOptions(policy=KVPolicy(args.kv_policy), device_blocks=args.kv_blocks, host_blocks=args.kv_host_blocks)
