"""Slice discovery: one executor per MIG UUID, else one per GPU, else N CPU slices."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

LINK_GROUP_ENV = "C2CQ_LINK_GROUP"  # the executor announces it in SliceReady.link_group
CORES_ENV = "C2CQ_CPU_CORES"  # a CPU slice's share of the host's cores ("0,1"): it pins itself to them
# sim executor processes each simulate a link of their own (SimBackend shares no bandwidth with
# another process), so each is its own group: grouping them would make the controller fit a
# shared capacity that does not exist. (The discrete-event simulator models shared links itself.)
SIM_SLICES_PER_LINK = 1


@dataclass(frozen=True, slots=True)
class Slice:
    executor_id: str
    backend: str  # cpu | cuda | sim
    device: str
    env: tuple[tuple[str, str], ...] = ()  # e.g. (("CUDA_VISIBLE_DEVICES", "MIG-…"),)
    # the slices that share one host link: the parent GPU's UUID (MIG slices, or executors standing
    # in for them), "host" for CPU slices. Where the slice sits, not what it is: not compared.
    link_group: str | None = field(default=None, compare=False)
    cores: tuple[int, ...] = field(default=(), compare=False)  # a CPU slice's cores (none of another's)

    def child_env(self) -> tuple[tuple[str, str], ...]:
        """The environment its executor process gets: ``env`` plus its link group, and for a CPU slice its
        cores and OpenMP's settings for them (read when torch loads: as many threads as cores, threads
        that sleep rather than spin between parallel regions: spinning threads of one slice stole the
        cores of the others, 5-10x outliers in 2-thread runs here)."""
        env = self.env if self.link_group is None else (*self.env, (LINK_GROUP_ENV, self.link_group))
        if self.cores:
            env = (*env, (CORES_ENV, ",".join(map(str, self.cores))), ("OMP_NUM_THREADS", str(len(self.cores))),
                   ("OMP_WAIT_POLICY", "PASSIVE"))
        return env


def split_cores(cores: list[int], slices: int) -> list[tuple[int, ...]]:
    """Each of ``slices`` slices' cores: contiguous runs of the sorted cores, as equal as they divide (the
    first ones get one more); with fewer cores than slices, slices share a core round robin."""
    cores = sorted(cores)
    if not cores or slices <= 0:
        return [() for _ in range(max(slices, 0))]
    if len(cores) < slices:
        return [(cores[i % len(cores)],) for i in range(slices)]
    base, extra = divmod(len(cores), slices)
    out, at = [], 0
    for i in range(slices):
        n = base + (1 if i < extra else 0)
        out.append(tuple(cores[at:at + n]))
        at += n
    return out


def host_cores() -> list[int]:
    """The cores this process may run on (its affinity), else all the host's."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def nvml_devices() -> list[tuple[str, list[str]]]:
    """[(gpu uuid, [mig uuids])] through pynvml; [] when there is no driver or no GPU."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []  # NVMLError_LibraryNotFound / DriverNotLoaded: no GPU here
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            try:
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                uuid = pynvml.nvmlDeviceGetUUID(h)
            except pynvml.NVMLError:
                continue  # a GPU NVML cannot open (lost, no permission) is left out, not fatal
            migs = []
            try:
                current, _ = pynvml.nvmlDeviceGetMigMode(h)
            except pynvml.NVMLError:
                current = 0
            if current:
                for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
                    try:
                        migs.append(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)))
                    except pynvml.NVMLError:
                        continue
                if not migs:
                    continue  # MIG on but no instances: CUDA can run nothing on this GPU
            out.append((uuid if isinstance(uuid, str) else uuid.decode(), [
                u if isinstance(u, str) else u.decode() for u in migs]))
        return out
    finally:
        pynvml.nvmlShutdown()


def discover(backend: str | None, slices: int, per_gpu: int = 1) -> list[Slice]:
    """The executors to start. ``backend`` None: cuda where GPUs exist, else cpu."""
    if backend in (None, "cuda"):
        gpus = nvml_devices()
        found: list[Slice] = []
        for g, (uuid, migs) in enumerate(gpus):
            for target in migs or [uuid] * per_gpu:  # several executors stand in for MIG slices
                i = len(found)
                found.append(Slice(f"exec-{i}", "cuda", target, (("CUDA_VISIBLE_DEVICES", target),), link_group=uuid))
        if found:
            return found
        if backend == "cuda":
            return []
    kind = backend or "cpu"
    shares = split_cores(host_cores(), slices) if kind == "cpu" else [() for _ in range(slices)]
    return [Slice(f"exec-{i}", kind, f"{kind}:{i}",
                  link_group="host" if kind == "cpu" else f"sim-gpu{i // SIM_SLICES_PER_LINK}", cores=shares[i])
            for i in range(slices)]
