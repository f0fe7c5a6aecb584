"""Page-locking a published model file for the GPU: the shared mapping becomes device-visible memory.

``cuMemHostRegister`` pins the mapping's pages and maps them into the GPU's address space. They are
the pages of the file in /dev/shm that every executor on the host shares: nothing is copied, and
the process's private memory does not grow. HybridGEMM then reads host rows over the link inside
its launch, and copies from the mapping into HBM are asynchronous DMA.

Registration goes through the driver API (libcuda, by ctypes): a failed driver call is only a
return code, whereas a failed runtime call (``torch.cuda.cudart().cudaHostRegister``) leaves a
pending error behind that torch's next kernel-launch check would report as its own.

The catalog's mapping is read-only (PROT_READ), so it is registered with
CU_MEMHOSTREGISTER_READ_ONLY. Where the device or driver refuses that flag, the file is mapped a
second time, shared and writable (the same page-cache pages, still no copy), and that mapping is
registered; nothing ever writes through it.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
import warnings
from pathlib import Path
from typing import Protocol

import torch

from c2cq.errors import C2CQError
from c2cq.services.catalog.layout import ITEMSIZE, ModelFile, torch_dtype
from c2cq.services.catalog.shm import map_shared

# CU_MEMHOSTREGISTER_* (cuda.h); the runtime's cudaHostRegister* flags have the same values.
PORTABLE = 0x01
DEVICEMAP = 0x02
READ_ONLY = 0x08
CUDA_SUCCESS = 0


class PinError(C2CQError):
    """A model file could not be registered with (or unregistered from) the GPU."""

    code = "bad_model"


class Driver(Protocol):
    """The three driver calls a PinnedFile needs (a fake stands in for it in CPU-only tests)."""

    def register(self, ptr: int, size: int, flags: int) -> int: ...
    def unregister(self, ptr: int) -> int: ...
    def error(self, code: int) -> str: ...


class CudaDriver:
    """cuMemHostRegister / cuMemHostUnregister through libcuda.so.1, on the primary context of one device."""

    def __init__(self, device_index: int) -> None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise PinError(f"cannot load the CUDA driver library libcuda.so.1: {e}") from e
        c_int_p, c_void_pp = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_void_p)
        for fn, args in (("cuMemHostRegister_v2", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]),
                         ("cuMemHostUnregister", [ctypes.c_void_p]),
                         ("cuDeviceGet", [c_int_p, ctypes.c_int]),
                         ("cuCtxGetCurrent", [c_void_pp]),
                         ("cuCtxSetCurrent", [ctypes.c_void_p]),
                         ("cuDevicePrimaryCtxRetain", [c_void_pp, ctypes.c_int]),
                         ("cuGetErrorName", [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)])):
            getattr(lib, fn).argtypes = args
            getattr(lib, fn).restype = ctypes.c_int
        self._lib = lib
        dev = ctypes.c_int()
        self._check(lib.cuDeviceGet(ctypes.byref(dev), device_index), f"cuDeviceGet({device_index})")
        self._dev = dev.value
        self._primary: ctypes.c_void_p | None = None

    def _check(self, res: int, what: str) -> None:
        if res != CUDA_SUCCESS:
            raise PinError(f"{what} failed: {self.error(res)}")

    def error(self, code: int) -> str:
        name = ctypes.c_char_p()
        if self._lib.cuGetErrorName(code, ctypes.byref(name)) == CUDA_SUCCESS and name.value:
            return f"{name.value.decode()} ({code})"
        return f"CUresult {code}"

    def _ensure_context(self) -> None:
        """Make the device's primary context (the one torch's runtime uses) current on this thread."""
        ctx = ctypes.c_void_p()
        self._check(self._lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        if ctx.value:
            return
        if self._primary is None:
            primary = ctypes.c_void_p()
            self._check(self._lib.cuDevicePrimaryCtxRetain(ctypes.byref(primary), self._dev),
                        "cuDevicePrimaryCtxRetain")
            self._primary = primary  # retained for the process's life, as the runtime does
        self._check(self._lib.cuCtxSetCurrent(self._primary), "cuCtxSetCurrent")

    def register(self, ptr: int, size: int, flags: int) -> int:
        self._ensure_context()
        return self._lib.cuMemHostRegister_v2(ptr, size, flags)

    def unregister(self, ptr: int) -> int:
        self._ensure_context()
        return self._lib.cuMemHostUnregister(ptr)


def _base_address(mf: ModelFile) -> int:
    """Address of the start of ``mf``'s mapping (tensor views sit at their file offsets inside it)."""
    for e in mf.index.tensors:
        if e.nbytes:
            return mf.tensor(e.name).data_ptr() - e.offset
    raise PinError(f"{mf.path}: the model file holds no tensor bytes")


