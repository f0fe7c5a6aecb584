"""CPU slices split the host's cores between them and say so: no core is two slices' (no oversubscription)."""

from __future__ import annotations

import pytest

from c2cq.errors import ConfigError
from c2cq.services.executor.cpu import format_cores, slice_cores
from c2cq.supervisor import discover as disc
from c2cq.supervisor.discover import CORES_ENV, split_cores


@pytest.mark.parametrize("cores,slices,expected", [
    ([0, 1], 2, [(0,), (1,)]),
    ([0, 1, 2, 3, 4, 5, 6, 7], 2, [(0, 1, 2, 3), (4, 5, 6, 7)]),
    ([3, 0, 2, 1, 4], 2, [(0, 1, 2), (3, 4)]),  # sorted, the first gets the extra core
    ([0, 1, 2], 3, [(0,), (1,), (2,)]),
    ([0, 1], 3, [(0,), (1,), (0,)]),  # fewer cores than slices: shared round robin, none left without one
])
def test_cores_split_between_slices(cores, slices, expected):
    got = split_cores(cores, slices)
    assert got == expected
    if len(cores) >= slices:
        flat = [c for share in got for c in share]
        assert sorted(flat) == sorted(cores) and len(flat) == len(set(flat))


def test_cpu_slices_carry_their_cores_and_openmp_settings(monkeypatch):
    monkeypatch.setattr(disc, "host_cores", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(disc, "nvml_devices", lambda: [])
    slices = disc.discover("cpu", 2)
    envs = [dict(s.child_env()) for s in slices]
    assert [e[CORES_ENV] for e in envs] == ["0,1", "2,3"]
    assert all(e["OMP_NUM_THREADS"] == "2" and e["OMP_WAIT_POLICY"] == "PASSIVE" for e in envs)
    assert all(CORES_ENV not in dict(s.child_env()) for s in disc.discover("sim", 2))


def test_cores_env_parsed_and_shown(monkeypatch):
    monkeypatch.setenv(CORES_ENV, "4,5,6,9")
    assert slice_cores() == (4, 5, 6, 9)
    assert format_cores((4, 5, 6, 9)) == "4-6,9" and format_cores((0,)) == "0"
    monkeypatch.delenv(CORES_ENV)
    assert slice_cores() == ()
    monkeypatch.setenv(CORES_ENV, "0,x")
    with pytest.raises(ConfigError):
        slice_cores()
