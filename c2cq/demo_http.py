"""The demo's HTTP step: one chat answer over the OpenAI-compatible API, with the `openai` client
where it is installed (else the standard library), and the `curl` line a user can paste."""

from __future__ import annotations

import json
import shlex
import urllib.request

QUESTION = "What is the capital of France?"


def curl_line(url: str, model: str, question: str = QUESTION, max_tokens: int = 32) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens})
    return (f"curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d {shlex.quote(body)}")


def chat(url: str, model: str, question: str = QUESTION, max_tokens: int = 32) -> str:
    """The assistant's answer, greedy, through /v1/chat/completions."""
    messages = [{"role": "user", "content": question}]
    try:
        import openai
    except ModuleNotFoundError:
        body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}).encode()
        req = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())["choices"][0]["message"]["content"]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed-on-loopback")
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content


def show(url: str, model: str) -> None:
    print(f"\n$ python -c 'openai.OpenAI(base_url=\"{url}/v1\").chat.completions.create(...)'   # over HTTP")
    print(f"user: {QUESTION}\nassistant: {chat(url, model)}")
    print(f"\nthe same from a shell:\n  {curl_line(url, model)}")
