"""Autotune configurations and their early pruning."""

from __future__ import annotations

import pytest

from c2cq.kernels.configs import decode_configs, host_share_bucket, m_bucket, prefill_configs, prune_for


def _tiles(cfgs):
    return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) for c in cfgs}


@pytest.mark.parametrize("m,bm", [(1, 16), (16, 16), (17, 32), (64, 64)])
def test_decode_keeps_small_block_m(m, bm):
    kept = prune_for(decode_configs() + prefill_configs(), m, 4096, 4096)
    assert kept and {t[0] for t in _tiles(kept)} == {bm}
    assert all(c.kwargs["GROUP_M"] == 1 for c in kept)


def test_prefill_keeps_prefill_tiles():
    kept = prune_for(decode_configs() + prefill_configs(), 2048, 4096, 4096)
    assert _tiles(kept) == _tiles(prefill_configs())


def test_narrow_n_drops_wide_tiles():
    kept = prune_for(decode_configs() + prefill_configs(), 1, 16, 4096)
    assert kept and {t[1] for t in _tiles(kept)} == {16}


def test_nothing_fits_keeps_the_smallest():
    kept = prune_for(decode_configs() + prefill_configs(), 1, 16, 32)
    assert _tiles(kept) == {(16, 16, 128)}


def test_single_config_is_kept():
    one = prefill_configs()[:1]
    assert prune_for(one, 1, 1, 1) == one


def test_m_bucket():
    assert [m_bucket(m) for m in (0, 1, 3, 16, 17, 5000)] == [1, 1, 4, 16, 32, 4096]


def test_host_share_bucket():
    assert [host_share_bucket(100, s) for s in (100, 99, 75, 74, 50, 25, 0)] == [0, 1, 1, 2, 2, 3, 4]
    assert host_share_bucket(0, 0) == 0
