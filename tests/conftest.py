"""Shared fixtures: a per-test C2CQ_HOME, and an instance started with `c2cq up --detach`."""

from __future__ import annotations

from pathlib import Path

import pytest

from c2cq.testing import Instance

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def home(tmp_path_factory) -> Path:
    # short paths keep ipc socket names well under the 107-byte limit
    h = Path(tmp_path_factory.mktemp("h", numbered=True))
    yield h


@pytest.fixture
def sim_instance(home):
    """A running sim instance with 4 slices and 6 simulated models; torn down and checked clean."""
    inst = Instance(home, slices=4, backend="sim")
    inst.cli("models", "add-sim", "--count", "6")
    inst.up()
    try:
        yield inst
    finally:
        inst.teardown()
