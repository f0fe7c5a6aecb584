"""The catalog's registry: a pure fold over its events, and the durable store that replays it."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c2cq.codec import union_members
from c2cq.errors import ConfigError
from c2cq.schemas.catalog import (
    CatalogError,
    DescribeModel,
    ListModels,
    ModelInfo,
    ModelInfoReply,
    ModelListReply,
    ModelRegistered,
    ModelRemoved,
    RegisterModel,
    RemoveModel,
    ToCatalog,
)
from c2cq.schemas.enums import ErrorCode, ModelKind
from c2cq.schemas.refs import ShmRef
from c2cq.services.catalog import registry
from c2cq.services.catalog.store import CatalogStore


def info(name: str = "m", **kw) -> ModelInfo:
    base = dict(name=name, kind=ModelKind.SIM, architecture="LlamaForCausalLM", parameters=1000, bytes=2000,
                dtype="bf16", vocab_size=100, num_layers=2, hidden_size=16, max_context=512)
    return ModelInfo(**{**base, **kw})


class Fold:
    """The registry driven the way CatalogStore drives it, without the disk: handle, then apply."""

    def __init__(self) -> None:
        self.reg, self.seq, self.log = registry.Registry(), 0, []

    def __call__(self, msg):
        events, reply = registry.handle(self.reg, msg, source="t", seq=self.seq + 1, ts_ns=self.seq)
        for ev in events:
            registry.apply(self.reg, ev)
        self.seq += len(events)
        self.log += events
        return events, reply


def test_register_describe_list_remove():
    f = Fold()
    events, reply = f(RegisterModel(info=info("b")))
    assert [type(e) for e in events] == [ModelRegistered] and reply == ModelInfoReply(info=info("b"))
    assert (events[0].source, events[0].seq) == ("t", 1)
    f(RegisterModel(info=info("a"), path="/x/a.c2cqm"))
    assert f(DescribeModel(name="a"))[1] == ModelInfoReply(info=info("a"))
    assert f(DescribeModel(name="a"))[0] == []  # queries change nothing
    assert f(ListModels())[1] == ModelListReply(models=(info("a"), info("b")))  # sorted by name
    assert f.reg.models["a"].path == "/x/a.c2cqm"
    events, reply = f(RemoveModel(name="a"))
    assert [type(e) for e in events] == [ModelRemoved] and events[0].seq == 3
    assert isinstance(reply, ModelListReply)
    assert set(f.reg.models) == {"b"}


def test_unknown_models():
    f = Fold()
    for msg in (DescribeModel(name="nope"), RemoveModel(name="nope")):
        events, reply = f(msg)
        assert events == [] and isinstance(reply, CatalogError) and reply.code == ErrorCode.UNKNOWN_MODEL
        assert "nope" in reply.message


def test_registering_the_same_model_again_changes_nothing():
    f = Fold()
    f(RegisterModel(info=info("m"), path="/p/m.c2cqm"))
    shm = ShmRef(path="/dev/shm/c2cq-x/m.c2cqm", size=4096)  # as a Describe reply hands it out
    for again in (info("m"), msgspec.structs.replace(info("m"), shm=shm)):
        events, reply = f(RegisterModel(info=again, path="/p/m.c2cqm"))
        assert events == [] and reply == ModelInfoReply(info=info("m"))
    assert len(f.log) == 1


@pytest.mark.parametrize("change", [dict(bytes=999_999), dict(path="/elsewhere.c2cqm"), dict(path=None)])
def test_a_different_registration_under_a_taken_name_is_refused(change):
    f = Fold()
    f(RegisterModel(info=info("m"), path="/p/m.c2cqm"))
    path = change.pop("path", "/p/m.c2cqm")
    events, reply = f(RegisterModel(info=info("m", **change), path=path))
    assert events == [] and isinstance(reply, CatalogError) and reply.code == ErrorCode.BAD_MODEL
    assert "already registered" in reply.message
    assert f.reg.models["m"] == registry.Entry(info("m"), "/p/m.c2cqm")


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "../etc", "a b", "x" * 129, "abc\n", "é", "a\x00b"])
def test_bad_names_are_refused(name):
    f = Fold()
    events, reply = f(RegisterModel(info=info(name)))
    assert events == [] and isinstance(reply, CatalogError) and reply.code == ErrorCode.BAD_MODEL
    assert f.reg.models == {}


@pytest.mark.parametrize("field", ["parameters", "bytes", "vocab_size", "num_layers", "hidden_size", "max_context"])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_sizes_are_refused(field, value):
    events, reply = Fold()(RegisterModel(info=info("m", **{field: value})))
    assert events == [] and reply.code == ErrorCode.BAD_MODEL and field in reply.message


def test_every_catalog_message_has_a_handler():
    assert set(union_members(ToCatalog)) == set(registry.HANDLED)
    f = Fold()
    for cls in union_members(ToCatalog):
        kw = {"info": info()} if cls is RegisterModel else {"name": "m"} if "name" in cls.__struct_fields__ else {}
        f(cls(**kw))  # raises TypeError where a handler is missing


# ---- replay ------------------------------------------------------------------------------------

names = st.sampled_from(["a", "b", "c", "d"])
msgs = st.one_of(
    st.builds(lambda n, b, p: RegisterModel(info=info(n, bytes=b), path=p), names, st.sampled_from([2000, 4000]),
              st.sampled_from([None, "/p/x.c2cqm"])),
    st.builds(lambda n: RemoveModel(name=n), names),
    st.builds(lambda n: DescribeModel(name=n), names),
    st.just(ListModels()),
)


def refold(events) -> registry.Registry:
    reg = registry.Registry()
    for ev in events:
        registry.apply(reg, ev)
    return reg


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(msgs, max_size=40))
def test_replaying_the_events_rebuilds_the_same_state(seq):
    f, expect = Fold(), {}
    for msg in seq:
        f(msg)
        if isinstance(msg, RegisterModel) and msg.info.name not in expect:
            expect[msg.info.name] = (msg.info, msg.path)
        elif isinstance(msg, RemoveModel):
            expect.pop(msg.name, None)
    assert {n: (e.info, e.path) for n, e in f.reg.models.items()} == expect
    assert refold(f.log).models == f.reg.models
    assert [e.seq for e in f.log] == list(range(1, len(f.log) + 1))


# ---- the durable store -------------------------------------------------------------------------


def test_the_store_survives_a_reopen_and_keeps_numbering(tmp_path):
    s = CatalogStore(tmp_path, source="catalog")
    for n in "abc":
        assert isinstance(s.handle(RegisterModel(info=info(n), path=f"/p/{n}.c2cqm")), ModelInfoReply)
    s.handle(RemoveModel(name="b"))
    s.handle(RegisterModel(info=info("a", bytes=1)))  # refused: nothing logged
    before = dict(s.reg.models)
    s.close()

    s = CatalogStore(tmp_path, source="catalog")
    try:
        assert s.reg.models == before
        assert s.seq == 4
        s.handle(RegisterModel(info=info("d")))
        events = [ev for _, ev in s.log.replay()]
        assert [(type(e).__name__, e.seq) for e in events] == [
            ("ModelRegistered", 1), ("ModelRegistered", 2), ("ModelRegistered", 3), ("ModelRemoved", 4),
            ("ModelRegistered", 5)]
        assert refold(events).models == s.reg.models
    finally:
        s.close()


def test_two_sources_share_one_log(tmp_path):
    """The CLI writes while no instance runs (source "cli"); the catalog service continues its own numbering."""
    cli = CatalogStore(tmp_path, source="cli")
    cli.handle(RegisterModel(info=info("a")))
    cli.handle(RegisterModel(info=info("b")))
    cli.close()
    svc = CatalogStore(tmp_path, source="catalog")
    try:
        assert set(svc.reg.models) == {"a", "b"} and svc.seq == 0
        svc.handle(RemoveModel(name="a"))
        assert [(e.source, e.seq) for _, e in svc.log.replay()] == [("cli", 1), ("cli", 2), ("catalog", 1)]
    finally:
        svc.close()


def test_only_one_process_holds_the_store(tmp_path):
    s = CatalogStore(tmp_path)
    try:
        with pytest.raises(ConfigError, match="held by another process"):
            CatalogStore(tmp_path)
    finally:
        s.close()
    CatalogStore(tmp_path).close()  # free again once closed

