"""Codec.decode on hostile input: it returns a message of the socket's Union or raises WireError, nothing else.

Every socket's codec is fuzzed with random bytes, truncated and bit-flipped valid frames, valid
msgpack of the wrong shape, wrong tags, out-of-range numbers and deep nesting; and every valid
message, generated from the schema itself, round-trips.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c2cq.codec import MAX_FRAME_BYTES, Codec, encode, union_members
from c2cq.errors import WireError
from c2cq.schemas import contract
from c2cq.schemas.catalog import CatalogEvent

SOCKETS: dict[str, Any] = {**contract.SOCKETS, "catalog_event_log": CatalogEvent}
CODECS = {name: Codec(u) for name, u in SOCKETS.items()}
TYPES = sorted({t for u in SOCKETS.values() for t in union_members(u)}, key=lambda t: t.__name__)
TAGS = sorted(t.__struct_config__.tag for t in TYPES)
FIELD_NAMES = sorted({f.name for t in TYPES for f in msgspec.structs.fields(t)})

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

codec_names = st.sampled_from(sorted(CODECS))


def decode_or_wire_error(name: str, frame: bytes) -> msgspec.Struct | None:
    """The property: a message of the socket's Union, or WireError. Anything else fails the test."""
    codec = CODECS[name]
    try:
        msg = codec.decode(frame)
    except WireError:
        return None
    assert isinstance(msg, union_members(codec.union)), f"{name} decoded to a foreign {type(msg).__name__}"
    return msg


# ---- valid messages, generated from the schema ------------------------------------------------

INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1  # what msgpack can carry


def values_of(t: mi.Type) -> st.SearchStrategy:
    if isinstance(t, mi.IntType):
        return st.integers(INT64_MIN, UINT64_MAX)
    if isinstance(t, mi.FloatType):
        return st.floats(allow_nan=False)
    if isinstance(t, mi.StrType):
        return st.text(max_size=40)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.EnumType):
        return st.sampled_from(list(t.cls))
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.UnionType):
        return st.one_of(*(values_of(x) for x in t.types))
    if isinstance(t, mi.VarTupleType):
        return st.lists(values_of(t.item_type), max_size=6).map(tuple)
    if isinstance(t, mi.TupleType):
        return st.tuples(*(values_of(x) for x in t.item_types))
    if isinstance(t, mi.ListType):
        return st.lists(values_of(t.item_type), max_size=6)
    if isinstance(t, mi.DictType):
        return st.dictionaries(values_of(t.key_type), values_of(t.value_type), max_size=6)
    if isinstance(t, mi.StructType):
        return structs_of(t)
    raise NotImplementedError(f"no strategy for {t!r}: extend values_of when the schema gains a new kind of field")


def structs_of(t: mi.StructType) -> st.SearchStrategy:
    required = {f.name: values_of(f.type) for f in t.fields if f.required}
    optional = {f.name: values_of(f.type) for f in t.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: t.cls(**kw))


MESSAGES = {t: structs_of(mi.type_info(t)) for t in TYPES}
messages = st.sampled_from(TYPES).flatmap(lambda t: MESSAGES[t])


def sockets_carrying(msg: msgspec.Struct) -> list[str]:
    return [n for n, c in CODECS.items() if type(msg) in union_members(c.union)]


@FUZZ
@given(messages)
def test_valid_messages_round_trip(msg):
    for name in sockets_carrying(msg):
        frame = encode(msg)
        got = CODECS[name].decode(frame)
        assert got == msg
        assert encode(got) == frame
        assert CODECS[name].decode(memoryview(frame)) == msg


@FUZZ
@given(messages, codec_names)
def test_a_message_of_another_socket_is_refused(msg, name):
    got = decode_or_wire_error(name, encode(msg))
    if type(msg) not in union_members(CODECS[name].union):
        assert got is None, f"{name} accepted a {type(msg).__name__}, which it does not carry"


# ---- hostile frames ---------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=512), codec_names)
def test_random_bytes(frame, name):
    decode_or_wire_error(name, frame)


@FUZZ
@given(messages, st.data())
def test_truncated_valid_frames_are_refused(msg, data):
    frame = encode(msg)
    cut = data.draw(st.integers(0, len(frame) - 1))
    for name in sockets_carrying(msg):
        with pytest.raises(WireError):
            CODECS[name].decode(frame[:cut])


@FUZZ
@given(messages, st.binary(min_size=1, max_size=16))
def test_trailing_bytes_are_refused(msg, tail):
    for name in sockets_carrying(msg):
        with pytest.raises(WireError):
            CODECS[name].decode(encode(msg) + tail)


@FUZZ
@given(messages, st.data(), codec_names)
def test_bit_flipped_valid_frames(msg, data, name):
    frame = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] ^= 1 << data.draw(st.integers(0, 7))
    decode_or_wire_error(name, bytes(frame))


