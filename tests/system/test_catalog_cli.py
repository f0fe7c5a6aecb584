"""`c2cq models add|list|rm` against a running instance: bad checkpoints are refused by name, the
catalog keeps serving the others, nothing half-written remains; a switch adds no private memory."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from pathlib import Path

import pytest
import torch
import transformers
import zmq
from safetensors.torch import load_file, save_file

from c2cq.client import AsyncClient
from c2cq.codec import Codec, encode
from c2cq.rundir import RunDir
from c2cq.schemas.catalog import CatalogError, FromCatalog, ModelInfo, RegisterModel
from c2cq.services.catalog.describe import info_of
from c2cq.services.catalog.layout import read_layout
from c2cq.services.catalog.synth import preset_config, write_random
from c2cq.testing import Instance, status


def good_dir(root: Path, name: str = "good") -> Path:
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    folder = root / name
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def bad_checkpoints(root: Path) -> dict[str, tuple[Path, str]]:
    """name → (folder or file, a phrase the error must contain)."""
    out = {}
    d = good_dir(root, "arch")
    edit_config(d, architectures=["GPT2LMHeadModel"])
    out["arch"] = (d, "unsupported architecture 'GPT2LMHeadModel'")
    d = good_dir(root, "missing")
    t = load_file(d / "model.safetensors")
    del t["model.layers.1.mlp.up_proj.weight"]
    save_file(t, d / "model.safetensors", metadata={"format": "pt"})
    out["missing"] = (d, "model.layers.1.mlp.up_proj.weight")
    d = good_dir(root, "shape")
    edit_config(d, intermediate_size=81)
    out["shape"] = (d, "config implies")
    d = good_dir(root, "vocab")
    edit_config(d, vocab_size=97)
    out["vocab"] = (d, "vocab_size=97")
    d = good_dir(root, "truncated")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    out["truncated"] = (d, "model.safetensors")
    g = root / "not-a.gguf"
    g.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\x00" * 5)
    out["gguf"] = (g, "not-a.gguf")
    return out


@pytest.fixture
def running(home):
    inst = Instance(home, slices=1, backend="sim")
    inst.up()
    try:
        yield inst
    finally:
        inst.teardown()


def test_bad_checkpoints_are_refused_by_name(running, tmp_path):
    home = running.home
    running.cli("models", "add", str(good_dir(tmp_path)), "--name", "good", "--quiet")
    catalog_pid = next(s["pid"] for s in status(home)["services"] if s["name"] == "catalog")
    for name, (path, phrase) in bad_checkpoints(tmp_path).items():
        p = running.cli("models", "add", str(path), "--name", f"bad-{name}", "--quiet", check=False)
        assert p.returncode != 0, f"{name} was accepted"
        assert phrase in p.stderr, f"{name}: error does not name the problem: {p.stderr!r}"
    listed = json.loads(running.cli("models", "list", "--json").stdout)
    assert [m["name"] for m in listed] == ["good"]
    assert sorted(p.name for p in (RunDir.from_env(str(home)).catalog_dir / "models").iterdir()) == ["good.c2cqm"]
    assert next(s["pid"] for s in status(home)["services"] if s["name"] == "catalog") == catalog_pid


def _send_raw(rd: RunDir, msg):
    """One message to the catalog over a plain socket (not catalog_client: nothing checked first); its answer."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(rd.catalog_addr)
    try:
        s.send(encode(msg))
        assert s.poll(10_000), "the catalog did not answer"
        return Codec(FromCatalog).decode(s.recv())
    finally:
        s.close()
        ctx.term()


def test_catalog_refuses_a_corrupt_file_sent_directly(running, tmp_path):
    """A RegisterModel naming a damaged file gets a typed error; the catalog stays up and registers nothing."""
    home = running.home
    running.cli("models", "add", str(good_dir(tmp_path)), "--name", "good", "--quiet")
    rd = RunDir.from_env(str(home))
    src = rd.catalog_dir / "models" / "good.c2cqm"
    info = info_of("copy", read_layout(src))
    bad = rd.catalog_dir / "models" / "copy.c2cqm"  # under the catalog's folder: read, and found damaged
    bad.write_bytes(src.read_bytes()[:-10])
    reply = _send_raw(rd, RegisterModel(info=info, path=str(bad)))
    assert isinstance(reply, CatalogError) and "truncated" in reply.message, reply
    assert [m["name"] for m in json.loads(running.cli("models", "list", "--json").stdout)] == ["good"]


