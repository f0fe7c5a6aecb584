"""`c2cq loadgen --target URL` against a fake OpenAI-compatible server (Starlette on uvicorn, on a
free loopback port) that streams known tokens after known delays: the run's report counts what the
server sent, its TTFT and TPOT come from the SSE stream, and rejections and errors are filed by code."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from c2cq.errors import ConfigError
from c2cq.loadgen.openai_target import OpenAITarget, StreamTally, list_models, request_body
from c2cq.loadgen.report import Status
from c2cq.loadgen.runner import MonotonicClock
from c2cq.loadgen.workload import PlannedRequest
from c2cq.testing import c2cq, wait_for

FIRST_S, GAP_S = 0.05, 0.02  # the fake's delay before the first token, and between tokens
KEY = "sk-test"


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _chunk(text: str, finish: str | None = None) -> bytes:
    return _sse({"id": "cmpl-1", "object": "text_completion", "model": "m",
                 "choices": [{"index": 0, "text": text, "finish_reason": finish}]})


class Fake:
    """The fake server: what it was sent, and how it answers per model."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        app = Starlette(routes=[Route("/v1/models", self.models), Route("/v1/completions", self.completions,
                                                                         methods=["POST"])])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {KEY}"

    async def models(self, request: Request):
        if not self.authorized(request):
            return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error",
                                           "code": "invalid_api_key"}}, status_code=401)
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in ("fake-a", "fake-b")]})

    async def completions(self, request: Request):
        body = await request.json()
        self.bodies.append(body)
        model, n = body["model"], body["max_tokens"]
        if model == "busy":
            return JSONResponse({"error": {"message": "the queue is full", "type": "service_unavailable",
                                           "code": "queue_full"}}, status_code=503, headers={"Retry-After": "1"})
        per_chunk = 2 if model == "fake-multi" else 1

        async def stream():
            await asyncio.sleep(FIRST_S)
            for i in range(0, n, per_chunk):
                if i:
                    await asyncio.sleep(GAP_S)
                if model == "broken" and i == 1:
                    yield _sse({"error": {"message": "the slice failed", "type": "internal_error", "code": "internal"}})
                    return
                last = i + per_chunk >= n
                yield _chunk("".join(f" t{j}" for j in range(i, min(n, i + per_chunk))), "length" if last else None)
            yield _sse({"id": "cmpl-1", "object": "text_completion", "model": model, "choices": [],
                        "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    def __enter__(self) -> "Fake":
        self.thread.start()
        wait_for(lambda: self.server.started, 10, "the fake server started")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def fake():
    with Fake() as f:
        yield f


def planned(model: str, max_tokens: int = 4, index: int = 0) -> PlannedRequest:
    return PlannedRequest(index=index, offset_s=0.0, model=model, prompt_tokens=3,
                          prompt_ids=np.array([5, 6, 7], dtype=np.int32), max_tokens=max_tokens,
                          slo_class="interactive", ttft_ms=1000.0, tpot_ms=100.0)


def test_loadgen_cli_runs_a_workload_against_an_openai_server(fake, tmp_path):
    out = tmp_path / "run"
    p = c2cq(tmp_path / "home", "loadgen", "--target", fake.url, "--api-key", KEY, "--rate", "40",
             "--num-requests", "8", "--prompt-tokens", "3", "--output-tokens", "5", "--seed", "1",
             "--out", str(out), "--no-progress", timeout=120)
    assert "TTFT" in p.stdout
    doc = json.loads((out / "report.json").read_text())
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert doc["run"]["counts"] == {"sent": 8, "finished": 8, "rejected": 0, "errors": 0}
    assert doc["run"]["catalog"] == ["fake-a", "fake-b"]
    assert doc["run"]["settings"]["api_key"] == "<redacted>"
    assert len(fake.bodies) == 8
    for body in fake.bodies:
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["max_tokens"] == 5 and body["ignore_eos"] is True and body["model"] in ("fake-a", "fake-b")
        assert len(body["prompt"]) == 3 and all(isinstance(t, int) for t in body["prompt"])
        assert set(body["slo"]) == {"ttft_ms", "tpot_ms"}
    for r in records:
        assert r["status"] == "finished" and r["n_tokens"] == 5 and len(r["token_times_s"]) == 5
        # the fake sends the first token FIRST_S after the request and one every GAP_S after that: none
        # can arrive sooner, whatever the load (two may arrive together: the gaps have no lower bound)
        assert r["ttft_s"] >= FIRST_S and r["token_times_s"][-1] >= FIRST_S + 4 * GAP_S
        assert r["token_times_s"] == sorted(r["token_times_s"])
    assert doc["tpot_s"]["count"] == 8
    assert doc["ttft_s"]["count"] == 8 and doc["switch_unknown"] == 8


def test_a_wrong_key_or_no_server_says_so(fake, tmp_path):
    with pytest.raises(ConfigError, match="401"):
        list_models(fake.url, api_key="wrong")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # a free port nothing listens on
    p = c2cq(tmp_path / "home", "loadgen", "--target", f"http://127.0.0.1:{port}/v1", "--rate", "1",
             "--num-requests", "1", check=False, timeout=60)
    assert p.returncode != 0 and "no OpenAI-compatible server answers" in p.stderr


def test_rejections_errors_and_multi_token_chunks(fake):
    async def run():
        async with OpenAITarget(fake.url, api_key=KEY, timeout=30) as t:
            clock = MonotonicClock()
            return await asyncio.gather(t.send(planned("busy"), clock), t.send(planned("broken"), clock),
                                        t.send(planned("fake-multi", max_tokens=5), clock))

    busy, broken, multi = asyncio.run(run())
    assert (busy.status, busy.error_code, busy.token_times) == (Status.REJECTED, "queue_full", ())
    assert busy.message == "the queue is full"
    assert (broken.status, broken.error_code, len(broken.token_times)) == (Status.ERROR, "internal", 1)
    # three chunks (2 + 2 + 1 tokens); the final usage says 5: the two tokens no chunk counted arrive with the last
    assert multi.status == Status.FINISHED and len(multi.token_times) == 5
    assert multi.token_times[-1] == multi.token_times[-2] == multi.token_times[-3]


def test_the_tally_takes_per_chunk_usage_and_the_final_count():
    t = StreamTally()
    t.on_event({"choices": [{"text": " a b", "finish_reason": None}], "usage": {"completion_tokens": 2}}, 1.0)
    t.on_event({"choices": [{"text": " c", "finish_reason": "stop"}], "usage": {"completion_tokens": 3}}, 2.0)
    t.on_event({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 3}}, 2.1)
    assert t.token_times() == (1.0, 1.0, 2.0)
    obs = t.observation(2.2, done=True)
    assert obs.status == Status.FINISHED and obs.ended_at == 2.2
    cut = StreamTally()
    cut.on_event({"choices": [{"text": " a", "finish_reason": None}]}, 1.0)
    assert cut.observation(1.5, done=False).error_code == "stream_cut"
    chat = StreamTally()
    chat.on_event({"choices": [{"delta": {"content": "hi"}, "finish_reason": "length"}]}, 1.0)
    assert chat.token_times() == (1.0,) and chat.observation(1.1, done=True).status == Status.FINISHED


def test_the_body_sends_the_slo_only_when_asked():
    assert "slo" not in request_body(planned("m"), send_slo=False)
    body = request_body(planned("m"))
    assert body["slo"] == {"ttft_ms": 1000.0, "tpot_ms": 100.0} and body["prompt"] == [5, 6, 7]
