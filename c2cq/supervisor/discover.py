"""Slice discovery: one executor per MIG UUID, else one per GPU, else N CPU slices.

In a container the NVIDIA runtime (and Kubernetes' device plugin) says which devices it exposes in
NVIDIA_VISIBLE_DEVICES; ``visible_slices`` reads it first, NVML being the fallback and the means to
resolve indexes and a GPU's MIG instances.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from c2cq.errors import ConfigError

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


VISIBLE_ENV = "NVIDIA_VISIBLE_DEVICES"
_INDEX = re.compile(r"\d+")
_MIG_INDEX = re.compile(r"(\d+):(\d+)")  # GPU index : MIG device index


def _cuda_slices(pairs: list[tuple[str, str]]) -> list[Slice]:
    """[(target device, its link group)] → numbered cuda slices."""
    return [Slice(f"exec-{i}", "cuda", t, (("CUDA_VISIBLE_DEVICES", t),), link_group=g) for i, (t, g) in enumerate(pairs)]


def _gpu_targets(uuid: str, migs: list[str], per_gpu: int) -> list[tuple[str, str]]:
    return [(t, uuid) for t in migs or [uuid] * per_gpu]  # several executors stand in for MIG slices


def _every_slice(gpus: list[tuple[str, list[str]]], per_gpu: int) -> list[Slice]:
    return _cuda_slices([p for uuid, migs in gpus for p in _gpu_targets(uuid, migs, per_gpu)])


def visible_slices(value: str | None, gpus: list[tuple[str, list[str]]], per_gpu: int = 1) -> list[Slice] | None:
    """The cuda slices NVIDIA_VISIBLE_DEVICES=``value`` exposes; ``gpus`` is what NVML sees
    ([(gpu uuid, [mig uuids])], [] without NVML). None: the variable says nothing (unset or
    empty), discover through NVML alone.

    ``void`` and ``none`` expose no device; ``all`` every one NVML sees. A list may mix ``MIG-…`` and
    ``GPU-…`` UUIDs (a GPU with MIG instances gives one slice per instance), GPU indexes and
    ``GPU:MIG`` index pairs. An index is the host's: inside a container NVML sees only the listed
    GPUs, renumbered from 0 in the host's order, so when it sees as many GPUs as the list names
    the n-th smallest index is NVML's n-th GPU. A UUID NVML does not know still makes a slice (its
    own link group); an index needs NVML, and an unreadable entry is a ConfigError.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value in ("void", "none"):
        return []
    if value == "all":
        return _every_slice(gpus, per_gpu)
    tokens = [t.strip() for t in value.split(",") if t.strip()]
    parent = {m: uuid for uuid, migs in gpus for m in migs}
    by_uuid = dict(gpus)
    host_gpus = sorted({int(m.group(1) if (m := _MIG_INDEX.fullmatch(t)) else t)
                        for t in tokens if _INDEX.fullmatch(t) or _MIG_INDEX.fullmatch(t)})
    renumbered = len(gpus) == len(host_gpus)  # the container's view: only the listed GPUs

    def gpu_at(host_index: int, token: str) -> tuple[str, list[str]]:
        i = host_gpus.index(host_index) if renumbered else host_index
        if not 0 <= i < len(gpus):
            raise ConfigError(f"{VISIBLE_ENV}={value!r}: device {token!r} is not among the {len(gpus)} GPUs NVML sees")
        return gpus[i]

    pairs: list[tuple[str, str]] = []
    for t in tokens:
        if t.startswith("MIG-"):
            pairs.append((t, parent.get(t, t)))
        elif t.startswith("GPU-"):
            pairs.extend(_gpu_targets(t, by_uuid.get(t, []), per_gpu))
        elif _INDEX.fullmatch(t):
            pairs.extend(_gpu_targets(*gpu_at(int(t), t), per_gpu))
        elif m := _MIG_INDEX.fullmatch(t):
            uuid, migs = gpu_at(int(m.group(1)), t)
            if not int(m.group(2)) < len(migs):
                raise ConfigError(f"{VISIBLE_ENV}={value!r}: GPU {uuid} has no MIG device {m.group(2)}")
            pairs.append((migs[int(m.group(2))], uuid))
        else:
            raise ConfigError(f"{VISIBLE_ENV}={value!r}: cannot read {t!r} (MIG-…, GPU-…, an index, GPU:MIG, "
                              "all, none or void)")
    return _cuda_slices(list(dict.fromkeys(pairs)) if per_gpu == 1 else pairs)


def cuda_slices(value: str | None, gpus: list[tuple[str, list[str]]], per_gpu: int = 1) -> list[Slice]:
    """The slices NVIDIA_VISIBLE_DEVICES=``value`` exposes or, where it says nothing, every one NVML sees."""
    found = visible_slices(value, gpus, per_gpu)
    return _every_slice(gpus, per_gpu) if found is None else found


def executor_slice(environ=os.environ, nvml=None) -> Slice:
    """The one slice an executor container runs on (a pod per MIG slice): from NVIDIA_VISIBLE_DEVICES,
    else the first NVML finds. ConfigError when there is none."""
    gpus = (nvml or nvml_devices)()
    found = cuda_slices(environ.get(VISIBLE_ENV), gpus)
    if not found:
        raise ConfigError(f"no GPU slice visible ({VISIBLE_ENV}={environ.get(VISIBLE_ENV)!r}, NVML sees {len(gpus)})")
    return found[0]


def discover(backend: str | None, slices: int, per_gpu: int = 1) -> list[Slice]:
    """The executors to start. ``backend`` None: cuda where GPUs exist, else cpu. In a container,
    NVIDIA_VISIBLE_DEVICES says which GPUs are ours (``visible_slices``)."""
    if backend in (None, "cuda"):
        found = cuda_slices(os.environ.get(VISIBLE_ENV), nvml_devices(), per_gpu)
        if found:
            return found
        if backend == "cuda":
            return []
    kind = backend or "cpu"
    shares = split_cores(host_cores(), slices) if kind == "cpu" else [() for _ in range(slices)]
    return [Slice(f"exec-{i}", kind, f"{kind}:{i}",
                  link_group="host" if kind == "cpu" else f"sim-gpu{i // SIM_SLICES_PER_LINK}", cores=shares[i])
            for i in range(slices)]
