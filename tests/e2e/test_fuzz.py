"""Hostile peers on every listening socket of a running instance (issue 2's must-show).

10,000 random or malformed frames go to each of the scheduler's client ROUTER, the scheduler's
executor ROUTER and the catalog ROUTER: random bytes, truncated and bit-flipped messages, valid
msgpack of the wrong shape, wrong tags, deep nesting, multi-frame garbage, messages of another
socket, and well-formed messages with bad values (unknown models, negative max_tokens, empty
prompts, cancels of unknown requests, forged executor events, fake executors that announce
themselves and vanish). Afterwards every process must be the same one as before (nothing crashed
and was restarted), `c2cq status --json` must answer, and real requests must complete with the
right number of tokens.

Each flood ends with a barrier on the same socket (ZeroMQ keeps one peer's frames in order), so
the checks run only once the service has consumed every frame before it.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from pathlib import Path

import msgspec
import pytest
import zmq

from c2cq.client import AsyncClient
from c2cq.codec import Codec, encode, union_members
from c2cq.rundir import RunDir
from c2cq.schemas import catalog as cat
from c2cq.schemas import client as cl
from c2cq.schemas import contract
from c2cq.schemas import executor as ex
from c2cq.schemas.enums import ErrorCode, FinishReason, ModelKind
from c2cq.schemas.refs import ShmRef
from c2cq.testing import Instance, instance_pids, status, wait_for

N = 10_000
MODELS = ("sim-000", "sim-001", "sim-002")
SAMPLES = list(contract.samples().values())
BARRIER_TIMEOUT_S = 60  # a generous bound on consuming one flood; a hang, not a slow run, fails it


# ---- the instance ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inst(tmp_path_factory):
    home = Path(tmp_path_factory.mktemp("fz", numbered=True))
    i = Instance(home, slices=2, backend="sim")
    i.cli("models", "add-sim", "--count", str(len(MODELS)))
    i.up()
    try:
        yield i
    finally:
        i.teardown()


def snapshot(inst: Instance) -> dict:
    doc = status(inst.home)
    return {"pids": instance_pids(inst.home),
            "services": {s["name"]: (s["pid"], s["restarts"]) for s in doc["services"]}}


def log_sizes(inst: Instance) -> dict[Path, int]:
    return {p: p.stat().st_size for p in (inst.home / "run" / "logs").glob("*.log")}


PROBLEMS = ("Traceback", '"level": "error"', '"level": "critical"', '"exception"', "never retrieved")


def new_log_problems(inst: Instance, before: dict[Path, int]) -> list[str]:
    """Tracebacks and error-level lines written since ``before``: a survived exception is still a bug."""
    out = []
    for p, size in log_sizes(inst).items():
        with open(p, "rb") as f:
            f.seek(before.get(p, 0))
            for line in f.read().decode(errors="replace").splitlines():
                if any(k in line for k in PROBLEMS):
                    out.append(f"{p.name}: {line[:400]}")
    return out


def sched_status(inst: Instance) -> cl.StatusReply:
    """The scheduler's own view, straight from its client socket (faster than the CLI)."""
    ctx = zmq.Context()
    try:
        sock = dealer(ctx, RunDir(inst.home).client_addr)
        nonce = random.randrange(1, 2**62)
        sock.send(encode(cl.StatusQuery(nonce=nonce)))
        _, reply = recv_until(sock, Codec(cl.SchedulerToClient),
                              lambda m: isinstance(m, cl.StatusReply) and m.nonce == nonce, 10)
        sock.close()
        return reply
    finally:
        ctx.term()


def assert_alive_and_serving(inst: Instance, before: dict) -> None:
    after = snapshot(inst)
    assert after["services"] == before["services"], "a service died and was restarted during the flood"
    assert after["pids"] == before["pids"], "the set of the instance's processes changed"
    doc = status(inst.home)  # `c2cq status --json` still answers, with the scheduler's view
    assert "scheduler_error" not in doc, doc.get("scheduler_error")
    real = {e["executor_id"]: e["state"] for e in doc["executors"] if e["executor_id"].startswith("exec-")}
    assert real == {"exec-0": "ready", "exec-1": "ready"}
    assert generate_all(inst) == [(m, n, n, FinishReason.LENGTH) for m, n in REAL_WORK]


REAL_WORK = [(m, 9 + 3 * i) for i, m in enumerate(MODELS)] + [(MODELS[0], 17)]


