"""Publishing into /dev/shm and zero-copy mapping: no memory until touched, the same pages in every process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from c2cq.errors import ConfigError
from c2cq.services.catalog.fs import drop_page_cache, huge_page_size_of
from c2cq.services.catalog.layout import ModelFileError, read_layout
from c2cq.services.catalog.modelwrite import write_model_file
from c2cq.services.catalog.shm import STAGED, is_staged, map_shared, publish, staged_path, sweep, unpublish

MiB = 1 << 20

MAPPER = r"""
import json, sys
import torch  # imported by the first tensors() call otherwise: its memory is not the mapping's
from c2cq.services.catalog.shm import map_shared

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def shared():
    total = 0
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith(("Shared_Clean:", "Shared_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total

before = status("VmRSS")
mf = map_shared(sys.argv[1])
tensors = mf.tensors()
mapped = status("VmRSS")
checksum = sum(float(t.double().sum()) for t in tensors.values())  # reads every page
touched = status("VmRSS")
print(json.dumps({"before": before, "mapped": mapped, "touched": touched, "shared": shared(),
                  "checksum": checksum}), flush=True)
sys.stdin.read()  # keep the mapping until the test closes our stdin
"""


@pytest.fixture
def shm_dir():
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    path = Path("/dev/shm") / f"c2cq-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _model(path: Path, tensors: int, elements: int, seed: int = 0) -> float:
    """Write a model file of ``tensors`` fp32 tensors; return the sum of all values."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(elements, dtype=np.float32) for _ in range(tensors)]
    specs = [(f"model.layers.{i}.mlp.up_proj.weight", "fp32", (elements,)) for i in range(tensors)]
    write_model_file(path, specs, arrays, {"config": {}}, progress=False)
    return float(sum(a.astype(np.float64).sum() for a in arrays))


def _start_mapper(path: Path) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-c", MAPPER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # blocks until the child has mapped and touched everything
    if not line:
        proc.wait(timeout=60)
        pytest.fail(f"mapper exited with {proc.returncode}")
    return proc, json.loads(line)


def test_mapping_costs_no_memory_until_touched_and_pages_are_shared(shm_dir):
    src = shm_dir / "big.c2cqm"
    expected_sum = _model(src, tensors=50, elements=MiB)  # 200 MiB of weights
    size = src.stat().st_size
    first, a = _start_mapper(src)
    try:
        second, b = _start_mapper(src)
        second.communicate("", timeout=60)
    finally:
        first.communicate("", timeout=60)
    for r in (a, b):
        # both summed the same bytes (float64 accumulation of fp32 values: order differences stay ~1e-9 relative)
        assert r["checksum"] == pytest.approx(expected_sum, rel=1e-9, abs=1e-6)
        # mapping adds the index and 50 tensor objects, not the 200 MiB behind them
        assert r["mapped"] - r["before"] < 16 * MiB
        # reading every tensor brings the file's pages into the process: at least 90% of the file
        assert r["touched"] - r["before"] > 0.9 * size
    # while the first process still holds its mapping, the second one's pages are shared with it
    assert b["shared"] > 0.9 * size


def test_publish_links_on_the_same_filesystem_and_copies_across(shm_dir, tmp_path):
    same_fs = shm_dir / "staging"
    same_fs.mkdir()
    out = shm_dir / "published"
    out.mkdir()
    _model(same_fs / "a.c2cqm", tensors=3, elements=1000)
    linked = publish(same_fs / "a.c2cqm", out, "model-a")
    assert linked == out / "model-a.c2cqm"
    assert linked.stat().st_ino == (same_fs / "a.c2cqm").stat().st_ino

    _model(tmp_path / "b.c2cqm", tensors=3, elements=1000, seed=1)
    if (tmp_path / "b.c2cqm").stat().st_dev == out.stat().st_dev:
        pytest.skip("tmp_path is on the shm filesystem; cannot exercise the copy path")
    copied = publish(tmp_path / "b.c2cqm", out, "model-b")
    assert copied.stat().st_ino != (tmp_path / "b.c2cqm").stat().st_ino
    ref, got = read_layout(tmp_path / "b.c2cqm"), map_shared(copied)
    assert got.index == ref.index
    assert all(torch.equal(got.tensor(n), ref.tensor(n)) for n in ref.entries)
    assert sorted(p.name for p in out.iterdir()) == ["model-a.c2cqm", "model-b.c2cqm"]


def test_publish_is_idempotent_and_replaces_other_content(shm_dir, tmp_path):
    _model(tmp_path / "a.c2cqm", tensors=2, elements=100, seed=1)
    _model(tmp_path / "b.c2cqm", tensors=2, elements=100, seed=2)
    first = publish(tmp_path / "a.c2cqm", shm_dir, "m")
    assert publish(tmp_path / "a.c2cqm", shm_dir, "m") == first
    assert map_shared(first).index.checksum == read_layout(tmp_path / "a.c2cqm").index.checksum
    publish(tmp_path / "b.c2cqm", shm_dir, "m")
    assert map_shared(first).index.checksum == read_layout(tmp_path / "b.c2cqm").index.checksum
    assert [p.name for p in shm_dir.iterdir()] == ["m.c2cqm"]


def test_unpublish_and_bad_input(shm_dir, tmp_path):
    _model(tmp_path / "a.c2cqm", tensors=1, elements=10)
    publish(tmp_path / "a.c2cqm", shm_dir, "m")
    assert unpublish(shm_dir, "m") is True
    assert unpublish(shm_dir, "m") is False
    for bad in ("../etc", "a/b", "", ".hidden"):
        with pytest.raises(ConfigError):
            publish(tmp_path / "a.c2cqm", shm_dir, bad)
    (tmp_path / "junk.c2cqm").write_bytes(b"not a model" * 1000)
    with pytest.raises(ModelFileError):
        publish(tmp_path / "junk.c2cqm", shm_dir, "junk")
    assert list(shm_dir.iterdir()) == []


def test_a_staged_copy_is_moved_into_place(shm_dir, tmp_path):
    _model(tmp_path / "a.c2cqm", tensors=2, elements=100, seed=1)
    staged = staged_path(shm_dir, "m")
    shutil.copyfile(tmp_path / "a.c2cqm", staged)
    inode = staged.stat().st_ino
    assert is_staged(shm_dir, staged)
    dst = publish(tmp_path / "a.c2cqm", shm_dir, "m", staged)
    assert dst.stat().st_ino == inode  # renamed, not copied
    assert [p.name for p in shm_dir.iterdir()] == ["m.c2cqm"]


def test_a_staged_copy_with_other_content_is_dropped(shm_dir, tmp_path):
    _model(tmp_path / "a.c2cqm", tensors=2, elements=100, seed=1)
    _model(tmp_path / "b.c2cqm", tensors=2, elements=100, seed=2)
    staged = staged_path(shm_dir, "m")
    shutil.copyfile(tmp_path / "b.c2cqm", staged)
    dst = publish(tmp_path / "a.c2cqm", shm_dir, "m", staged)
    assert map_shared(dst).index.checksum == read_layout(tmp_path / "a.c2cqm").index.checksum
    assert [p.name for p in shm_dir.iterdir()] == ["m.c2cqm"]
    staged.write_bytes(b"junk" * 100)  # unreadable: dropped too, published from the model file
    dst.unlink()
    publish(tmp_path / "a.c2cqm", shm_dir, "m", staged)
    assert [p.name for p in shm_dir.iterdir()] == ["m.c2cqm"]


def test_only_regular_staged_files_in_the_folder_count(shm_dir, tmp_path):
    _model(tmp_path / "a.c2cqm", tensors=1, elements=10)
    outside = tmp_path / f"{STAGED}1-m.c2cqm"
    shutil.copyfile(tmp_path / "a.c2cqm", outside)
    link = shm_dir / f"{STAGED}2-m.c2cqm"
    link.symlink_to(outside)
    assert not is_staged(shm_dir, outside)  # elsewhere
    assert not is_staged(shm_dir, link)  # a link
    assert not is_staged(shm_dir, shm_dir / "m.c2cqm")  # not a staged name
    assert not is_staged(shm_dir, shm_dir / f"{STAGED}\0x")
    (shm_dir / f"{STAGED}3-m.c2cqm.tmp-9").write_bytes(b"x")
    (shm_dir / "m.c2cqm.tmp-9").write_bytes(b"x")
    publish(tmp_path / "a.c2cqm", shm_dir, "m")
    assert sorted(sweep(shm_dir)) == [f"{STAGED}2-m.c2cqm", f"{STAGED}3-m.c2cqm.tmp-9", "m.c2cqm.tmp-9"]
    assert [p.name for p in shm_dir.iterdir()] == ["m.c2cqm"] and outside.exists()


def test_publish_into_huge_pages(huge_dir, tmp_path):
    """hugetlbfs takes no write(2) and sizes files in whole huge pages: the file is read into a mapping,
    padded, and still opens as the same model (its logical size), shared and bit-identical."""
    _model(tmp_path / "a.c2cqm", tensors=3, elements=300_000, seed=3)
    page = huge_page_size_of(huge_dir)
    dst = publish(tmp_path / "a.c2cqm", huge_dir, "m")
    logical = (tmp_path / "a.c2cqm").stat().st_size
    assert dst.stat().st_size % page == 0 and logical < dst.stat().st_size
    ref, got = read_layout(tmp_path / "a.c2cqm"), map_shared(dst)
    assert got.size == logical and got.index == ref.index
    assert all(torch.equal(got.tensor(n), ref.tensor(n)) for n in ref.entries)
    got.verify()
    assert publish(tmp_path / "a.c2cqm", huge_dir, "m") == dst  # idempotent: the padded copy is the same model
    assert [p.name for p in huge_dir.iterdir()] == ["m.c2cqm"]


def test_padding_is_refused_off_hugetlbfs(tmp_path):
    _model(tmp_path / "a.c2cqm", tensors=1, elements=10)
    with open(tmp_path / "a.c2cqm", "ab") as f:
        f.write(b"\0" * 4096)
    with pytest.raises(ModelFileError, match="padded"):
        read_layout(tmp_path / "a.c2cqm")


def test_publish_into_a_folder_on_disk_copies_with_sendfile(shm_dir, tmp_path):
    """A shm root that is no memory filesystem (a disk folder, say) gets a plain in-kernel copy."""
    _model(shm_dir / "a.c2cqm", tensors=2, elements=5000, seed=4)
    out = tmp_path / "out"
    out.mkdir()
    if out.stat().st_dev == shm_dir.stat().st_dev:
        pytest.skip("tmp_path is on the shm filesystem")
    dst = publish(shm_dir / "a.c2cqm", out, "m")
    assert dst.read_bytes() == (shm_dir / "a.c2cqm").read_bytes()
    assert [p.name for p in out.iterdir()] == ["m.c2cqm"]


@pytest.mark.parametrize("into", ["tmpfs", "hugetlbfs"])
def test_a_copy_into_a_mapping_in_many_chunks(shm_dir, tmp_path, request, monkeypatch, into):
    """The copy into a mapping reads chunk after chunk on two threads, O_DIRECT from a cold source:
    with 12 KiB chunks a small model file spans dozens, and arrives whole."""
    from c2cq.services.catalog import shm

    dest = shm_dir if into == "tmpfs" else request.getfixturevalue("huge_dir")
    monkeypatch.setattr(shm, "READ_CHUNK", 12 << 10)
    _model(tmp_path / "a.c2cqm", tensors=3, elements=50_001, seed=5)
    drop_page_cache(tmp_path / "a.c2cqm")
    dst = publish(tmp_path / "a.c2cqm", dest, "m")
    want = (tmp_path / "a.c2cqm").read_bytes()
    got = dst.read_bytes()
    assert got[:len(want)] == want and not got[len(want):].strip(b"\0")  # hugetlbfs: zero padding after
    map_shared(dst).verify()


def _mapped_rss(path: Path) -> int:
    """Resident bytes of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(head[1]) * 1024
    return total


def test_prefetch_fills_the_page_tables_front_to_back_and_stops_when_told(shm_dir, tmp_path):
    import threading

    from c2cq.services.catalog.shm import prefetch

    _model(tmp_path / "a.c2cqm", tensors=4, elements=2_000_000, seed=6)  # 32 MB
    path = publish(tmp_path / "a.c2cqm", shm_dir, "m")
    stopped = map_shared(path)
    stop = threading.Event()
    stop.set()
    prefetch(stopped, stop).join()
    assert _mapped_rss(path) < 1 * MiB  # told to stop before it began: nothing filled
    mf = map_shared(path)
    prefetch(mf, threading.Event()).join()
    assert _mapped_rss(path) > 0.95 * path.stat().st_size  # every page of the data mapped
    mf.verify()
