"""The copy behind convert_hf, path by path: cold sources (O_DIRECT) and cached ones, into a disk folder
and into tmpfs, tensors split into many pieces (CRCs combined), and the tee (a second, identical copy).

The fixture's checkpoints are tiny; PIECE is shrunk so that most tensors span several pieces and a
piece rarely starts on a 4 KiB boundary of its shard.
"""

from __future__ import annotations

import filecmp
import os
import random
import tempfile
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from c2cq.services.catalog import modelwrite, shardcopy, shm
from c2cq.services.catalog.convert import convert_hf
from c2cq.services.catalog.fs import drop_page_cache, huge_page_size_of
from c2cq.services.catalog.layout import read_layout


@pytest.fixture
def shm_dir():
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="c2cq-test-") as d:
        yield Path(d)


def _drop_from_page_cache(folder: Path) -> None:
    for shard in folder.glob("*.safetensors"):
        drop_page_cache(shard)


def _read_into_page_cache(folder: Path) -> None:
    for shard in folder.glob("*.safetensors"):
        shard.read_bytes()


def _assert_same_tensors(model_file: Path, src: Path) -> None:
    expected: dict[str, torch.Tensor] = {}
    for shard in src.glob("*.safetensors"):
        expected.update(load_file(shard))
    with read_layout(model_file) as mf:
        mf.verify()  # every tensor's CRC32 against its bytes
        got = mf.tensors()
        assert set(got) == set(expected)
        for name, ref in expected.items():
            assert torch.equal(got[name].view(torch.uint8), ref.contiguous().view(torch.uint8)), name
        del got


@pytest.mark.parametrize("state", ["cold", "cached"])
@pytest.mark.parametrize("into", ["disk", "tmpfs"])
def test_every_copy_path_gives_the_source_bytes(make_hf_dir, tmp_path, shm_dir, monkeypatch, state, into):
    src = make_hf_dir("mixtral", torch.bfloat16, "40KB")
    monkeypatch.setattr(shardcopy, "PIECE", 12 << 10)  # 12 KiB: tensors of up to ~40 KiB span several pieces
    seen: list[bool] = []
    real = shardcopy._Shard.is_cached
    monkeypatch.setattr(shardcopy._Shard, "is_cached", lambda self, a, b: seen.append(real(self, a, b)) or seen[-1])
    if state == "cold":
        probe = next(src.glob("*.safetensors"))
        try:
            os.close(os.open(probe, os.O_RDONLY | os.O_DIRECT))
        except OSError:
            pytest.skip(f"{probe.parent} does not take O_DIRECT")
        _drop_from_page_cache(src)
    else:
        _read_into_page_cache(src)
    dst = (tmp_path if into == "disk" else shm_dir) / "m.c2cqm"
    convert_hf(src, dst, progress=False)
    _assert_same_tensors(dst, src)
    assert len(seen) > 2 * len(list(src.glob("*.safetensors")))  # many pieces
    if state == "cold":
        assert not all(seen), "no piece was read with O_DIRECT"
    else:
        assert all(seen), "a cached source was read with O_DIRECT"


@pytest.mark.parametrize("state", ["cold", "cached"])
def test_the_tee_is_byte_identical_to_the_model_file(make_hf_dir, tmp_path, shm_dir, monkeypatch, state):
    src = make_hf_dir("qwen2moe", torch.float32, "40KB")
    monkeypatch.setattr(shardcopy, "PIECE", 8 << 10)
    (_drop_from_page_cache if state == "cold" else _read_into_page_cache)(src)
    dst, also = tmp_path / "m.c2cqm", shm_dir / "staged.c2cqm"
    convert_hf(src, dst, progress=False, also=also)
    assert filecmp.cmp(dst, also, shallow=False)
    _assert_same_tensors(also, src)
    assert sorted(p.name for p in shm_dir.iterdir()) == ["staged.c2cqm"]  # no temporary left


def test_write_model_file_tees_too(tmp_path, shm_dir):
    specs = [("a", "fp32", (3, 1000)), ("b", "bf16", (7,))]
    data = [torch.randn(3, 1000).numpy(), torch.randn(7).to(torch.bfloat16).view(torch.int16).numpy()]
    modelwrite.write_model_file(tmp_path / "m.c2cqm", specs, data, {"config": {}}, progress=False,
                                also=shm_dir / "t.c2cqm")
    assert filecmp.cmp(tmp_path / "m.c2cqm", shm_dir / "t.c2cqm", shallow=False)


def test_a_failing_tee_drops_the_copy_not_the_conversion(make_hf_dir, tmp_path, shm_dir, monkeypatch):
    src = make_hf_dir("llama")
    also = shm_dir / "staged.c2cqm"
    real, tee_fds = modelwrite.write_all, set()
    opened = modelwrite.Tee.__init__

    def init(self, path, *bound):
        opened(self, path, *bound)
        tee_fds.add(self.fd)

    def flaky(fd, view, offset):
        if fd in tee_fds:
            raise OSError(28, "No space left on device")
        real(fd, view, offset)

    monkeypatch.setattr(modelwrite.Tee, "__init__", init)
    monkeypatch.setattr(modelwrite, "write_all", flaky)
    convert_hf(src, tmp_path / "m.c2cqm", progress=False, also=also)
    _assert_same_tensors(tmp_path / "m.c2cqm", src)
    assert list(shm_dir.iterdir()) == []  # neither the copy nor its temporary

    convert_hf(src, tmp_path / "n.c2cqm", progress=False, also=shm_dir / "missing" / "x.c2cqm")  # cannot open
    _assert_same_tensors(tmp_path / "n.c2cqm", src)


def test_a_failed_conversion_leaves_no_tee(make_hf_dir, tmp_path, shm_dir, monkeypatch):
    src = make_hf_dir("llama")
    monkeypatch.setattr(modelwrite.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "EIO")))
    with pytest.raises(OSError):
        convert_hf(src, tmp_path / "m.c2cqm", progress=False, also=shm_dir / "staged.c2cqm")
    assert list(shm_dir.iterdir()) == []


@pytest.mark.parametrize("seed", range(5))
def test_crc32_combine_equals_zlib_over_the_whole(seed):
    rng = random.Random(seed)
    a = rng.randbytes(rng.randrange(0, 5000))
    b = rng.randbytes(rng.choice([0, 1, 7, 4096, rng.randrange(1, 70000)]))
    assert shardcopy.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


@pytest.mark.parametrize("state", ["cold", "cached"])
def test_a_tee_on_hugetlbfs_goes_through_a_mapping(make_hf_dir, tmp_path, huge_dir, monkeypatch, state):
    """hugetlbfs takes no write(2): the tee maps the file, sized in whole huge pages; the catalog can
    then publish it by rename (same content by its index, the same tensors)."""
    src = make_hf_dir("qwen3", torch.bfloat16, "40KB")
    monkeypatch.setattr(shardcopy, "PIECE", 8 << 10)
    (_drop_from_page_cache if state == "cold" else _read_into_page_cache)(src)
    dst, also = tmp_path / "m.c2cqm", huge_dir / f"{shm.STAGED}1-m.c2cqm"
    convert_hf(src, dst, progress=False, also=also)
    page = huge_page_size_of(huge_dir)
    assert also.stat().st_size % page == 0
    with read_layout(also) as got, read_layout(dst) as ref:
        assert got.index == ref.index and got.size == ref.size
    _assert_same_tensors(also, src)
    inode = also.stat().st_ino
    assert shm.publish(dst, huge_dir, "m", also).stat().st_ino == inode
    assert [p.name for p in huge_dir.iterdir()] == ["m.c2cqm"]