# any msgpack value: wrong shapes, huge and negative ints, non-finite floats, bytes where str is due
scalars = (st.none() | st.booleans() | st.integers(INT64_MIN, UINT64_MAX) | st.floats() | st.text(max_size=20)
           | st.binary(max_size=20) | st.sampled_from([UINT64_MAX, INT64_MIN, -1, 0, 2**31, math.inf, -math.inf]))
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner,
                                                                 max_size=4),
    max_leaves=20,
)


@FUZZ
@given(anything, codec_names)
def test_valid_msgpack_of_any_shape(value, name):
    decode_or_wire_error(name, msgspec.msgpack.encode(value))


small_anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@FUZZ
@given(st.sampled_from(TAGS), st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), small_anything,
                                               max_size=6), codec_names)
def test_real_tags_with_random_fields(tag, fields, name):
    decode_or_wire_error(name, msgspec.msgpack.encode({**fields, "t": tag}))


@FUZZ
@given(messages, anything | st.sampled_from(TAGS), codec_names)
def test_wrong_tags(msg, tag, name):
    doc = msgspec.to_builtins(msg)
    doc["t"] = tag
    got = decode_or_wire_error(name, msgspec.msgpack.encode(doc))
    if got is not None:  # only a real tag of this socket, with fields that fit it, may decode
        assert got.__struct_config__.tag == tag


@FUZZ
@given(messages, st.data(), codec_names)
def test_one_field_replaced_removed_or_added(msg, data, name):
    doc = msgspec.to_builtins(msg)
    key = data.draw(st.sampled_from(sorted(doc)))
    action = data.draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "replace":
        doc[key] = data.draw(anything)
    elif action == "remove":
        del doc[key]
    else:
        doc[data.draw(st.text(max_size=8))] = data.draw(anything)
    decode_or_wire_error(name, msgspec.msgpack.encode(doc))


@FUZZ
@given(st.lists(st.sampled_from([b"\x91", b"\x81\xa1t", b"\x81\x00", b"\xdc\x00\x01"]), min_size=1, max_size=64),
       st.integers(1, 20_000), st.sampled_from(["alone", "as_unknown_field", "as_known_field"]), codec_names)
def test_deep_nesting(prefixes, depth, where, name):
    pattern = b"".join(prefixes)
    nest = pattern * max(1, depth // len(prefixes)) + b"\xc0"
    if where == "alone":
        frame = nest
    else:  # a valid Ping map of 2 entries, grown to 3 with the nested value under a third key
        key = b"\xa5extra" if where == "as_unknown_field" else b"\xa5nonce"
        ping = encode(contract.samples()["ping"])
        frame = b"\x83" + ping[1:] + key + nest
    decode_or_wire_error(name, frame)


HOSTILE = [
    b"",
    b"\xc1",  # the one opcode msgpack never uses
    b"\xdd\xff\xff\xff\xff",  # an array announcing 4 G items
    b"\xdf\xff\xff\xff\xff",  # a map announcing 4 G pairs
    b"\xdb\xff\xff\xff\xff",  # a str announcing 4 GiB
    b"\xc6\xff\xff\xff\xff",  # bin 32
    b"\xc9\xff\xff\xff\xff\x01",  # ext 32
    b"\xd6\xff\x00\x00\x00\x00",  # a timestamp ext
    b"\x81\xa1t\xa2\xff\xfe",  # the tag as invalid UTF-8
    b"\x82\xa1t\xa4ping\xa5nonce\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # nonce: NaN
    b"\x82\xa1t\xa4ping\xa5nonce\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00",  # nonce: inf
    b"\x82\xa1t\xa4ping\xa5nonce\xcb\x54\xb2\x49\xad\x25\x94\xc3\x7d",  # nonce: 1e100
    b"\x82\xa1t\xa4ping\xa5nonce\xc7\x01\x05x",  # nonce: an ext
    b"\x82\xa1t\xa4ping\xa1t\xa4ping",  # a duplicate key
    b"\x91" * 1_000_000 + b"\xc0",
]


@pytest.mark.parametrize("frame", HOSTILE, ids=lambda b: b[:12].hex() or "empty")
@pytest.mark.parametrize("name", sorted(CODECS))
def test_hostile_frames(frame, name):
    decode_or_wire_error(name, frame)


def test_an_oversized_frame_is_refused_before_decoding():
    big = bytearray(MAX_FRAME_BYTES + 1)
    with pytest.raises(WireError, match="exceeds"):
        CODECS["client_to_scheduler"].decode(big)


def test_the_property_can_fail():
    """decode_or_wire_error rejects a decoder that lets a foreign exception escape."""

    class Leaky:
        union = SOCKETS["client_to_scheduler"]

        def decode(self, frame):
            raise KeyError(frame)

    CODECS["leaky"] = Leaky()
    try:
        with pytest.raises(KeyError):
            decode_or_wire_error("leaky", b"\x00")
    finally:
        del CODECS["leaky"]
