"""A running instance for the gateway's system tests: `c2cq up --backend cpu` with its HTTP gateway on
a free loopback port and an API key, serving two tiny models with the byte tokenizer (one with a
Qwen-style chat template, one with none)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from c2cq.rundir import RunDir
from c2cq.testing import Instance

from .tiny import QWEN_TEMPLATE, save_model

KEY = "sk-c2cq-test"
CHAT, PLAIN = "tiny-chat", "tiny-plain"


@dataclass
class Running:
    inst: Instance
    url: str  # http://127.0.0.1:PORT
    key: str

    @property
    def home(self) -> Path:
        return self.inst.home

    def openai(self, **kw):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=kw.pop("api_key", self.key), **kw)


@pytest.fixture(scope="session")
def running(tmp_path_factory):
    from c2cq.services.catalog.cli_add import add_path

    root = tmp_path_factory.mktemp("gwm")
    home = Path(tmp_path_factory.mktemp("gwh"))
    rd = RunDir.from_env(str(home))
    add_path(rd, save_model(root, "qwen2_tied", QWEN_TEMPLATE), CHAT, progress=False)
    add_path(rd, save_model(root, "llama", None), PLAIN, progress=False)
    inst = Instance(home, slices=1, backend="cpu")
    inst.up("--api-key", KEY, http=True)
    try:
        yield Running(inst, inst.http_url, KEY)
    finally:
        inst.teardown()
