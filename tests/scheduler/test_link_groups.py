"""The supervisor tells each executor which host link it shares (C2CQ_LINK_GROUP → SliceReady.link_group)."""

from __future__ import annotations

from c2cq.supervisor import discover as disc
from c2cq.supervisor.discover import LINK_GROUP_ENV, discover

MIG = [f"MIG-{i:08x}-aaaa-bbbb-cccc-dddddddddddd" for i in range(3)]


def test_mig_slices_are_grouped_by_their_parent_gpu(monkeypatch):
    monkeypatch.setattr(disc, "nvml_devices", lambda: [("GPU-a", MIG[:2]), ("GPU-b", [MIG[2]])])
    got = discover(None, 2)
    assert [(s.device, s.link_group) for s in got] == [(MIG[0], "GPU-a"), (MIG[1], "GPU-a"), (MIG[2], "GPU-b")]
    assert dict(got[0].child_env()) == {"CUDA_VISIBLE_DEVICES": MIG[0], LINK_GROUP_ENV: "GPU-a"}


def test_executors_standing_in_for_mig_share_their_gpu(monkeypatch):
    monkeypatch.setattr(disc, "nvml_devices", lambda: [("GPU-a", []), ("GPU-b", [])])
    assert [s.link_group for s in discover("cuda", 1, per_gpu=2)] == ["GPU-a", "GPU-a", "GPU-b", "GPU-b"]


def test_cpu_slices_share_the_host_and_sim_slices_have_links_of_their_own(monkeypatch):
    monkeypatch.setattr(disc, "nvml_devices", lambda: [])
    assert {s.link_group for s in discover(None, 3)} == {"host"}
    sims = discover("sim", 3)
    assert [s.link_group for s in sims] == ["sim-gpu0", "sim-gpu1", "sim-gpu2"]
    assert dict(sims[2].child_env()) == {LINK_GROUP_ENV: "sim-gpu2"}
    monkeypatch.setattr(disc, "SIM_SLICES_PER_LINK", 7)
    assert [s.link_group for s in discover("sim", 9)] == ["sim-gpu0"] * 7 + ["sim-gpu1"] * 2


def test_the_executor_announces_the_group_it_was_given(monkeypatch):
    import asyncio

    from c2cq.rundir import RunDir
    from c2cq.services.executor import main as exmain
    from c2cq.services.executor.sim import SimBackend, SliceProfile

    sent = []

    async def go(tmp):
        ex = exmain.Executor(RunDir.from_env(str(tmp)), "exec-0", SimBackend(SliceProfile(), device="sim:0"),
                             link_group="GPU-x")
        ex.emit = lambda cls, **f: sent.append((cls, f))
        ex.announce()
        ex.close()

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(go(tmp))
    assert sent[0][1]["link_group"] == "GPU-x"