def test_catalog_refuses_a_file_outside_its_folders(running, tmp_path):
    """A sound model file that lies outside the catalog's folders is refused: typed error, nothing registered."""
    home = running.home
    running.cli("models", "add", str(good_dir(tmp_path)), "--name", "good", "--quiet")
    rd = RunDir.from_env(str(home))
    src = rd.catalog_dir / "models" / "good.c2cqm"
    outside = tmp_path / "copy.c2cqm"
    outside.write_bytes(src.read_bytes())
    reply = _send_raw(rd, RegisterModel(info=info_of("copy", read_layout(outside)), path=str(outside)))
    assert isinstance(reply, CatalogError) and "outside the catalog's folders" in reply.message, reply
    assert [m["name"] for m in json.loads(running.cli("models", "list", "--json").stdout)] == ["good"]


def _published_lines(rd: RunDir) -> list[tuple[str, str]]:
    lines = (rd.log_dir / "catalog.log").read_text().splitlines()
    return [(e["model"], e["how"]) for e in map(json.loads, lines) if e.get("event") == "published"]


def test_add_hands_the_catalog_a_copy_in_shared_memory(running, tmp_path):
    """With a catalog running, `models add` writes the shared-memory copy while converting and the
    catalog moves it into place instead of copying the new file from disk again."""
    rd = RunDir.from_env(str(running.home))
    running.cli("models", "add", str(good_dir(tmp_path)), "--name", "good", "--quiet")
    assert _published_lines(rd) == [("good", "staged copy")]
    assert sorted(p.name for p in rd.shm_dir.iterdir()) == ["good.c2cqm"]  # no staged file or temporary left
    assert (rd.shm_dir / "good.c2cqm").read_bytes() == (rd.catalog_dir / "models" / "good.c2cqm").read_bytes()


def test_a_staged_path_outside_the_catalog_folder_is_ignored(running, tmp_path):
    """A RegisterModel may name any file as its staged copy: the catalog only ever moves a regular
    ``.staged-*`` file of its own folder, and otherwise publishes from the model file."""
    rd = RunDir.from_env(str(running.home))
    running.cli("models", "add", str(good_dir(tmp_path)), "--name", "good", "--quiet")
    src = rd.catalog_dir / "models" / "good.c2cqm"
    decoy = tmp_path / ".staged-1-copy.c2cqm"
    decoy.write_bytes(src.read_bytes())
    reply = _send_raw(rd, RegisterModel(info=info_of("copy", read_layout(src)), path=str(src), staged=str(decoy)))
    assert not isinstance(reply, CatalogError), reply
    assert decoy.exists()
    assert _published_lines(rd) == [("good", "staged copy"), ("copy", "from the model file")]


def test_rm_then_the_model_is_unknown(running, tmp_path):
    running.cli("models", "add", str(good_dir(tmp_path)), "--name", "good", "--quiet")
    running.cli("models", "rm", "good")
    assert json.loads(running.cli("models", "list", "--json").stdout) == []
    assert not (RunDir.from_env(str(running.home)).shm_dir / "good.c2cqm").exists()


