"""Bytes copied when a request is rotated out, with and without full blocks copied ahead (DuplexKV).

One in-process Engine + KVRotor (policy rotate) on the tiny random llama of the tests (fp32, blocks of
4 tokens, a 48-block device pool, a 256-block host pool), on a fake clock of 0.1 s a step, 24 requests
arriving at random over 200 steps (prompts 8-24 tokens, 48 output tokens, TTFT 0.5 s, TPOT 0.5 s);
run once with ``ahead_blocks_per_step`` 0 and once with 8. Prints rotations, KiB copied out at
rotation time ("at preemption"), KiB copied ahead, KiB copied out in all and in, and whether the
greedy tokens of the two runs are equal.

    .venv/bin/python bench/kv_ahead.py
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import structlog
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from hf_models import build_checkpoint  # noqa: E402

from c2cq.services.executor.model.engine import Engine  # noqa: E402
from c2cq.services.executor.model.kv_rotor import KVRotor  # noqa: E402
from c2cq.services.executor.model.sampler import SamplingParams  # noqa: E402
from c2cq.services.executor.rotation import RotationConfig  # noqa: E402


def prompt(seed: int, n: int) -> list[int]:
    return torch.randint(0, 307, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def run(ck, arrivals, ahead: int):
    engine = Engine(ck.config, ck.tensors, None, kv_blocks=48, block_size=4, host_kv_blocks=256)
    rotor = KVRotor(engine, RotationConfig(ahead_blocks_per_step=ahead), prefill_s_per_token=0.01)
    got: dict[str, list[int]] = {}
    for step in range(5000):
        now = step * 0.1
        for rid, ids, params in arrivals.get(step, []):
            engine.add(rid, ids, params)
            rotor.track(rid, now, ttft_s=0.5, tpot_s=0.5)
        if step > max(arrivals) and not engine.num_requests:
            return got, engine, rotor
        rotor.before_step(now, 16)
        for out in engine.step(16):
            got.setdefault(out.request_id, []).extend(out.new_token_ids)
            rotor.token(out.request_id, now + 0.1)
            if out.finished:
                rotor.forget(out.request_id)
    raise RuntimeError("requests did not finish")


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    ck = build_checkpoint("llama", torch.float32, Path(tempfile.mkdtemp()))
    gen = torch.Generator().manual_seed(5)
    arrivals: dict[int, list] = {}
    for i in range(24):
        at = int(torch.randint(0, 200, (1,), generator=gen))
        arrivals.setdefault(at, []).append((f"r{i}", prompt(i, 8 + 4 * (i % 5)), SamplingParams(max_tokens=48)))
    ref = None
    print(f"{'ahead/step':>10} | {'rotations':>9} | {'KiB at preemption':>17} | {'KiB ahead':>9} | "
          f"{'KiB out':>7} | {'KiB in':>6} | tokens = ahead 0 | idle pools (dev, host free)")
    for ahead in (0, 8):
        got, engine, rotor = run(ck, arrivals, ahead)
        ref = got if ref is None else ref
        h = engine.host
        print(f"{ahead:>10} | {rotor.rotations:>9} | {h.bytes_at_rotate / 1024:>17.0f} | {h.bytes_ahead / 1024:>9.0f} | "
              f"{h.bytes_out / 1024:>7.0f} | {h.bytes_in / 1024:>6.0f} | {str(got == ref):>16} | "
              f"{engine.free_blocks}/48, {h.num_free}/256")


if __name__ == "__main__":
    main()