def generate_all(inst: Instance) -> list[tuple[str, int, int, str]]:
    async def run():
        async with AsyncClient(home=str(inst.home), timeout=60) as c:
            async def one(model: str, n: int):
                s = await c.submit(model, f"after the storm {n}", max_tokens=n)
                got = sum([len(t.token_ids) async for t in s])
                return model, n, got, s.finished.finish_reason
            return await asyncio.gather(*(one(m, n) for m, n in REAL_WORK))

    return asyncio.run(run())


# ---- hostile frames ----------------------------------------------------------------------------


def rare(rng: random.Random, big, usual, p: float = 0.005):
    """A large payload now and then (``big`` is built only when drawn), else ``usual``."""
    return big() if rng.random() < p else usual


def msgpack_junk(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 3 or r < 0.5:
        return rng.choice([None, True, False, 0, -1, 2**64 - 1, -(2**63), 2**31, 1.5, math.nan, math.inf, -math.inf,
                           "", "x" * rng.randint(0, 50), b"\x00\xff", "t", "ping", rng.random()])
    if r < 0.75:
        return [msgpack_junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["t", "request_id", "model", "x", "", "nonce"]) if rng.random() < 0.8 else rng.randint(-3, 3):
            msgpack_junk(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def generic_frame(rng: random.Random, own: list[msgspec.Struct]) -> bytes | list[bytes]:
    """A frame any socket must survive; ``own`` are valid messages of the socket under attack."""
    kind = rng.randrange(11)
    valid = encode(rng.choice(own))
    if kind == 0:
        return rng.randbytes(rng.randint(0, 300))
    if kind == 1:
        return valid[: rng.randrange(len(valid))]  # truncated
    if kind == 2:
        b = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 3:
        return msgspec.msgpack.encode(msgpack_junk(rng))  # valid msgpack, wrong shape
    if kind == 4:  # wrong tag
        doc = msgspec.to_builtins(rng.choice(own))
        doc["t"] = rng.choice([msgpack_junk(rng), "nope", "", rng.choice(SAMPLES).__struct_config__.tag])
        return msgspec.msgpack.encode(doc)
    if kind == 5:  # one field with a value of the wrong type
        doc = msgspec.to_builtins(rng.choice(own))
        doc[rng.choice(sorted(doc))] = msgpack_junk(rng)
        return msgspec.msgpack.encode(doc)
    if kind == 6:  # deep nesting
        return rng.choice([b"\x91", b"\x81\xa1t"]) * rng.choice([100, 1000, rare(rng, lambda: 100_000, 5000)]) + b"\xc0"
    if kind == 7:  # a message of another socket
        return encode(rng.choice(SAMPLES))
    if kind == 8:  # multi-frame garbage
        return [rng.choice([valid, rng.randbytes(rng.randint(0, 40)), b""]) for _ in range(rng.randint(2, 5))]
    if kind == 9:  # trailing bytes after a valid message
        return valid + rng.randbytes(rng.randint(1, 8))
    return rng.choice([b"", b"\xc1", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
                       b"\xd6\xff\x00\x00\x00\x00", rare(rng, lambda: rng.randbytes(1 << 20), b"\x00")])


def bad_submits(rng: random.Random) -> msgspec.Struct:
    rid = rng.choice([uuid.uuid4().hex, "", "dup", "x" * 5000, "\u2603"])
    model = rng.choice([*MODELS, "nope", "", "../etc/passwd", "x" * 1000])
    kw: dict = {}
    case = rng.randrange(10)
    if case == 0:
        kw = dict(prompt="", max_tokens=4)
    elif case == 1:
        kw = dict(prompt="p", max_tokens=rng.choice([0, -1, -(2**63), 2**64 - 1, 10**9]))
    elif case == 2:
        kw = dict(prompt="p", prompt_token_ids=(1, 2), max_tokens=4)
    elif case == 3:
        kw = dict(prompt_token_ids=rng.choice([(-1,), (2**64 - 1,), rare(rng, lambda: tuple(range(100_000)), ()), ()]),
                  max_tokens=4)
    elif case == 4:
        kw = dict(prompt="p", max_tokens=4, sampling=cl.SamplingParams(
            temperature=rng.choice([-1.0, math.nan, math.inf]), top_k=rng.choice([-5, 0]),
            top_p=rng.choice([0.0, -1.0, math.nan, 2.0]), stop=rng.choice([(), ("",)]),
            stop_token_ids=rng.choice([(), (-1,), (2**64 - 1,)])))
    elif case == 5:
        kw = dict(prompt="p", max_tokens=4, slo=cl.SLO(ttft_ms=rng.choice([-1.0, 0.0, math.nan, math.inf]),
                                                       tpot_ms=rng.choice([None, -5.0])))
    elif case == 6:
        kw = dict(prompt=rare(rng, lambda: "p" * 2_000_000, "p" * 1000), max_tokens=4)
    elif case == 7:
        kw = dict(prompt_token_ids=(1,) * 9000, max_tokens=4)
    elif case == 8:  # a well-formed request, accepted; the fuzzer will not stay to read its tokens
        return cl.SubmitRequest(request_id=uuid.uuid4().hex, model=rng.choice(MODELS), prompt="ok",
                                max_tokens=rng.randint(1, 8))
    else:
        kw = dict(prompt=None, max_tokens=4)
    return cl.SubmitRequest(request_id=rid, model=model, **kw)


def client_frame(rng: random.Random) -> bytes | list[bytes]:
    r = rng.random()
    if r < 0.45:
        return generic_frame(rng, [m for m in SAMPLES if type(m) in union_members(cl.ClientToScheduler)])
    if r < 0.75:
        return encode(bad_submits(rng))
    if r < 0.9:
        return encode(cl.CancelRequest(request_id=rng.choice([uuid.uuid4().hex, "", "dup", "x" * 10_000])))
    nonce = rng.choice([0, -1, 2**64 - 1, -(2**63)])
    return encode(rng.choice([cl.Ping(nonce=nonce), cl.StatusQuery(nonce=nonce)]))


def ev_fields(rng: random.Random, source: str) -> dict:
    return dict(source=rng.choice([source, "exec-0", ""]), seq=rng.choice([1, 0, -1, 2**63 - 1]),
                ts_ns=rng.choice([0, -1, 2**63 - 1]))


def forged_event(rng: random.Random, me: str) -> msgspec.Struct:
    f = ev_fields(rng, me)
    rid = rng.choice([uuid.uuid4().hex, "", "r1", "x" * 1000])
    bad_float = rng.choice([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e308])
    bad_int = rng.choice([0, -1, -(2**63), 2**64 - 1])
    kind = rng.randrange(7)
    if kind == 0:
        return ex.TokensProduced(**f, request_id=rid, index=rng.choice([0, -1, 5, 2**63 - 1]),
                                 token_ids=rng.choice([(), (1,), (2**64 - 1, -1)]), text=rng.choice(["", "\x00", "t"]))
    if kind == 1:
        return ex.RequestCompleted(**f, request_id=rid, finish_reason=rng.choice(list(FinishReason)),
                                   prompt_tokens=bad_int, completion_tokens=bad_int,
                                   error_code=rng.choice([None, *ErrorCode]), message=rng.choice([None, "x"]))
    if kind == 2:
        return ex.StepStats(**f, step_s=bad_float, tokens=bad_int, prefill_tokens=bad_int, decode_tokens=bad_int,
                            batch=bad_int, bytes_hbm=bad_int, bytes_host=bad_int, model=rng.choice([None, "nope"]))
    if kind == 3:
        return ex.ModelResident(**f, model=rng.choice([None, "nope", MODELS[0]]), alpha=bad_float,
                                bytes_resident=bad_int, switched_s=rng.choice([None, bad_float]))
    if kind == 4:
        return ex.Heartbeat(**f, executor_id=rng.choice([me, "exec-0", ""]), boot_id=rng.choice(["fake", "other"]),
                            active=bad_int, waiting=bad_int, draining=rng.random() < 0.2)
    if kind == 5:  # a new incarnation with absurd capacities
        return ex.SliceReady(**f, executor_id=rng.choice([me, "exec-0"]), boot_id=uuid.uuid4().hex[:12],
                             backend=rng.choice(["sim", "cuda", ""]), device="sim:9",
                             memory_budget_bytes=bad_int, link_bandwidth_bps=bad_float,
                             max_batch=rng.choice([0, -1, 1, 2**63 - 1]))
    return rng.choice([m for m in SAMPLES if type(m) in union_members(ex.ExecutorToScheduler)])


def executor_frame(rng: random.Random, me: str) -> bytes | list[bytes]:
    if rng.random() < 0.5:
        return generic_frame(rng, [m for m in SAMPLES if type(m) in union_members(ex.ExecutorToScheduler)])
    return encode(forged_event(rng, me))


def sane_slice_ready(me: str, boot: str) -> ex.SliceReady:
    return ex.SliceReady(source=me, seq=1, ts_ns=time.monotonic_ns(), executor_id=me, boot_id=boot, backend="sim",
                         device="sim:fake", memory_budget_bytes=10 * 2**30, link_bandwidth_bps=55e9, max_batch=64)


def bad_info(rng: random.Random) -> cat.ModelInfo:
    name = rng.choice([*MODELS, f"fuzz-{rng.randrange(20)}", "", "../x", "a\n", "x" * 200, "ok.name"])
    return cat.ModelInfo(name=name, kind=rng.choice(list(ModelKind)), architecture=rng.choice(["", "Nope", "x" * 500]),
                         parameters=rng.choice([1, 0, -1, 2**63 - 1]), bytes=rng.choice([1, 0, -5, 2**64 - 1]),
                         dtype=rng.choice(["bf16", "", "int3"]), vocab_size=rng.choice([1, 0, -1]),
                         num_layers=rng.choice([1, 0]), hidden_size=rng.choice([1, -1]),
                         max_context=rng.choice([1, 0]),
                         shm=rng.choice([None, ShmRef(path="/etc/passwd", size=-1)]),
                         eos_token_ids=rng.choice([(), (-1,), (2**64 - 1,)]))


def catalog_frame(rng: random.Random) -> bytes | list[bytes]:
    r = rng.random()
    if r < 0.5:
        return generic_frame(rng, [m for m in SAMPLES if type(m) in union_members(cat.ToCatalog)])
    if r < 0.8:
        path = rng.choice([None, "/nonexistent/m.c2cqm", "/etc/passwd", "/dev/zero", "/dev/urandom", "/", "",
                           "relative.c2cqm", "x" * 5000])
        return encode(cat.RegisterModel(info=bad_info(rng), path=path))
    if r < 0.9:  # never one of the real models: removing them is legitimate, not hostile
        return encode(cat.RemoveModel(name=rng.choice(["nope", "", "../x", f"fuzz-{rng.randrange(20)}", "x" * 300])))
    name = rng.choice([*MODELS, "nope", "", "\x00", rare(rng, lambda: "x" * 100_000, "y")])
    return encode(cat.DescribeModel(name=name))


# ---- blasting ----------------------------------------------------------------------------------


def dealer(ctx: zmq.Context, addr: str, identity: bytes | None = None) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)  # unbounded on our side: every frame is queued, none silently dropped
    s.setsockopt(zmq.RCVHWM, 0)
    if identity is not None:
        s.setsockopt(zmq.IDENTITY, identity)
    s.connect(addr)
    return s


def blast(sock: zmq.Socket, frames) -> int:
    n = 0
    for f in frames:
        if isinstance(f, list):
            sock.send_multipart(f, flags=zmq.NOBLOCK)
        else:
            sock.send(f, flags=zmq.NOBLOCK)
        n += 1
    return n


def recv_until(sock: zmq.Socket, codec: Codec, done, timeout_s: float = BARRIER_TIMEOUT_S) -> tuple[int, object]:
    """Read replies until ``done(msg)``; returns how many replies came, and that last one."""
    deadline, n = time.monotonic() + timeout_s, 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000)):
            raise AssertionError(f"no barrier reply within {timeout_s} s ({n} replies before)")
        msg = codec.decode(sock.recv_multipart()[-1])
        n += 1
        if done(msg):
            return n, msg


