"""Paged decode attention on a CPU: torch's flex_attention compiled for CPU, reading the KV pool in place
through a block mask, against the engine's path (one gather of whole blocks + one
scaled_dot_product_attention per layer, GQA folded into the query rows).

Shapes: SmolLM2-135M's attention (9 query heads, 3 KV heads, head_dim 64), fp32, ``--batch`` decoding
sequences of ``--ctx`` tokens each in a pool of ``--pool-blocks`` blocks of 16, scattered. Prints the
block mask's build time, flex's first call (compile) and per-call time, the engine path's per-call time
(both per layer: a step makes one call per layer).

    .venv/bin/python bench/paged_attention.py [--batch 8] [--ctx 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from c2cq.services.executor.model.attention import AttnMeta, paged_attention

HKV, GROUPS, D, BS = 3, 3, 64, 16


def per_call_ms(f, n: int = 30) -> float:
    for _ in range(3):
        f()
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--pool-blocks", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b, nb, pool_blocks = args.batch, -(-args.ctx // BS), args.pool_blocks
    tables = torch.randperm(pool_blocks)[: b * nb].view(b, nb)
    pool = torch.randn(pool_blocks, BS, 2, HKV, D)
    q = torch.randn(b, HKV * GROUPS, D)

    # (a) flex: K/V are the whole pool [1, Hkv, slots, D]; query i sees the slots of its own blocks
    owner = torch.full((pool_blocks,), -1, dtype=torch.long)  # the sequence each block belongs to
    slot_pos = torch.zeros(pool_blocks * BS, dtype=torch.long)  # each slot's position in that sequence
    for i in range(b):
        owner[tables[i]] = i
        for j, blk in enumerate(tables[i].tolist()):
            slot_pos[blk * BS:(blk + 1) * BS] = torch.arange(j * BS, (j + 1) * BS)
    ctx_len = args.ctx

    def mask_mod(_b, _h, q_idx, kv_idx):
        return (owner[kv_idx // BS] == q_idx) & (slot_pos[kv_idx] < ctx_len)

    k_all = pool[:, :, 0].permute(2, 0, 1, 3).reshape(1, HKV, pool_blocks * BS, D)
    v_all = pool[:, :, 1].permute(2, 0, 1, 3).reshape(1, HKV, pool_blocks * BS, D)
    qf = q.permute(1, 0, 2)[None]  # [1, H, B, D]: the batch's queries as one sequence
    t0 = time.perf_counter()
    bm = create_block_mask(mask_mod, 1, 1, b, pool_blocks * BS, device="cpu", BLOCK_SIZE=(b, 128))
    t_mask = time.perf_counter() - t0
    flex = torch.compile(flex_attention, dynamic=False)
    t0 = time.perf_counter()
    ref_a = flex(qf, k_all, v_all, block_mask=bm, enable_gqa=True)[0].permute(1, 0, 2)
    t_compile = time.perf_counter() - t0
    flex_ms = per_call_ms(lambda: flex(qf, k_all, v_all, block_mask=bm, enable_gqa=True))

    # (b) the engine: one gather of the batch's blocks + one SDPA
    spans = [(i, 1, args.ctx, tables[i].tolist()) for i in range(b)]
    meta = AttnMeta.build(spans, BS)
    ref_b = paged_attention(q, pool, meta, None)
    engine_ms = per_call_ms(lambda: paged_attention(q, pool, meta, None))
    err = (ref_a - ref_b).abs().max().item()
    print(f"batch {b}, ctx {args.ctx}, pool {pool_blocks} blocks of {BS}, {args.threads} thread(s), fp32; "
          f"max |flex - engine| = {err:.1e}")
    print(f"flex_attention (compiled): block mask {t_mask * 1e3:.0f} ms (per step), first call {t_compile:.1f} s, "
          f"{flex_ms:.2f} ms per layer")
    print(f"gather + SDPA (the engine): {engine_ms:.2f} ms per layer ({flex_ms / engine_ms:.1f}x faster)")


if __name__ == "__main__":
    main()
