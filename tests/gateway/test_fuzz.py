"""Fuzzed HTTP input: malformed JSON, wrong types, huge bodies, wrong content types, odd routes.

10,000 seeded random requests go to the app in process (a fake scheduler behind it), a few hundred
to the real server of `c2cq up`, and some raw bytes to its socket: every answer is an OpenAI-shaped
4xx (or a 200 where the mutation happened to be valid), nothing is a 5xx or a hang, and the gateway
keeps serving afterwards.
"""

from __future__ import annotations

import json
import random
import socket
from urllib.parse import urlparse

import httpx
import pytest

from c2cq.services.gateway.app import Config, build_app

from .conftest import KEY, PLAIN
from .fakes import FakeCatalog, FakeClient

BASES = {
    "/v1/completions": {"model": "tiny", "prompt": "hello", "max_tokens": 2, "temperature": 0, "stream": False,
                        "stop": ["x"], "top_p": 1.0, "seed": 1, "slo": {"ttft_ms": 100}},
    "/v1/chat/completions": {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                             "stream": False, "stream_options": {"include_usage": True}},
}
SCALARS = [None, True, False, 0, -1, 1, 2**70, -2**70, 0.5, -0.5, 1e308, "", "x", "🙂" * 3, [], {}, [1, "a"],
           {"a": 1}, [[[]]], "\x00", [None]]


def rand_value(rng: random.Random, depth: int = 0):
    v = rng.choice(SCALARS)
    if depth < 2 and rng.random() < 0.2:
        return [rand_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 2 and rng.random() < 0.1:
        return {rng.choice(["role", "content", "type", "text", "x"]): rand_value(rng, depth + 1)}
    return v


def mutate(rng: random.Random, doc: dict) -> dict:
    doc = json.loads(json.dumps(doc))
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(list(doc) + ["n", "top_k", "ignore_eos", "messages", "prompt", "user", "logprobs"])
        if rng.random() < 0.15:
            doc.pop(key, None)
        else:
            doc[key] = rand_value(rng)
    return doc


def random_request(rng: random.Random, limit: int) -> tuple[str, str, bytes, dict, bool]:
    """(method, path, body, headers, surely_bad): surely_bad when no valid request can come of it."""
    path = rng.choice(list(BASES))
    headers = {"content-type": "application/json"}
    kind = rng.random()
    if kind < 0.35:
        return "POST", path, json.dumps(mutate(rng, BASES[path])).encode(), headers, False
    if kind < 0.55:
        good = json.dumps(BASES[path]).encode()
        return "POST", path, good[:rng.randint(0, len(good) - 1)], headers, True
    if kind < 0.7:
        return "POST", path, rng.randbytes(rng.randint(0, 200)), headers, True
    if kind < 0.8:
        ctype = rng.choice(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "image/png"])
        return "POST", path, json.dumps(BASES[path]).encode(), {"content-type": ctype}, True
    if kind < 0.85:
        return "POST", path, b"[" * (limit + 1), headers, True
    if kind < 0.92:
        return "POST", path, json.dumps(rand_value(rng)).encode(), headers, True
    method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "POST"])
    p = rng.choice(["/v1/nothing", "/v2/completions", "/v1/models/" + "x" * rng.randint(1, 300), "/%00", "/v1"])
    return method, p, b"", headers, p != "/v1/models/x" and not p.startswith("/v1/models/")


def check(r: httpx.Response, surely_bad: bool) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if surely_bad or r.status_code != 200:
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and "Traceback" not in err["message"]


async def test_ten_thousand_random_requests_in_process():
    limit = 16 << 10
    app = build_app(FakeClient(), FakeCatalog(), Config(max_body_bytes=limit))
    rng = random.Random(12)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=10) as c:
        for _ in range(10_000):
            method, path, body, headers, bad = random_request(rng, limit)
            check(await c.request(method, path, content=body, headers=headers), bad)
        r = await c.post("/v1/completions", json=BASES["/v1/completions"])
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("seed", [1])
def test_the_real_server_survives_fuzzing(running, seed):
    rng = random.Random(seed)
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=running.url, timeout=30) as c:
        for _ in range(300):
            method, path, body, headers, _ = random_request(rng, 8 << 20 if rng.random() < 0.02 else 1024)
            if body.startswith(b"{") and b'"tiny"' in body:
                body = body.replace(b'"tiny"', b'"no-such-model"')  # a valid mutation stays a 4xx, costs no slice
            check(c.request(method, path, content=body, headers={**headers, **auth}), True)
        huge = c.post("/v1/completions", content=b" " * (9 << 20), headers={**auth, "content-type": "application/json"})
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
        host = urlparse(running.url)
        for garbage in (b"GARBAGE\r\n\r\n", b"POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64)):
            with socket.create_connection((host.hostname, host.port), timeout=10) as s:
                s.sendall(garbage)
                reply = s.recv(4096)
                assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply[:100]
        assert c.get("/health").status_code == 200
        r = c.post("/v1/completions", json={"model": PLAIN, "prompt": "x", "max_tokens": 2}, headers=auth)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
