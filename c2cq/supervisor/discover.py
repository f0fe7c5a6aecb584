"""Slice discovery: one executor per MIG UUID, else one per GPU, else N CPU slices."""

from __future__ import annotations

from dataclasses import dataclass, field

LINK_GROUP_ENV = "C2CQ_LINK_GROUP"  # the executor announces it in SliceReady.link_group
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

    def child_env(self) -> tuple[tuple[str, str], ...]:
        """The environment its executor process gets: ``env`` plus its link group."""
        return self.env if self.link_group is None else (*self.env, (LINK_GROUP_ENV, self.link_group))


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
    return [Slice(f"exec-{i}", kind, f"{kind}:{i}",
                  link_group="host" if kind == "cpu" else f"sim-gpu{i // SIM_SLICES_PER_LINK}")
            for i in range(slices)]
