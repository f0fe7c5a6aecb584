"""The real `openai` client against `c2cq up --backend cpu` with its gateway: text identical to the
ZeroMQ client's, usage equal to the tokens produced, errors with their statuses and shapes, auth,
an overload the client's own retry gets through, a client that leaves cancels its request."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from c2cq.client import AsyncClient
from c2cq.testing import status, wait_for

from .conftest import CHAT, KEY, PLAIN

PROMPT = "The capital of France is"
N = 12


def zmq_generate(home, model, prompt=None, ids=None, max_tokens=N):
    async def go():
        async with AsyncClient(home=str(home)) as c:
            s = await c.submit(model, prompt, prompt_token_ids=ids, max_tokens=max_tokens, temperature=0.0,
                               ignore_eos=True)
            text = await s.text()
            return text, s.received, s.finished.usage.prompt_tokens
    return asyncio.run(go())


def hf_tokenizer():
    from transformers import PreTrainedTokenizerFast

    from .tiny import QWEN_TEMPLATE, byte_tokenizer, tokenizer_config

    cfg = tokenizer_config(QWEN_TEMPLATE)
    return PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer(), eos_token=cfg["eos_token"],
                                   pad_token=cfg["pad_token"], chat_template=QWEN_TEMPLATE)


def test_completions_match_the_zmq_client(running):
    text, produced, prompt_tokens = zmq_generate(running.home, PLAIN, PROMPT)
    oa = running.openai()
    r = oa.completions.create(model=PLAIN, prompt=PROMPT, max_tokens=N, temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].text == text and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == produced == N and r.usage.prompt_tokens == prompt_tokens
    assert r.usage.total_tokens == prompt_tokens + N and r.id.startswith("cmpl-") and r.model == PLAIN
    chunks = list(oa.completions.create(model=PLAIN, prompt=PROMPT, max_tokens=N, temperature=0, stream=True,
                                        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == N and chunks[-1].usage.prompt_tokens == prompt_tokens


def test_token_id_prompts_match(running):
    ids = [5, 77, 123, 9, 200]
    text, _, _ = zmq_generate(running.home, PLAIN, ids=ids)
    r = running.openai().completions.create(model=PLAIN, prompt=ids, max_tokens=N, temperature=0,
                                            extra_body={"ignore_eos": True})
    assert r.choices[0].text == text and r.usage.prompt_tokens == len(ids)


def test_chat_matches_transformers_template_and_the_zmq_client(running):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    ids = hf_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    text, produced, prompt_tokens = zmq_generate(running.home, CHAT, ids=ids)
    assert prompt_tokens == len(ids)
    oa = running.openai()
    r = oa.chat.completions.create(model=CHAT, messages=messages, max_tokens=N, temperature=0,
                                   extra_body={"ignore_eos": True})
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == produced == N
    chunks = list(oa.chat.completions.create(model=CHAT, messages=messages, max_completion_tokens=N, temperature=0,
                                             stream=True, stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == N
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def error_of(exc: openai.APIStatusError) -> dict:
    err = exc.response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "Traceback" not in err["message"]
    return err


@pytest.mark.parametrize("kind,kw,status,param", [
    ("completions", dict(model="no-such-model", prompt="x"), 404, "model"),
    ("completions", dict(model=PLAIN, prompt="x", max_tokens=-3), 400, "max_tokens"),
    ("completions", dict(model=PLAIN, prompt="x", max_tokens=100_000), 400, "max_tokens"),
    ("completions", dict(model=PLAIN, prompt="x", temperature=-1), 400, "temperature"),
    ("completions", dict(model=PLAIN, prompt="word " * 400, max_tokens=4), 400, "prompt"),
    ("completions", dict(model=PLAIN, prompt=list(range(250)), max_tokens=20), 400, "prompt"),
    ("completions", dict(model=PLAIN, prompt="x", n=2), 400, "n"),
    ("completions", dict(model=PLAIN, prompt="x", extra_body={"top_k": "many"}), 400, "top_k"),
    ("chat", dict(model=PLAIN, messages=[{"role": "user", "content": "x"}]), 400, "model"),
    ("chat", dict(model="no-such-model", messages=[{"role": "user", "content": "x"}]), 404, "model"),
    ("chat", dict(model=CHAT, messages=[{"role": "user", "content": "x " * 300}]), 400, "messages"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_errors_have_status_and_shape(running, kind, kw, status, param, stream):
    oa = running.openai(max_retries=0)
    call = oa.completions.create if kind == "completions" else oa.chat.completions.create
    with pytest.raises(openai.APIStatusError) as e:
        out = call(stream=stream, **kw)
        list(out) if stream else None
    assert e.value.status_code == status
    assert error_of(e.value)["param"] == param


def test_auth_through_the_openai_client(running):
    # without a key (the openai client refuses to send none: plain httpx), with a wrong one, with the right one
    r = httpx.post(f"{running.url}/v1/completions", json={"model": PLAIN, "prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as e:
        running.openai(api_key="sk-wrong", max_retries=0).completions.create(model=PLAIN, prompt="x", max_tokens=1)
    assert e.value.status_code == 401 and error_of(e.value)["code"] == "invalid_api_key"
    models = running.openai().models.list()
    assert {m.id for m in models.data} == {CHAT, PLAIN}
    assert httpx.get(f"{running.url}/health").status_code == 200  # open: no --metrics-auth


def test_models_show_placement(running):
    running.openai().completions.create(model=PLAIN, prompt="x", max_tokens=1)
    doc = httpx.get(f"{running.url}/v1/models/{PLAIN}", headers={"authorization": f"Bearer {KEY}"}).json()
    assert doc["id"] == PLAIN and doc["object"] == "model" and doc["max_model_len"] == 256
    assert [s["slice"] for s in doc["c2cq"]["slices"]] == ["exec-0"] and 0 <= doc["c2cq"]["slices"][0]["alpha"] <= 1


def events_of(running, rid: str) -> list[dict]:
    out = running.inst.cli("events", "show", rid, "--json", check=False).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_a_client_that_leaves_mid_stream_cancels_its_request(running):
    body = {"model": PLAIN, "prompt": PROMPT, "max_tokens": 220, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=running.url, headers={"authorization": f"Bearer {KEY}"}, timeout=30) as h:
        with h.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            first = next(line for line in r.iter_lines() if line.startswith("data: "))
            rid = json.loads(first[len("data: "):])["id"].removeprefix("cmpl-")
        left = time.monotonic()  # the response is closed: the connection is gone
    cancel = wait_for(lambda: [e for e in events_of(running, rid) if e["t"] == "cancel_asked"], 10,
                      "the cancellation in the event log")
    assert cancel[0]["at"] - left < 1.0, (cancel, left)
    wait_for(lambda: status(running.home)["requests_in_flight"] == 0, 10, "no request in flight")
    produced = [e["msg"]["index"] for e in events_of(running, rid) if e.get("msg", {}).get("t") == "tokens_produced"]
    assert max(produced) < 219  # the slice stopped working on it long before max_tokens


def spawn_gateway(running, tmp_path, *extra):
    url_file = tmp_path / "url.json"
    p = subprocess.Popen([sys.executable, "-m", "c2cq.services.gateway.main", "--home", str(running.home),
                          "--http", "127.0.0.1:0", "--url-file", str(url_file), *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: url_file.exists() or p.poll() is not None, 60, "the second gateway to serve")
    except AssertionError:
        p.kill()
        raise
    assert p.poll() is None, p.stderr.read().decode()
    return p, json.loads(url_file.read_text())["url"]


def test_overload_503_is_retried_by_the_openai_client(running, tmp_path):
    """The one slot is held by a long stream; a second request gets 503 + Retry-After and the openai
    client's retry succeeds once the slot frees. The tiny model can finish the long stream before the
    second request reaches the gateway on a loaded machine: then that attempt saw no overload, and the
    scenario is run again (a bounded number of times)."""
    p, url = spawn_gateway(running, tmp_path, "--max-concurrent", "1")
    try:
        for _ in range(5):
            seen: list[int] = []
            http = httpx.Client(event_hooks={"response": [lambda r: seen.append(r.status_code)]})
            oa = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=8, http_client=http)
            long = oa.completions.create(model=PLAIN, prompt=PROMPT, max_tokens=200, stream=True,
                                         extra_body={"ignore_eos": True})
            first = next(iter(long))  # the one slot is taken while this stream runs
            assert first.choices[0].text is not None
            r = oa.completions.create(model=PLAIN, prompt=PROMPT, max_tokens=2)  # 503, Retry-After, retried
            assert r.usage.completion_tokens == 2 and seen[-1] == 200
            assert sum(1 for c in long if c.choices) > 0  # drain the first stream
            if 503 in seen:
                break
        assert 503 in seen, "the second request was never refused while the first held the slot"
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)


def test_the_gateway_warns_without_a_key_off_loopback(running, tmp_path):
    p = subprocess.run([sys.executable, "-m", "c2cq.services.gateway.main", "--home", str(running.home),
                        "--http", "0.0.0.0:notaport"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "HOST:PORT" in p.stderr
    env = {k: v for k, v in os.environ.items() if k != "C2CQ_API_KEY"}
    p = subprocess.Popen([sys.executable, "-m", "c2cq.services.gateway.main", "--home", str(running.home),
                          "--http", "0.0.0.0:0", "--url-file", str(tmp_path / "u.json")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stderr.readline()
        assert "WARNING" in line and "without an API key" in line
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
