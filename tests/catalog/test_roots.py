"""The catalog only reads model files under its own folders: a RegisterModel naming any other path
(directly, through ``..`` or through a symlink) is refused with a typed error before it is opened."""

from __future__ import annotations

import os

from c2cq.rundir import RunDir
from c2cq.schemas.catalog import CatalogError, ModelInfo, RegisterModel
from c2cq.schemas.enums import ErrorCode
from c2cq.services.catalog.publish import Publisher
from c2cq.services.catalog.store import CatalogStore

INFO = ModelInfo(name="m", kind="real", architecture="LlamaForCausalLM", parameters=1, bytes=2, dtype="fp32",
                 vocab_size=2, num_layers=1, hidden_size=1, max_context=8)


def publisher(tmp_path, monkeypatch, store=None) -> tuple[Publisher, RunDir]:
    if store is None:
        monkeypatch.delenv("C2CQ_MODEL_STORE", raising=False)
    else:
        monkeypatch.setenv("C2CQ_MODEL_STORE", str(store))
    rd = RunDir.from_env(tmp_path / "home")
    (rd.catalog_dir / "models").mkdir(parents=True)
    return Publisher(CatalogStore(rd.catalog_dir), tmp_path / "shm", rd.model_roots), rd


def test_paths_outside_the_catalogs_folders_are_refused(tmp_path, monkeypatch):
    pub, rd = publisher(tmp_path, monkeypatch)
    outside = tmp_path / "elsewhere.c2cqm"
    outside.write_bytes(b"\0" * 64)
    link = rd.catalog_dir / "models" / "link.c2cqm"
    os.symlink(outside, link)
    for path in (outside, rd.catalog_dir / "models" / ".." / ".." / ".." / "elsewhere.c2cqm", link, "/etc/passwd"):
        reply = pub.prepare(RegisterModel(info=INFO, path=str(path)))
        assert isinstance(reply, CatalogError) and reply.code == ErrorCode.BAD_MODEL, (path, reply)
        assert "outside the catalog's folders" in reply.message, reply
    assert pub.store.reg.models == {}
    inside = rd.catalog_dir / "models" / "m.c2cqm"
    inside.write_bytes(b"\0" * 64)
    reply = pub.prepare(RegisterModel(info=INFO, path=str(inside)))  # passes the rule, fails as a model file
    assert isinstance(reply, CatalogError) and "bad magic" in reply.message, reply


def test_the_model_store_is_one_of_its_folders(tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    pub, _ = publisher(tmp_path, monkeypatch, store=store)
    (store / "m.c2cqm").write_bytes(b"\0" * 64)
    reply = pub.prepare(RegisterModel(info=INFO, path=str(store / "m.c2cqm")))
    assert isinstance(reply, CatalogError) and "bad magic" in reply.message, reply
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "m.c2cqm").write_bytes(b"\0" * 64)
    reply = pub.prepare(RegisterModel(info=INFO, path=str(tmp_path / "other" / "m.c2cqm")))
    assert isinstance(reply, CatalogError) and "outside the catalog's folders" in reply.message, reply
