"""GPU tests of the cuda executor backend: skipped, with the reason, where torch sees no CUDA device.

Without CUDA, TRITON_INTERPRET is set before anything imports triton (as tests/kernels does), so
collecting this folder first leaves the kernel tests' interpreter setting intact.
"""

from __future__ import annotations

import os
import sys

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REASON = (f"needs a CUDA device: torch {torch.__version__} sees none (torch.cuda.is_available() is False); "
          "run `bash bench/gpu_all.sh` on a GPU host")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason=REASON)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
