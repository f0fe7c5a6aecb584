"""The wire contract: the golden samples under schemas/contract/ still decode and encode byte for byte.

A failure here means the encoding of a message changed. If the change is intended (a field
appended with a default), regenerate with ``python -m c2cq.schemas.contract --write`` and let
the diff of the golden files be reviewed; a rename, retype or reorder is never intended.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Union

import msgspec
import pytest

from c2cq.codec import Codec, encode, union_members
from c2cq.errors import WireError
from c2cq.schemas import client as cl
from c2cq.schemas import contract
from c2cq.schemas.base import Message

SAMPLES = contract.samples()
GOLDEN = sorted(p.stem for p in contract.CONTRACT_DIR.glob("*.msgpack"))


def tag_of(cls: type) -> str:
    return cls.__struct_config__.tag


def golden_problems(sample: msgspec.Struct, golden: bytes, sockets: dict[str, Any]) -> list[str]:
    """Everything that differs between one sample and its golden bytes, for every socket carrying it."""
    problems = []
    if encode(sample) != golden:
        problems.append("the encoding differs from the golden bytes")
    owners = [name for name, union in sockets.items() if type(sample) in union_members(union)]
    if not owners:
        problems.append("no socket carries this message")
    for name in owners:
        try:
            got = Codec(sockets[name]).decode(golden)
        except WireError as e:
            problems.append(f"{name}: the golden bytes no longer decode: {e}")
            continue
        if got != sample:
            problems.append(f"{name}: decodes to {got!r}, not the sample")
        elif encode(got) != golden:
            problems.append(f"{name}: re-encodes to different bytes")
    return problems


# ---- the contract itself ---------------------------------------------------------------------


@pytest.mark.parametrize("tag", sorted(SAMPLES))
def test_golden_sample_round_trips_on_its_socket(tag):
    path = contract.CONTRACT_DIR / f"{tag}.msgpack"
    assert path.is_file(), f"no golden file for {tag!r}: run python -m c2cq.schemas.contract --write"
    assert golden_problems(SAMPLES[tag], path.read_bytes(), contract.SOCKETS) == []


def test_every_message_type_has_a_sample_and_a_golden_file():
    sampled = {type(m) for m in SAMPLES.values()}
    missing = contract.all_message_types() - sampled
    assert not missing, f"message types without a sample in contract.samples(): {sorted(t.__name__ for t in missing)}"
    assert sorted(SAMPLES) == GOLDEN, "golden files and samples differ (a stale file, or a sample never written)"


def test_tags_are_unique_across_all_sockets():
    tags = [tag_of(t) for t in contract.all_message_types()]
    assert len(tags) == len(set(tags)), sorted(t for t in tags if tags.count(t) > 1)
    assert all(isinstance(t, str) and t for t in tags)


def test_schema_json_matches_the_current_schema():
    golden = json.loads((contract.CONTRACT_DIR / "schema.json").read_text())
    assert golden == json.loads(json.dumps(contract.schema_doc())), (
        "schema.json is stale: run python -m c2cq.schemas.contract --write and review the diff")


def test_samples_are_fully_populated_where_it_matters():
    """A golden sample that leaves a nested Struct at its default would not pin that Struct's encoding."""
    submit, assign = SAMPLES["submit"], SAMPLES["assign"]
    assert submit.sampling != cl.SamplingParams() and assign.sampling != cl.SamplingParams()
    assert submit.slo != cl.SLO()
    assert SAMPLES["model_info"].info.shm is not None


# ---- the test of the test: a deliberate wire change must be caught ---------------------------


def mutated(cls: type, *, rename: tuple[str, str] | None = None, retype: tuple[str, Any] | None = None,
            swap: tuple[str, str] | None = None, append: tuple[str, Any, Any] | None = None,
            doc: str | None = None) -> type:
    """A copy of a message Struct with the same tag and one change to its fields (or its docstring)."""
    fields = [(f.name, f.type, f.default) if f.default is not msgspec.NODEFAULT else (f.name, f.type)
              for f in msgspec.structs.fields(cls)]
    if rename:
        fields = [(rename[1], *f[1:]) if f[0] == rename[0] else f for f in fields]
    if retype:
        fields = [(f[0], retype[1], *f[2:]) if f[0] == retype[0] else f for f in fields]
    if swap:
        i, j = (next(k for k, f in enumerate(fields) if f[0] == name) for name in swap)
        fields[i], fields[j] = fields[j], fields[i]
    if append:
        fields.append(append)
    return msgspec.defstruct(cls.__name__, fields, bases=(Message,), tag=tag_of(cls), frozen=True, kw_only=True,
                             namespace={"__doc__": doc} if doc else None)


def with_member(sockets: dict[str, Any], old: type, new: type) -> dict[str, Any]:
    return {name: Union[tuple(new if t is old else t for t in union_members(u))]  # noqa: UP007
            for name, u in sockets.items()}


def rebuilt(sample: msgspec.Struct, cls: type, rename: tuple[str, str] | None = None, convert=None) -> msgspec.Struct:
    kw = msgspec.structs.asdict(sample)
    if rename:
        kw[rename[1]] = kw.pop(rename[0])
    if convert:
        kw = convert(kw)
    return cls(**kw)