# ---- the tests ---------------------------------------------------------------------------------


def test_client_socket(inst):
    before, logs = snapshot(inst), log_sizes(inst)
    rng = random.Random(1)
    frames = [client_frame(rng) for _ in range(N)]
    ctx = zmq.Context()
    try:
        sock = dealer(ctx, RunDir(inst.home).client_addr)
        assert blast(sock, frames) == N
        nonce = rng.randrange(1, 2**62)
        sock.send(encode(cl.Ping(nonce=nonce)))
        replies, _ = recv_until(sock, Codec(cl.SchedulerToClient),
                                lambda m: isinstance(m, cl.Pong) and m.nonce == nonce)
        sock.close()
    finally:
        ctx.term()
    assert replies > N // 2  # malformed frames and bad submits are answered, not swallowed
    assert_alive_and_serving(inst, before)
    assert new_log_problems(inst, logs) == []


def test_executor_socket(inst):
    before, logs = snapshot(inst), log_sizes(inst)
    rng = random.Random(2)
    addr = RunDir(inst.home).executor_addr
    ctx = zmq.Context()
    try:
        # fake executors whose ids sort before the real ones, so an idle one wins placement ties
        silent = dealer(ctx, addr, b"0fake-silent")  # announces itself, then never answers
        gone = dealer(ctx, addr, b"0fake-gone")  # announces itself, then disconnects
        odd = dealer(ctx, addr, b"\xff\xfe not utf-8")
        anon = dealer(ctx, addr)
        for s, me in ((silent, "0fake-silent"), (gone, "0fake-gone")):
            s.send(encode(sane_slice_ready(me, "boot-a")))
        sent = 0
        for s, me, share in ((silent, "0fake-silent", N - 3000), (gone, "0fake-gone", 1000),
                             (odd, "?", 1000), (anon, "anon", 1000)):
            sent += blast(s, [executor_frame(rng, me) for _ in range(share)])
        assert sent == N
        # barrier: a sane re-announcement then a residency report naming a unique model; once the
        # scheduler's status shows it, every frame the fake sent before it has been consumed
        tag = f"barrier-{uuid.uuid4().hex[:8]}"
        for s, me in ((silent, "0fake-silent"), (gone, "0fake-gone")):
            s.send(encode(sane_slice_ready(me, "boot-b")))
            s.send(encode(ex.ModelResident(source=me, seq=2, ts_ns=1, model=tag, alpha=0.0, bytes_resident=0)))

        def models_of_fakes() -> dict[str, str | None]:
            return {e.executor_id: e.model for e in sched_status(inst).executors if e.executor_id.startswith("0fake")}

        wait_for(lambda: models_of_fakes() == {"0fake-silent": tag, "0fake-gone": tag}, BARRIER_TIMEOUT_S,
                 "both fake executors' barrier")
        # each fake now says it is alive and holds a model at α=1 while idle, the placement a request
        # of that model should prefer: the real requests below land on them
        # the silent fake's model is one no real slice holds (what the earlier floods left there varies
        # with their draws): a real slice holding it at a measured α = 1 could win the placement
        held = {e.model for e in sched_status(inst).executors if e.executor_id.startswith("exec-")}
        bait = next(m for m in (MODELS[1], *MODELS) if m not in held)  # two slices hold at most two of three
        lure = {"0fake-silent": bait, "0fake-gone": next(m for m in MODELS if m != bait)}
        for s, me in ((silent, "0fake-silent"), (gone, "0fake-gone")):
            s.send(encode(ex.Heartbeat(source=me, seq=3, ts_ns=2, executor_id=me, boot_id="boot-b", active=0,
                                       waiting=0)))
            s.send(encode(ex.ModelResident(source=me, seq=4, ts_ns=3, model=lure[me], alpha=1.0,
                                           bytes_resident=1)))
        wait_for(lambda: models_of_fakes() == lure, BARRIER_TIMEOUT_S, "the fakes' residency")
        gone.close()  # vanishes: the scheduler finds out when it sends to it, or by its heartbeat timeout
        # `silent` stays connected and mute while real work runs: a request placed on it must be
        # taken back after the heartbeat timeout and finish elsewhere
        assert_alive_and_serving(inst, before)
        assigned = []
        while silent.poll(0):
            msg = Codec(ex.SchedulerToExecutor).decode(silent.recv())
            if isinstance(msg, ex.AssignRequest):
                assigned.append(msg.model)
        assert bait in assigned, f"no request was placed on the mute fake executor ({assigned})"
        silent.close()
        odd.close()
        anon.close()
    finally:
        ctx.destroy(linger=0)  # closes what an assertion above left open (term() would wait on it)
    doc = status(inst.home)
    fakes = {e["executor_id"]: e["state"] for e in doc["executors"] if e["executor_id"].startswith("0fake")}
    assert all(state == "lost" for state in fakes.values()), fakes
    assert new_log_problems(inst, logs) == []


def test_catalog_socket(inst):
    before, logs = snapshot(inst), log_sizes(inst)
    rng = random.Random(3)
    frames = [catalog_frame(rng) for _ in range(N)]
    ctx = zmq.Context()
    try:
        sock = dealer(ctx, RunDir(inst.home).catalog_addr)
        assert blast(sock, frames) == N
        tag = f"barrier-{uuid.uuid4().hex[:8]}"
        sock.send(encode(cat.DescribeModel(name=tag)))
        replies, _ = recv_until(sock, Codec(cat.FromCatalog),
                             lambda m: isinstance(m, cat.CatalogError) and tag in m.message)
        sock.close()
    finally:
        ctx.term()
    assert replies > N // 2
    listed = {m["name"] for m in json.loads(inst.cli("models", "list", "--json").stdout)}
    assert set(MODELS) <= listed
    assert_alive_and_serving(inst, before)
    assert new_log_problems(inst, logs) == []
