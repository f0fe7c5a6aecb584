"""The file format on its own: forward order, planning, and every way a file can be damaged."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from c2cq.services.catalog import layout
from c2cq.services.catalog.modelwrite import write_model_file
from c2cq.services.catalog.layout import ModelFileError, forward_order, plan, read_layout

FORWARD = [
    "model.embed_tokens.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
    "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.post_attention_layernorm.weight",
    "model.layers.0.mlp.gate.weight",
    "model.layers.0.mlp.experts.0.gate_proj.weight", "model.layers.0.mlp.experts.0.up_proj.weight",
    "model.layers.0.mlp.experts.0.down_proj.weight",
    "model.layers.0.mlp.experts.2.gate_proj.weight", "model.layers.0.mlp.experts.10.gate_proj.weight",
    "model.layers.0.mlp.shared_expert.gate_proj.weight", "model.layers.0.mlp.shared_expert.down_proj.weight",
    "model.layers.0.mlp.shared_expert_gate.weight",
    "model.layers.0.some_new_thing.weight",
    "model.layers.2.input_layernorm.weight",
    "model.layers.2.block_sparse_moe.gate.weight",
    "model.layers.2.block_sparse_moe.experts.0.w1.weight", "model.layers.2.block_sparse_moe.experts.0.w3.weight",
    "model.layers.2.block_sparse_moe.experts.0.w2.weight", "model.layers.2.block_sparse_moe.experts.1.w1.weight",
    "model.layers.10.input_layernorm.weight",
    "model.layers.10.mlp.gate_proj.weight", "model.layers.10.mlp.up_proj.weight", "model.layers.10.mlp.down_proj.weight",
    "model.norm.weight",
    "lm_head.weight",
    "model.rotary_emb.inv_freq",
]


def test_forward_order_from_any_permutation():
    rng = random.Random(7)
    for _ in range(20):
        shuffled = FORWARD[:]
        rng.shuffle(shuffled)
        assert forward_order(shuffled) == FORWARD


def test_plan_aligns_every_tensor_and_rejects_bad_input():
    entries = plan([("a", "bf16", (3, 5)), ("b", "fp32", (4097,)), ("c", "fp16", ())], alignment=4096)
    assert [e.offset for e in entries] == [4096, 8192, 8192 + 20480]
    assert [e.nbytes for e in entries] == [30, 4097 * 4, 2]
    with pytest.raises(ModelFileError, match="tensor x: unsupported dtype 'int8'"):
        plan([("x", "int8", (2,))])
    with pytest.raises(ModelFileError, match="alignment"):
        plan([], alignment=3000)


def _small_file(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"model.embed_tokens.weight": rng.standard_normal((7, 33), dtype=np.float32),
              "model.norm.weight": rng.standard_normal((33,), dtype=np.float32),
              "scalar": np.array(1.5, dtype=np.float32), "empty": np.zeros((0, 4), dtype=np.float32)}
    specs = [(n, "fp32", a.shape) for n, a in arrays.items()]
    write_model_file(path, specs, arrays.values(), {"config": {"x": 1}}, progress=False)
    return arrays


def test_tensors_round_trip_including_scalars_and_empty(tmp_path):
    arrays = _small_file(tmp_path / "m.c2cqm")
    mf = read_layout(tmp_path / "m.c2cqm")
    for name, arr in arrays.items():
        assert torch.equal(mf.tensor(name), torch.from_numpy(arr)), name
    assert mf.config == {"x": 1} and mf.tokenizer_json is None
    with pytest.raises(KeyError):
        mf.tensor("nope")


def test_tensors_are_read_only_views(tmp_path):
    _small_file(tmp_path / "m.c2cqm")
    t = read_layout(tmp_path / "m.c2cqm").tensor("model.norm.weight")
    assert t.data_ptr() % 4096 == 0  # a view at the aligned offset in the mapping, not a copy
    code = ("from c2cq.services.catalog.layout import read_layout\n"
            f"read_layout({str(tmp_path / 'm.c2cqm')!r}).tensor('model.norm.weight').add_(1)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode != 0  # writing a PROT_READ mapping faults instead of corrupting the shared file


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_truncation_is_caught_on_open(tmp_path):
    path = tmp_path / "m.c2cqm"
    _small_file(path)
    os.truncate(path, path.stat().st_size - 1)
    with pytest.raises(ModelFileError, match="truncated"):
        read_layout(path)
    os.truncate(path, 10)
    with pytest.raises(ModelFileError, match="truncated header"):
        read_layout(path)


def test_corrupted_tensor_is_named_by_verify(tmp_path):
    path = tmp_path / "m.c2cqm"
    _small_file(path)
    entry = read_layout(path).entries["model.norm.weight"]
    _flip(path, entry.offset + 5)
    mf = read_layout(path)  # opening stays cheap: tensor bytes are checked only by verify()
    with pytest.raises(ModelFileError, match="model.norm.weight is corrupted"):
        mf.verify()


def test_corrupted_index_bad_magic_and_version(tmp_path):
    path = tmp_path / "m.c2cqm"
    _small_file(path)
    _flip(path, path.stat().st_size - 3)
    with pytest.raises(ModelFileError, match="index is corrupted"):
        read_layout(path)
    _small_file(path)
    with open(path, "r+b") as f:
        f.write(b"NOTC2CQ\x00")
    with pytest.raises(ModelFileError, match="bad magic"):
        read_layout(path)
    _small_file(path)
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", layout.VERSION + 1))
    with pytest.raises(ModelFileError, match="version"):
        read_layout(path)
    with pytest.raises(ModelFileError, match="cannot open"):
        read_layout(tmp_path / "absent.c2cqm")