@pytest.mark.parametrize("change", ["rename", "retype", "reorder"])
def test_a_changed_field_fails_the_comparison(change):
    orig = SAMPLES["submit"]
    golden = (contract.CONTRACT_DIR / "submit.msgpack").read_bytes()
    assert golden_problems(orig, golden, contract.SOCKETS) == []  # the baseline passes
    if change == "rename":
        cls = mutated(cl.SubmitRequest, rename=("max_tokens", "max_new_tokens"))
        sample = rebuilt(orig, cls, rename=("max_tokens", "max_new_tokens"))
    elif change == "retype":
        cls = mutated(cl.SubmitRequest, retype=("max_tokens", float))
        sample = rebuilt(orig, cls, convert=lambda kw: {**kw, "max_tokens": float(kw["max_tokens"])})
    else:
        cls = mutated(cl.SubmitRequest, swap=("model", "prompt"))
        sample = rebuilt(orig, cls)
    problems = golden_problems(sample, golden, with_member(contract.SOCKETS, cl.SubmitRequest, cls))
    assert problems, f"a {change} of a field went unnoticed"
    assert "the encoding differs from the golden bytes" in problems


def test_a_renamed_required_field_breaks_decoding_of_old_bytes():
    cls = mutated(cl.CancelRequest, rename=("request_id", "rid"))
    sample = rebuilt(SAMPLES["cancel"], cls, rename=("request_id", "rid"))
    problems = golden_problems(sample, (contract.CONTRACT_DIR / "cancel.msgpack").read_bytes(),
                               with_member(contract.SOCKETS, cl.CancelRequest, cls))
    assert any("no longer decode" in p for p in problems), problems


def test_an_appended_field_with_a_default_is_visible_but_old_bytes_still_decode():
    """The allowed evolution: old peers' bytes still decode; the golden diff still shows the change."""
    cls = mutated(cl.SubmitRequest, append=("priority", int, 0))
    golden = (contract.CONTRACT_DIR / "submit.msgpack").read_bytes()
    sample = rebuilt(SAMPLES["submit"], cls)
    problems = golden_problems(sample, golden, with_member(contract.SOCKETS, cl.SubmitRequest, cls))
    assert "the encoding differs from the golden bytes" in problems
    assert not any("no longer decode" in p or "not the sample" in p for p in problems), problems


def test_a_schema_change_makes_schema_json_stale(monkeypatch):
    golden = json.loads((contract.CONTRACT_DIR / "schema.json").read_text())
    cls = mutated(cl.SubmitRequest, rename=("model", "model_name"))
    monkeypatch.setattr(contract, "SOCKETS", with_member(contract.SOCKETS, cl.SubmitRequest, cls))
    assert json.loads(json.dumps(contract.schema_doc())) != golden


@pytest.mark.parametrize("doc", ["A new docstring.", "Two paragraphs.\n\n    Indented as in source, which\n"
                                 "    msgspec 0.22 keeps and 0.23 dedents."])
def test_a_docstring_change_leaves_schema_json_current(monkeypatch, doc):
    cls = mutated(cl.SubmitRequest, doc=doc)
    _, defs = msgspec.json.schema_components([cls])
    assert defs["SubmitRequest"]["description"], "the mutation must reach the raw schema"
    monkeypatch.setattr(contract, "SOCKETS", with_member(contract.SOCKETS, cl.SubmitRequest, cls))
    golden = json.loads((contract.CONTRACT_DIR / "schema.json").read_text())
    assert json.loads(json.dumps(contract.schema_doc())) == golden


def test_a_retyped_field_or_changed_default_makes_schema_json_stale(monkeypatch):
    golden = json.loads((contract.CONTRACT_DIR / "schema.json").read_text())
    for cls in (mutated(cl.SubmitRequest, retype=("max_tokens", float)),
                mutated(cl.SubmitRequest, append=("priority", int, 0))):
        monkeypatch.setattr(contract, "SOCKETS", with_member(contract.SOCKETS, cl.SubmitRequest, cls))
        assert json.loads(json.dumps(contract.schema_doc())) != golden, cls


def test_wire_only_drops_prose_but_keeps_a_field_named_description():
    class Doc(Message, frozen=True, kw_only=True, tag="doc_probe"):
        """Prose that is not part of the wire."""
        description: str
        n: Annotated[int, msgspec.Meta(description="prose too", ge=0)] = 0

    (schema,), defs = msgspec.json.schema_components([Doc], ref_template="#/$defs/{name}")
    raw = defs["Doc"]
    assert "description" in raw and "description" in raw["properties"]["n"]
    kept = contract.wire_only(defs)["Doc"]
    assert "description" not in kept and "description" not in kept["properties"]["n"]
    assert kept["properties"]["description"] == {"type": "string"}
    assert kept["properties"]["n"]["minimum"] == 0  # a constraint is wire, not prose
    assert kept["required"] == raw["required"]


def test_a_new_message_without_a_sample_is_caught(monkeypatch):
    class Brand(Message, frozen=True, kw_only=True, tag="brand_new"):
        x: int

    sockets = dict(contract.SOCKETS)
    members = (*union_members(sockets["client_to_scheduler"]), Brand)
    sockets["client_to_scheduler"] = Union[members]  # noqa: UP007
    monkeypatch.setattr(contract, "SOCKETS", sockets)
    assert contract.all_message_types() - {type(m) for m in SAMPLES.values()} == {Brand}
