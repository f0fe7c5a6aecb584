"""Catalog and a reader of its pages in separate mount namespaces (`unshare -m`, as two pods on one
node are), each with a private tmpfs on /dev/shm: the model reaches the reader only through the
shared folder both see at the same path (the hostPath), and neither private /dev/shm holds it."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest
import zmq

from c2cq import catalog_client
from c2cq.codec import Codec, encode
from c2cq.rundir import RunDir
from c2cq.schemas.catalog import DescribeModel, FromCatalog, ModelInfoReply, RegisterModel
from c2cq.services.catalog.describe import info_of
from c2cq.services.catalog.layout import read_layout
from c2cq.services.catalog.synth import preset_config, write_random

pytestmark = pytest.mark.timeout(180)
PRIVATE_SHM = "mount -t tmpfs -o size=64m,mode=1777 pod-shm /dev/shm && exec "  # the pod's own /dev/shm


def _pod(cmd: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    line = PRIVATE_SHM + shlex.join(cmd)
    return subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", line], env=env, **kw)


def test_model_pages_cross_mount_namespaces_only_through_the_shared_folder(tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mount namespaces need root and util-linux's unshare")
    rd = RunDir.from_env(tmp_path / "home")
    hostpath = tmp_path / "hostpath"  # what both pods mount (hostPath); not under /dev/shm
    hostpath.mkdir()
    model = rd.catalog_dir / "models" / "m.c2cqm"
    model.parent.mkdir(parents=True)
    write_random(model, preset_config("qwen3-60m", vocab_size=256, eos_token_id=None), {}, dtype="bf16",
                 progress=False)
    catalog_client.call(rd, RegisterModel(info=info_of("m", read_layout(model)), path=str(model)))  # offline
    env = {**os.environ, "C2CQ_HOME": str(rd.home), "C2CQ_SHM_ROOT": str(hostpath)}
    catalog = _pod([sys.executable, "-m", "c2cq.services.catalog.main"], env)
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(rd.catalog_addr)  # queued until the catalog binds
        s.send(encode(DescribeModel(name="m")))
        assert s.poll(60_000), "the catalog did not answer"
        reply = Codec(FromCatalog).decode(s.recv())
        assert isinstance(reply, ModelInfoReply) and reply.info.shm is not None, reply
        published = reply.info.shm.path
        assert published.startswith(str(hostpath) + "/"), published
        reader = textwrap.dedent(f"""
            import hashlib, mmap, os, sys
            with open({published!r}, "rb") as f:
                m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
                print(hashlib.sha256(m).hexdigest())
            print(sorted(os.listdir("/dev/shm")))
        """)
        p = _pod([sys.executable, "-c", reader], env, stdout=subprocess.PIPE, text=True)
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, out
        digest, private = out.splitlines()
        assert digest == hashlib.sha256(model.read_bytes()).hexdigest()
        assert private == "[]"  # the reader's own /dev/shm: nothing came through it
        catalog_shm = f"/proc/{catalog.pid}/root/dev/shm"  # the catalog's /dev/shm, seen through its namespace
        assert not [n for n in os.listdir(catalog_shm) if n.startswith("c2cq")], os.listdir(catalog_shm)
        assert not os.path.exists(f"/dev/shm/{rd.shm_dir.name}")  # nor the host's
    finally:
        ctx.destroy(linger=0)
        catalog.terminate()
        try:
            catalog.wait(30)
        except subprocess.TimeoutExpired:
            catalog.kill()
            catalog.wait(30)
