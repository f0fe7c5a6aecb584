"""Slice discovery: MIG UUIDs first, else whole GPUs, else CPU slices; a fake pynvml stands in for a GPU host."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest

from c2cq.supervisor import discover as disc
from c2cq.supervisor.discover import Slice, discover


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's own spelling
    pass


class NVMLError_NotFound(NVMLError):  # noqa: N801
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801
    pass


@dataclass
class FakeGPU:
    uuid: str
    mig_enabled: bool = False
    mig_slots: list[str | None] = field(default_factory=list)  # None: an empty slot (NVML says NotFound)
    mig_mode_unsupported: bool = False  # pre-Ampere GPUs raise NotSupported for the MIG mode query
    broken: bool = False  # a GPU NVML cannot open (lost, no permission)


def fake_pynvml(gpus: list[FakeGPU], *, no_library: bool = False, bytes_uuids: bool = False) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    m.NVMLError, m.NVMLError_LibraryNotFound = NVMLError, NVMLError_LibraryNotFound
    m.calls = {"init": 0, "shutdown": 0}

    def enc(s: str):
        return s.encode() if bytes_uuids else s

    def nvmlInit():
        if no_library:
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")
        m.calls["init"] += 1

    def nvmlShutdown():
        m.calls["shutdown"] += 1

    def nvmlDeviceGetHandleByIndex(i):
        if gpus[i].broken:
            raise NVMLError("GPU is lost")
        return ("gpu", i)

    def nvmlDeviceGetUUID(h):
        if h[0] == "gpu":
            return enc(gpus[h[1]].uuid)
        return enc(gpus[h[1]].mig_slots[h[2]])

    def nvmlDeviceGetMigMode(h):
        g = gpus[h[1]]
        if g.mig_mode_unsupported:
            raise NVMLError_NotSupported("Not Supported")
        return (1, 1) if g.mig_enabled else (0, 0)

    def nvmlDeviceGetMaxMigDeviceCount(h):
        return len(gpus[h[1]].mig_slots)

    def nvmlDeviceGetMigDeviceHandleByIndex(h, j):
        if gpus[h[1]].mig_slots[j] is None:
            raise NVMLError_NotFound("Not Found")
        return ("mig", h[1], j)

    m.nvmlInit, m.nvmlShutdown = nvmlInit, nvmlShutdown
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex, m.nvmlDeviceGetUUID = nvmlDeviceGetHandleByIndex, nvmlDeviceGetUUID
    m.nvmlDeviceGetMigMode, m.nvmlDeviceGetMaxMigDeviceCount = nvmlDeviceGetMigMode, nvmlDeviceGetMaxMigDeviceCount
    m.nvmlDeviceGetMigDeviceHandleByIndex = nvmlDeviceGetMigDeviceHandleByIndex
    return m


@pytest.fixture
def nvml(monkeypatch):
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)  # set in GPU containers: the fake decides here

    def install(*gpus: FakeGPU, **kw) -> types.ModuleType:
        m = fake_pynvml(list(gpus), **kw)
        monkeypatch.setitem(sys.modules, "pynvml", m)
        return m

    return install


MIG = [f"MIG-{i:08x}-aaaa-bbbb-cccc-dddddddddddd" for i in range(8)]


def cpu(n: int, kind: str = "cpu") -> list[Slice]:
    return [Slice(f"exec-{i}", kind, f"{kind}:{i}") for i in range(n)]


# ---- no GPU ------------------------------------------------------------------------------------


def test_no_pynvml_installed_gives_cpu_slices(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert discover(None, 3) == cpu(3)


def test_no_driver_gives_cpu_slices(nvml):
    m = nvml(no_library=True)
    assert discover(None, 2) == cpu(2)
    assert m.calls["shutdown"] == 0  # nothing to shut down when init failed


def test_the_real_pynvml_on_this_host():
    """Where NVML finds no GPU (this build machine), discovery falls back to CPU slices."""
    if disc.nvml_devices():
        pytest.skip("this host has GPUs visible to NVML")
    assert discover(None, 2) == cpu(2)


def test_cuda_asked_for_with_no_gpu_gives_nothing(nvml):
    nvml(no_library=True)
    assert discover("cuda", 4) == []


@pytest.mark.parametrize("kind", ["cpu", "sim"])
def test_an_explicit_cpu_or_sim_backend_never_touches_nvml(nvml, kind):
    m = nvml(FakeGPU("GPU-0"))
    assert discover(kind, 3) == cpu(3, kind)
    assert m.calls["init"] == 0


# ---- MIG -------------------------------------------------------------------------------------


def test_one_executor_per_mig_uuid_across_gpus(nvml):
    m = nvml(FakeGPU("GPU-a", mig_enabled=True, mig_slots=[MIG[0], None, MIG[1], None, None, MIG[2], None]),
             FakeGPU("GPU-b", mig_enabled=True, mig_slots=[MIG[3], MIG[4]]))
    got = discover(None, 2)
    assert [s.executor_id for s in got] == [f"exec-{i}" for i in range(5)]
    assert all(s.backend == "cuda" for s in got)
    assert [s.device for s in got] == MIG[:5]
    assert [dict(s.env) for s in got] == [{"CUDA_VISIBLE_DEVICES": u} for u in MIG[:5]]
    assert m.calls == {"init": 1, "shutdown": 1}


def test_mig_and_whole_gpus_mixed_and_bytes_uuids(nvml):
    nvml(FakeGPU("GPU-a", mig_enabled=True, mig_slots=[MIG[0], MIG[1]]), FakeGPU("GPU-b"),
         FakeGPU("GPU-c", mig_mode_unsupported=True), bytes_uuids=True)
    got = discover("cuda", 1, per_gpu=1)
    assert [(s.executor_id, s.device, dict(s.env)["CUDA_VISIBLE_DEVICES"]) for s in got] == [
        ("exec-0", MIG[0], MIG[0]), ("exec-1", MIG[1], MIG[1]), ("exec-2", "GPU-b", "GPU-b"),
        ("exec-3", "GPU-c", "GPU-c")]
    assert all(isinstance(s.device, str) for s in got)


# ---- whole GPUs --------------------------------------------------------------------------------


def test_whole_gpus_one_executor_each(nvml):
    nvml(FakeGPU("GPU-a"), FakeGPU("GPU-b"))
    got = discover(None, 7)
    assert [(s.executor_id, s.backend, s.device, s.env) for s in got] == [
        ("exec-0", "cuda", "GPU-a", (("CUDA_VISIBLE_DEVICES", "GPU-a"),)),
        ("exec-1", "cuda", "GPU-b", (("CUDA_VISIBLE_DEVICES", "GPU-b"),))]


def test_several_executors_per_gpu_stand_in_for_mig(nvml):
    nvml(FakeGPU("GPU-a"), FakeGPU("GPU-b"))
    got = discover(None, 1, per_gpu=3)
    assert [s.executor_id for s in got] == [f"exec-{i}" for i in range(6)]
    assert [s.device for s in got] == ["GPU-a"] * 3 + ["GPU-b"] * 3


def test_a_mig_enabled_gpu_without_instances_is_not_used_whole(nvml):
    """With MIG on, CUDA runs only on MIG devices: CUDA_VISIBLE_DEVICES=GPU-… would show the executor no device."""
    nvml(FakeGPU("GPU-a", mig_enabled=True, mig_slots=[None] * 7), FakeGPU("GPU-b"))
    got = discover(None, 2)
    assert [s.device for s in got] == ["GPU-b"]


def test_a_gpu_nvml_cannot_open_is_skipped_not_fatal(nvml):
    m = nvml(FakeGPU("GPU-a", broken=True), FakeGPU("GPU-b"))
    assert [s.device for s in discover(None, 2)] == ["GPU-b"]
    assert m.calls["shutdown"] == 1
