"""HF folder -> .c2cqm -> mapped tensors: bitwise round trips, forward order, metadata, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from c2cq.services.catalog import layout, modelwrite
from c2cq.services.catalog.convert import convert_hf
from c2cq.services.catalog.layout import forward_order_key, read_layout


def _source_state(folder: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    return state


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mixtral", "qwen2moe"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shard", [None, "40KB"])
def test_round_trip_is_bitwise_aligned_and_forward_ordered(make_hf_dir, tmp_path, arch, dtype, shard):
    src = make_hf_dir(arch, dtype, shard)
    if shard:
        assert len(list(src.glob("*.safetensors"))) > 1, "fixture should produce several shards"
    dst = tmp_path / "m.c2cqm"
    result = convert_hf(src, dst, progress=False)
    expected = _source_state(src)

    with read_layout(dst) as mf:
        tensors = mf.tensors()
        assert set(tensors) == set(expected)
        for name, ref in expected.items():
            got = tensors[name]
            assert got.dtype == ref.dtype and got.shape == ref.shape, name
            assert torch.equal(got.view(torch.uint8), ref.contiguous().view(torch.uint8)), name
        names = [e.name for e in mf.index.tensors]
        assert all(e.offset % 4096 == 0 for e in mf.index.tensors)
        mf.verify()
        del tensors, got
    assert result.num_tensors == len(expected)
    assert result.tensor_bytes == sum(t.numel() * t.element_size() for t in expected.values())
    assert names == sorted(names, key=forward_order_key)
    assert names[0] == "model.embed_tokens.weight"
    assert names[-2:] == ["model.norm.weight", "lm_head.weight"]
    layer0 = [n for n in names if n.startswith("model.layers.0.")]
    assert layer0[0] == "model.layers.0.input_layernorm.weight"
    assert max(i for i, n in enumerate(names) if n.startswith("model.layers.0.")) < min(
        i for i, n in enumerate(names) if n.startswith("model.layers.1."))


def test_metadata_travels_with_the_weights(make_hf_dir, tmp_path):
    src = make_hf_dir("qwen3")
    dst = tmp_path / "m.c2cqm"
    convert_hf(src, dst, progress=False)
    mf = read_layout(dst)
    assert mf.config == json.loads((src / "config.json").read_text())
    assert mf.generation_config == json.loads((src / "generation_config.json").read_text())
    assert mf.tokenizer_json == (src / "tokenizer.json").read_bytes()
    assert mf.chat_template == json.loads((src / "tokenizer_config.json").read_text())["chat_template"]
    assert mf.tokenizer_config == {"eos_token": "world"}
    assert mf.index.source == str(src)


def test_hugepage_alignment(make_hf_dir, tmp_path):
    src = make_hf_dir("llama")
    dst = tmp_path / "m.c2cqm"
    convert_hf(src, dst, progress=False, alignment=layout.HUGEPAGE_ALIGNMENT)
    mf = read_layout(dst)
    assert mf.alignment == 2 << 20
    assert all(e.offset % (2 << 20) == 0 for e in mf.index.tensors)
    ref = _source_state(src)
    assert all(torch.equal(mf.tensor(n), ref[n]) for n in ref)


def test_progress_goes_to_stderr_only_when_asked(make_hf_dir, tmp_path, capfd):
    src = make_hf_dir("llama")
    capfd.readouterr()  # drop save_pretrained's own progress output
    convert_hf(src, tmp_path / "a.c2cqm", progress=False)
    assert capfd.readouterr().err == ""
    convert_hf(src, tmp_path / "b.c2cqm", progress=True)
    captured = capfd.readouterr()
    assert "converting b.c2cqm" in captured.err and captured.out == ""


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["mid_write", "finalize", "fsync"])
def test_a_failed_conversion_leaves_nothing(make_hf_dir, tmp_path, monkeypatch, where):
    src = make_hf_dir("mixtral")
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "m.c2cqm"
    if where == "mid_write":
        real, calls = modelwrite.write_all, []

        def flaky(fd, view, offset):
            calls.append(offset)
            if len(calls) == 10:
                raise _Boom("disk on fire")
            real(fd, view, offset)

        monkeypatch.setattr(modelwrite, "write_all", flaky)
    elif where == "finalize":
        monkeypatch.setattr(layout, "finalize", lambda *a: (_ for _ in ()).throw(_Boom("index")))
    else:
        monkeypatch.setattr(modelwrite.os, "fsync", lambda fd: (_ for _ in ()).throw(_Boom("fsync")))
    with pytest.raises(_Boom):
        convert_hf(src, dst, progress=False)
    assert list(out.iterdir()) == []


def test_an_existing_file_is_replaced_whole(make_hf_dir, tmp_path):
    dst = tmp_path / "m.c2cqm"
    convert_hf(make_hf_dir("llama"), dst, progress=False)
    first = read_layout(dst).index.checksum
    convert_hf(make_hf_dir("qwen3"), dst, progress=False)
    mf = read_layout(dst)
    assert mf.index.checksum != first and mf.config["architectures"] == ["Qwen3ForCausalLM"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["m.c2cqm"]
