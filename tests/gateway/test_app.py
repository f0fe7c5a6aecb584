"""The app alone (in process, httpx over ASGI) against a fake scheduler client and catalog: the OpenAI
shapes of answers, streams and errors, auth, bounds, cancellation of a client that leaves."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from c2cq.schemas.enums import ErrorCode
from c2cq.services.gateway.app import Config, build_app
from c2cq.services.gateway.chat_template import render

from .fakes import FakeCatalog, FakeClient
from .tiny import QWEN_TEMPLATE, tokenizer_config

KEY = "sk-test-key"


def client_for(fake: FakeClient, **cfg) -> httpx.AsyncClient:
    app = build_app(fake, FakeCatalog(), Config(**cfg))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["message"] and "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def sse(r: httpx.Response) -> list:
    events = [line[len("data: "):] for line in r.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events
    return [json.loads(e) for e in events[:-1]]


async def test_completion_shape_and_usage():
    fake = FakeClient()
    async with client_for(fake) as c:
        r = await c.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 3,
                                                  "temperature": 0})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "text_completion" and doc["id"].startswith("cmpl-")
    assert doc["choices"] == [{"index": 0, "text": "w0 w1 w2 ", "logprobs": None, "finish_reason": "length"}]
    assert doc["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    sub = fake.submitted[0]
    assert sub["prompt"] == "hello" and sub["temperature"] == 0.0 and sub["max_tokens"] == 3


async def test_completion_prompt_forms():
    fake = FakeClient()
    async with client_for(fake) as c:
        r = await c.post("/v1/completions", json={"model": "tiny", "prompt": ["a", "bb"], "max_tokens": 2})
        assert [ch["index"] for ch in r.json()["choices"]] == [0, 1]
        assert r.json()["usage"]["completion_tokens"] == 4
        r = await c.post("/v1/completions", json={"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 1})
        assert r.status_code == 200 and fake.submitted[-1]["prompt_token_ids"] == [1, 2, 3]
        r = await c.post("/v1/completions", json={"model": "tiny", "prompt": [[1], [2, 3]], "max_tokens": 1})
        assert len(r.json()["choices"]) == 2
        assert_error(await c.post("/v1/completions", json={"model": "tiny", "prompt": ["a", 1]}), 400, "prompt")
        assert_error(await c.post("/v1/completions", json={"model": "tiny", "prompt": []}), 400, "prompt")


async def test_streaming_completion_with_usage():
    async with client_for(FakeClient()) as c:
        r = await c.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = sse(r)
    assert "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"]) == "w0 w1 w2 "
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(ch["usage"] is None for ch in chunks[:-1])


async def test_chat_renders_the_template_and_streams():
    fake = FakeClient()
    msgs = [{"role": "user", "content": "Hi there"}]
    async with client_for(fake) as c:
        r = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": msgs, "max_tokens": 2})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["object"] == "chat.completion" and doc["choices"][0]["message"] == {"role": "assistant",
                                                                                        "content": "w0 w1 "}
        expected = render(QWEN_TEMPLATE, msgs, model="tiny", tokenizer_config=tokenizer_config(QWEN_TEMPLATE))
        ids = FakeCatalog().tok.encode(expected, add_special_tokens=False).ids
        assert fake.submitted[-1]["prompt_token_ids"] == ids and doc["usage"]["prompt_tokens"] == len(ids)
        r = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": msgs, "max_completion_tokens": 2,
                                                       "stream": True})
        chunks = sse(r)
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks) == "w0 w1 "
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_chat_errors():
    async with client_for(FakeClient()) as c:
        msgs = [{"role": "user", "content": "x"}]
        assert_error(await c.post("/v1/chat/completions", json={"model": "plain", "messages": msgs}), 400, "model",
                     "no_chat_template")
        assert_error(await c.post("/v1/chat/completions", json={"model": "nope", "messages": msgs}), 404, "model",
                     "model_not_found")
        bad_role = [{"role": "wizard", "content": "x"}]
        err = assert_error(await c.post("/v1/chat/completions", json={"model": "tiny", "messages": bad_role}), 400,
                           "messages")
        assert "Unknown role" in err["message"]
        long = [{"role": "user", "content": "x" * 300}]
        assert_error(await c.post("/v1/chat/completions", json={"model": "tiny", "messages": long}), 400, "messages",
                     "context_length_exceeded")
        assert_error(await c.post("/v1/chat/completions", json={"model": "tiny", "messages": []}), 400, "messages")
        image = [{"role": "user", "content": [{"type": "image_url"}]}]
        assert_error(await c.post("/v1/chat/completions", json={"model": "tiny", "messages": image}), 400,
                     "messages[0].content[0]")


@pytest.mark.parametrize("body,param", [
    ({"model": "tiny", "prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "temperature": -0.5}, "temperature"),
    ({"model": "tiny", "prompt": "x", "top_p": 0}, "top_p"),
    ({"model": "tiny", "prompt": "x", "n": 2}, "n"),
    ({"model": "tiny", "prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "stop": [""]}, "stop"),
    ({"model": "tiny", "prompt": "x", "stop": 5}, "stop"),
    ({"model": "tiny", "prompt": "x", "slo": {"ttft_ms": -1}}, "slo.ttft_ms"),
    ({"prompt": "x"}, "model"),
    ({"model": "tiny"}, "prompt"),
    ({"model": "tiny", "prompt": "x", "stream": "yes"}, "stream"),
    ({"model": "tiny", "prompt": "x", "logprobs": 3}, "logprobs"),
])
async def test_bad_parameters_name_the_parameter(body, param):
    async with client_for(FakeClient()) as c:
        assert_error(await c.post("/v1/completions", json=body), 400, param)


async def test_malformed_bodies_and_routes():
    async with client_for(FakeClient(), max_body_bytes=1000) as c:
        assert_error(await c.post("/v1/completions", content=b"{not json"), 400, None, "invalid_json")
        assert_error(await c.post("/v1/completions", content=b"[1,2]"), 400)
        assert_error(await c.post("/v1/completions", content=b"x" * 2000), 413, None, "request_too_large")
        assert_error(await c.post("/v1/completions", content=b"a=b",
                                  headers={"content-type": "application/x-www-form-urlencoded"}), 415)
        assert_error(await c.get("/v1/completions"), 405)
        assert_error(await c.get("/v1/nothing"), 404)


@pytest.mark.parametrize("code,status", [(ErrorCode.QUEUE_FULL, 503), (ErrorCode.SLO_UNATTAINABLE, 503),
                                         (ErrorCode.PROMPT_TOO_LONG, 400), (ErrorCode.BAD_MAX_TOKENS, 400)])
async def test_scheduler_rejections_become_statuses(code, status):
    async with client_for(FakeClient(reject=code)) as c:
        for stream in (False, True):
            r = await c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "stream": stream})
            assert_error(r, status, code=None)
            assert ("retry-after" in r.headers) == (status == 503)


async def test_auth():
    async with client_for(FakeClient(), api_key=KEY) as c:
        body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
        assert_error(await c.post("/v1/completions", json=body), 401, code="invalid_api_key")
        assert_error(await c.post("/v1/completions", json=body, headers={"authorization": "Bearer nope"}), 401)
        assert_error(await c.get("/v1/models", headers={"authorization": KEY}), 401)
        r = await c.post("/v1/completions", json=body, headers={"authorization": f"Bearer {KEY}"})
        assert r.status_code == 200
        assert (await c.get("/health")).status_code == 200  # open without --metrics-auth
    async with client_for(FakeClient(), api_key=KEY, metrics_auth=True) as c:
        assert_error(await c.get("/health"), 401)
        assert (await c.get("/health", headers={"authorization": f"Bearer {KEY}"})).status_code == 200


async def test_models_list_the_catalog_with_placement():
    async with client_for(FakeClient()) as c:
        doc = (await c.get("/v1/models")).json()
        assert doc["object"] == "list" and {m["id"] for m in doc["data"]} == {"tiny", "plain"}
        tiny = (await c.get("/v1/models/tiny")).json()
        assert tiny["object"] == "model" and tiny["c2cq"]["slices"] == [
            {"slice": "cpu0", "alpha": 0.25, "state": "ready", "active_requests": 0}]
        assert_error(await c.get("/v1/models/nope"), 404, "model")


async def test_overload_is_503_with_retry_after():
    fake = FakeClient(hold=True)
    async with client_for(fake, max_concurrent=1) as c:
        first = asyncio.create_task(c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1}))
        await asyncio.wait_for(fake.got.wait(), 5)
        r = await c.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
        err = assert_error(r, 503, code="queue_full")
        assert r.headers["retry-after"] == "1" and err["type"] == "server_error"
        fake.release.set()
        assert (await first).status_code == 200
        again = await c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
        assert again.status_code == 200


async def test_metrics_renders_the_schedulers_snapshot_and_a_dead_scheduler_is_503():
    from prometheus_client.parser import text_string_to_metric_families

    fake = FakeClient()
    fake.submitted += [{}, {}, {}]
    async with client_for(fake) as c:
        r = await c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        (fam,) = text_string_to_metric_families(r.text)
        assert fam.name == "c2cq:request_success" and fam.type == "counter"
        assert [(s.labels, s.value) for s in fam.samples if s.name.endswith("_total")] == [
            ({"model_name": "tiny", "finished_reason": "stop"}, 3.0)]
        fake.dead = True
        r = await c.get("/metrics")
    assert_error(r, 503, code="unavailable")
    assert r.headers["retry-after"] == "1"


class FailingAfterTokens(FakeClient):
    """Two tokens, then the executor is lost (an error after the stream started)."""

    async def _run(self, s, model, n_prompt, max_tokens):
        from c2cq.errors import RequestError
        from c2cq.schemas.client import TokensEmitted

        for k in range(2):
            s.queue.put_nowait(TokensEmitted(request_id=s.request_id, seq=k, token_ids=(k,), text=f"w{k} "))
        s.queue.put_nowait(RequestError(ErrorCode.EXECUTOR_LOST, "the executor was lost", s.request_id))


async def test_an_error_after_the_stream_started_is_its_last_event():
    async with client_for(FailingAfterTokens()) as c:
        r = await c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 5, "stream": True})
    assert r.status_code == 200
    events = sse(r)
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "w0 w1 "
    assert events[-1]["error"]["code"] == "executor_lost" and set(events[-1]["error"]) == {"message", "type", "param",
                                                                                          "code"}


async def test_a_client_that_leaves_a_non_streaming_request_cancels_it():
    fake = FakeClient(hold=True)
    app = build_app(fake, FakeCatalog(), Config())
    body = json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 5}).encode()
    sent: list[dict] = []
    gone = asyncio.Event()

    async def receive():
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions",
             "headers": [(b"content-type", b"application/json")],
             "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("gw", 80), "root_path": ""}
    task = asyncio.create_task(app(scope, receive, send))
    await asyncio.wait_for(fake.got.wait(), 5)
    gone.set()
    await asyncio.wait_for(task, 5)
    assert fake.cancelled == [fake.submitted[0]["request_id"]]


async def test_nothing_stays_counted_in_flight():
    fake = FakeClient()
    app = build_app(fake, FakeCatalog(), Config(max_concurrent=2))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        for body in ({"model": "tiny", "prompt": "x", "stream": True}, {"model": "nope", "prompt": "x", "stream": True},
                     {"model": "tiny", "prompt": "x"}, {"model": "tiny", "prompt": "x", "n": 3}):
            for _ in range(3):
                await c.post("/v1/completions", json=body)
        async with c.stream("POST", "/v1/completions", json={"model": "tiny", "prompt": "x", "stream": True,
                                                             "max_tokens": 50}) as r:
            async for _ in r.aiter_lines():
                break
    assert app.app.state.gateway.in_flight == 0


class NoExecutors(FakeClient):
    async def status(self, timeout: float = 5.0):
        from c2cq.schemas.client import StatusReply

        return StatusReply(nonce=0, executors=(), requests_in_flight=0, requests_total=0)


class SchedulerDown(FakeClient):
    async def status(self, timeout: float = 5.0):
        from c2cq.errors import PeerDeadError

        raise PeerDeadError("no status reply")


@pytest.mark.parametrize("fake,status", [(FakeClient, 200), (NoExecutors, 503), (SchedulerDown, 503)])
async def test_health_needs_the_scheduler_and_a_ready_executor(fake, status):
    async with client_for(fake()) as c:
        r = await c.get("/health")
    assert r.status_code == status and r.json()["status"] == ("ok" if status == 200 else "unavailable")


async def test_a_backlog_of_tokens_leaves_as_fewer_chunks_with_the_same_text():
    async with client_for(FakeClient(burst=True)) as c:
        r = await c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 20, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    chunks = sse(r)
    texts = [ch["choices"][0]["text"] for ch in chunks if ch["choices"] and ch["choices"][0]["text"]]
    assert "".join(texts) == "".join(f"w{k} " for k in range(20)) and len(texts) < 20
    assert chunks[-1]["usage"]["completion_tokens"] == 20
