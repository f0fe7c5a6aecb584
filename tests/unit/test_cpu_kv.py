"""The KV policy in a CPU slice's step loop: with a device pool far smaller than the load, rotate and
recompute keep every request's greedy tokens (fp32), rotation really happens, and the step results
report both pools back to full at the end; block (the default) is the schedule of an unbounded pool."""

from __future__ import annotations

import pytest

from c2cq.errors import ConfigError
from c2cq.schemas.client import SLO, SamplingParams as WireSampling
from c2cq.schemas.executor import AssignRequest
from c2cq.services.executor import cpu
from c2cq.services.executor.kv_flags import KVOptions
from c2cq.services.executor.rotation import KVPolicy

from .conftest import publish_tiny

# 6 requests of 2-3 blocks of 16 tokens each against a device pool of 4 blocks
PROMPTS = [list(range(1 + i, 6 + 5 * i)) for i in range(6)]
URGENT = SLO(ttft_ms=1.0, tpot_ms=1e5)  # every waiting head is urgent, every running request has TPOT slack


def serve(info, kv: KVOptions, slo: SLO = URGENT):
    b = cpu.CpuBackend(threads=1, kv=kv)
    b.switch(info)
    for i, p in enumerate(PROMPTS):
        b.add(AssignRequest(request_id=f"r{i}", model=info.name, prompt_token_ids=tuple(p), max_tokens=14 + i,
                            sampling=WireSampling(ignore_eos=True), slo=slo))
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(PROMPTS))}
    rotations = moved = 0
    last = None
    for _ in range(2000):
        if not b.has_work():
            break
        res = b.step(16)
        for o in res.outputs:
            assert o.error is None, o.error
            tokens[o.request_id].extend(o.token_ids)
        rotations += res.kv_rotations
        moved += res.kv_bytes_rotated
        last = res.kv_blocks
    else:
        raise AssertionError("requests did not finish")
    return tokens, rotations, moved, last, b


@pytest.fixture()
def info(shm):
    return publish_tiny(shm, "kv", 3)


def test_rotate_and_recompute_keep_tokens_and_pools_return_to_full(info):
    expected, rotations, _, _, _ = serve(info, KVOptions())
    assert rotations == 0 and all(len(t) == 14 + i for i, t in enumerate(expected.values()))
    got, rotations, moved, last, b = serve(info, KVOptions(policy=KVPolicy.ROTATE, device_blocks=4, host_blocks=16))
    assert got == expected
    assert rotations >= 2 and moved > 0 and b.kv.rotor.rotations == rotations
    assert last == (0, 4, 0, 16)
    got, rotations, moved, last, b = serve(info, KVOptions(policy=KVPolicy.RECOMPUTE, device_blocks=4))
    assert got == expected and rotations == moved == 0 and b.kv.rotor.recomputes >= 1
    assert last == (0, 4, 0, 0)


def test_block_is_the_engines_own_schedule(info):
    expected, *_ = serve(info, KVOptions())
    got, rotations, moved, last, b = serve(info, KVOptions(device_blocks=4, host_blocks=16))
    assert got == expected and rotations == moved == 0 and b.kv.rotor is None
    assert last == (0, 4, 0, 16)


def test_rotate_without_a_host_pool_is_a_config_error():
    with pytest.raises(ConfigError, match="--kv-host-blocks"):
        KVOptions(policy=KVPolicy.ROTATE, device_blocks=4)
    with pytest.raises(ConfigError, match=">= 0"):
        KVOptions(host_blocks=-1)