class PinnedFile:
    """A published model file, mapped once and registered with the GPU until ``close()``."""

    def __init__(self, path: str | os.PathLike[str], driver: Driver) -> None:
        self.path = Path(path)
        self.file = map_shared(self.path)
        # the mapping's whole pages (its tail page past the file's end is mapped too)
        self.size = -(-self.file.size // mmap.PAGESIZE) * mmap.PAGESIZE
        self.inode = os.stat(self.path).st_ino
        self._driver = driver
        self._mm: mmap.mmap | None = None  # the writable mapping, when read-only registration is refused
        t0 = time.perf_counter()
        try:
            ptr = _base_address(self.file)
            res = driver.register(ptr, self.size, PORTABLE | DEVICEMAP | READ_ONLY)
            self.read_only = res == CUDA_SUCCESS
            if not self.read_only:
                refused = driver.error(res)
                self._mm, ptr = self._map_writable()
                res = driver.register(ptr, self.size, PORTABLE | DEVICEMAP)
                if res != CUDA_SUCCESS:
                    raise PinError(f"cannot register {self.path} ({self.size} bytes) with the GPU: read-only "
                                   f"mapping: {refused}; writable mapping: {driver.error(res)}")
        except BaseException:
            self._unmap()
            raise
        self.ptr = ptr
        self.register_s = time.perf_counter() - t0

    def _map_writable(self) -> tuple[mmap.mmap, int]:
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError as e:
            raise PinError(f"the GPU refused a read-only registration of {self.path}, and it cannot be "
                           f"opened for a writable shared mapping: {e.strerror}") from e
        try:
            mm = mmap.mmap(fd, self.file.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        probe = torch.frombuffer(mm, dtype=torch.uint8, count=1)
        ptr = probe.data_ptr()
        del probe
        return mm, ptr

    @property
    def config(self) -> dict:
        return self.file.config

    @property
    def tokenizer_json(self) -> bytes | None:
        return self.file.tokenizer_json

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor as a zero-copy CPU view of the registered mapping."""
        if self.ptr == 0:
            raise PinError(f"{self.path} is no longer registered")
        if self._mm is None:
            return self.file.tensors()
        out = {}
        for e in self.file.index.tensors:
            dtype = torch_dtype(e.dtype)
            if e.nbytes == 0:
                out[e.name] = torch.empty(e.shape, dtype=dtype)
                continue
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given buffer is not writable")
                flat = torch.frombuffer(self._mm, dtype=dtype, count=e.nbytes // ITEMSIZE[e.dtype], offset=e.offset)
            out[e.name] = flat.view(e.shape)
        return out

    def close(self) -> None:
        """Unregister and unmap. The caller makes sure no GPU work still reads the mapping (synchronize)."""
        if self.ptr:
            res = self._driver.unregister(self.ptr)
            self.ptr = 0
            if res != CUDA_SUCCESS:
                self._unmap()
                raise PinError(f"cannot unregister {self.path}: {self._driver.error(res)}")
        self._unmap()

    def _unmap(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # tensor views still reference it; it is unmapped with the last of them
            self._mm = None
        self.file.__exit__(None, None, None)