def _mem(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("RssAnon", "RssShmem", "RssFile")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * 1024
    return out


def test_switching_to_a_half_billion_model_adds_no_private_memory(home, tmp_path):
    """Weights are mapped from the shared file: the executor's private (anonymous) memory does not grow
    by the model's size; the mapped pages show up as shared memory instead (the measurement sees them)."""
    rd = RunDir.from_env(str(home))
    folder = rd.catalog_dir / "models"
    folder.mkdir(parents=True)
    dst = folder / "qwen2-500m.c2cqm"
    write_random(dst, preset_config("qwen2-500m", vocab_size=151936, eos_token_id=None), {}, dtype="bf16",
                 progress=False)
    info = info_of("qwen2-500m", read_layout(dst))
    assert info.parameters > 450e6
    from c2cq import catalog_client

    catalog_client.call(rd, RegisterModel(info=info, path=str(dst)))
    inst = Instance(home, slices=1, backend="cpu")
    inst.up()
    try:
        pid = next(s["pid"] for s in status(home)["services"] if s["name"] == "exec-0")
        before = _mem(pid)

        async def run():
            async with AsyncClient(home=str(home), timeout=300) as c:
                s = await c.submit("qwen2-500m", prompt_token_ids=list(range(1, 14)), max_tokens=2, ignore_eos=True)
                return sum([len(t.token_ids) async for t in s])

        assert asyncio.run(run()) == 2
        after = _mem(pid)
    finally:
        inst.teardown()
    # The slice may have preloaded the model when it started (mapped, page tables filled): the shared pages
    # can be there before the request, so they are counted whole, and private memory is bounded whole too
    # (the executor's own is torch and Python, well under the model's 942 MiB).
    grew_private = after["RssAnon"] - before["RssAnon"]
    shared = after["RssShmem"] + after["RssFile"]
    print(f"model {info.bytes / 2**20:.0f} MiB; private {after['RssAnon'] / 2**20:.0f} MiB "
          f"(+{grew_private / 2**20:.0f} MiB with the request), shared {shared / 2**20:.0f} MiB")
    assert shared > 0.9 * info.bytes, "the weights were not read from the shared mapping"
    assert grew_private < 0.1 * info.bytes, f"private memory grew by {grew_private / 2**20:.0f} MiB"
    assert after["RssAnon"] < 0.9 * info.bytes, f"private memory is {after['RssAnon'] / 2**20:.0f} MiB"


def test_rm_is_refused_while_a_request_uses_the_model(running):
    home = running.home
    running.cli("models", "add-sim", "--count", "2")
    listed = {m["name"]: m for m in json.loads(running.cli("models", "list", "--json").stdout)}
    assert listed["sim-000"]["slices"] == []

    async def run():
        async with AsyncClient(home=str(home), timeout=120) as c:
            s = await c.submit("sim-000", "a long one", max_tokens=4000)
            first = await s.__anext__()  # the slice now serves sim-000
            p = await asyncio.to_thread(running.cli, "models", "rm", "sim-000", check=False)
            held = json.loads((await asyncio.to_thread(running.cli, "models", "list", "--json")).stdout)
            await c.cancel(s.request_id)
            return first, p, held

    first, p, held = asyncio.run(run())
    assert first.token_ids
    assert p.returncode != 0 and "model_in_use" in p.stderr, p.stderr
    assert {m["name"]: m["slices"] for m in held}["sim-000"] == ["exec-0"]
    from c2cq.testing import wait_for

    wait_for(lambda: running.cli("models", "rm", "sim-000", check=False).returncode == 0, 30, "rm after cancel")
    assert [m["name"] for m in json.loads(running.cli("models", "list", "--json").stdout)] == ["sim-001"]


def test_catalog_refuses_a_path_that_is_not_a_regular_file(running, tmp_path):
    """A FIFO named in a RegisterModel would block the catalog on open: refused before opening."""
    rd = RunDir.from_env(str(running.home))
    fifo = rd.catalog_dir / "models" / "pipe.c2cqm"
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    info = ModelInfo(name="pipe", kind="real", architecture="LlamaForCausalLM", parameters=1, bytes=2, dtype="fp32",
                     vocab_size=2, num_layers=1, hidden_size=1, max_context=8)
    reply = _send_raw(rd, RegisterModel(info=info, path=str(fifo)))  # no answer: blocked on the FIFO
    assert isinstance(reply, CatalogError) and "not a regular file" in reply.message, reply


def test_rm_is_refused_while_requests_for_the_model_wait_in_the_queue(running):
    """A request the scheduler holds back (its only slice is busy with another model) uses its model too."""
    home = running.home
    running.cli("models", "add-sim", "--count", "2")

    async def run():
        async with AsyncClient(home=str(home), timeout=120) as c:
            busy = await c.submit("sim-000", "a long one", max_tokens=4000)
            await busy.__anext__()  # the only slice now serves sim-000
            queued = await c.submit("sim-001", "waits", max_tokens=4)
            waiting = (await c.status()).waiting
            p = await asyncio.to_thread(running.cli, "models", "rm", "sim-001", check=False)
            await c.cancel(busy.request_id)
            done = [b async for b in queued]  # the waiting request is served once the slice is free
            return waiting, p, done

    waiting, p, done = asyncio.run(run())
    assert waiting == {"sim-001": 1}
    assert p.returncode != 0 and "model_in_use" in p.stderr and "queue (1)" in p.stderr, p.stderr
    assert sum(len(b.token_ids) for b in done) == 4
    running.cli("models", "rm", "sim-001")
