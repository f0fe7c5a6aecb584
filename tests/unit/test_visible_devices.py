"""NVIDIA_VISIBLE_DEVICES → the slices a container runs (discover.visible_slices, a pure function of the
variable and what NVML sees), and the executor's one slice from it."""

from __future__ import annotations

import pytest

from c2cq.errors import ConfigError
from c2cq.supervisor import discover as disc
from c2cq.supervisor.discover import executor_slice, visible_slices

HOST = [("GPU-a", ["MIG-a0", "MIG-a1"]), ("GPU-b", []), ("GPU-c", ["MIG-c0"])]  # what NVML sees on the host


def targets(found):
    return None if found is None else [(s.device, s.link_group) for s in found]


def test_unset_or_empty_says_nothing_and_none_or_void_expose_nothing():
    for value in (None, "", "  "):
        assert visible_slices(value, HOST) is None
    for value in ("none", "void", " void "):
        assert visible_slices(value, HOST) == []


def test_all_is_every_slice_nvml_sees():
    assert targets(visible_slices("all", HOST)) == [("MIG-a0", "GPU-a"), ("MIG-a1", "GPU-a"), ("GPU-b", "GPU-b"),
                                                    ("MIG-c0", "GPU-c")]
    assert targets(visible_slices("all", [])) == []


def test_uuids_name_slices_and_a_gpu_with_mig_gives_its_instances():
    assert targets(visible_slices("MIG-a1", HOST)) == [("MIG-a1", "GPU-a")]
    assert targets(visible_slices("GPU-c,MIG-a0", HOST)) == [("MIG-c0", "GPU-c"), ("MIG-a0", "GPU-a")]
    assert targets(visible_slices("GPU-b", HOST, per_gpu=2)) == [("GPU-b", "GPU-b")] * 2
    found = visible_slices("MIG-a1", HOST)[0]
    assert found.env == (("CUDA_VISIBLE_DEVICES", "MIG-a1"),) and found.executor_id == "exec-0"
    assert dict(found.child_env())[disc.LINK_GROUP_ENV] == "GPU-a"


def test_a_uuid_nvml_does_not_know_still_makes_a_slice():
    assert targets(visible_slices("MIG-zz", [])) == [("MIG-zz", "MIG-zz")]  # no NVML in the container
    assert targets(visible_slices("GPU-zz", [])) == [("GPU-zz", "GPU-zz")]


def test_indexes_on_the_host_and_renumbered_in_a_container():
    assert targets(visible_slices("1", HOST)) == [("GPU-b", "GPU-b")]  # NVML sees every GPU: the host's index
    assert targets(visible_slices("2:0", HOST)) == [("MIG-c0", "GPU-c")]
    assert targets(visible_slices("0,1", HOST)) == [("MIG-a0", "GPU-a"), ("MIG-a1", "GPU-a"), ("GPU-b", "GPU-b")]
    container = [("GPU-c", ["MIG-c0"]), ("GPU-e", [])]  # host GPUs 2 and 4, seen as 0 and 1
    assert targets(visible_slices("4,2", container)) == [("GPU-e", "GPU-e"), ("MIG-c0", "GPU-c")]
    assert targets(visible_slices("2:0", [("GPU-c", ["MIG-c0"])])) == [("MIG-c0", "GPU-c")]
    assert targets(visible_slices("0,GPU-a", HOST)) == [("MIG-a0", "GPU-a"), ("MIG-a1", "GPU-a")]  # named twice: once


@pytest.mark.parametrize("value, message", [("7", "not among"), ("1:0", "no MIG device"), ("0", "not among"),
                                            ("cuda:0", "cannot read"), ("MIG-a0,,gpu0", "cannot read")])
def test_what_cannot_be_resolved_is_a_config_error(value, message):
    gpus = [] if value == "0" else HOST
    with pytest.raises(ConfigError, match=message):
        visible_slices(value, gpus)


def test_the_executor_takes_its_slice_from_the_variable_else_nvml():
    assert executor_slice({"NVIDIA_VISIBLE_DEVICES": "MIG-c0"}, lambda: HOST).device == "MIG-c0"
    assert executor_slice({}, lambda: HOST).device == "MIG-a0"  # NVML, the fallback
    for env, gpus in (({"NVIDIA_VISIBLE_DEVICES": "void"}, HOST), ({}, [])):
        with pytest.raises(ConfigError, match="no GPU slice visible"):
            executor_slice(env, lambda g=gpus: g)


def test_discover_honours_the_variable(monkeypatch):
    monkeypatch.setattr(disc, "nvml_devices", lambda: HOST)
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "MIG-a1,GPU-b")
    assert [s.device for s in disc.discover(None, 2)] == ["MIG-a1", "GPU-b"]
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "none")  # no GPU for this container: CPU slices
    assert [s.backend for s in disc.discover(None, 2)] == ["cpu", "cpu"]
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES")
    assert len(disc.discover(None, 2)) == 4
