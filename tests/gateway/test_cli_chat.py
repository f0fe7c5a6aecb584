"""`c2cq chat` and `c2cq generate --chat` use the model's template from the terminal: the same answer as
/v1/chat/completions; plain `c2cq generate` is unchanged (the same text as /v1/completions)."""

from __future__ import annotations

from .conftest import CHAT, PLAIN

Q = "Name a colour."


def test_chat_cli_answers_as_the_http_api(running):
    http = running.openai().chat.completions.create(model=CHAT, messages=[{"role": "user", "content": Q}],
                                                    max_tokens=8, temperature=0)
    expected = http.choices[0].message.content
    assert http.usage.completion_tokens == 8
    out = running.inst.cli("chat", "--model", CHAT, "--max-tokens", "8", Q).stdout
    assert out == expected + "\n"
    out = running.inst.cli("generate", "--chat", "--model", CHAT, "--max-tokens", "8", Q).stdout
    assert out == expected + "\n"


def test_chat_cli_reads_turns_from_stdin(running):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "c2cq.cli", "--home", str(running.home), "chat", "--model", CHAT,
                        "--max-tokens", "4"], input=f"{Q}\nAnd another?\n", capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) >= 2


def test_chat_without_a_template_says_so(running):
    p = running.inst.cli("chat", "--model", PLAIN, Q, check=False)
    assert p.returncode == 1 and "no chat template" in p.stderr


def test_plain_generate_is_unchanged(running):
    http = running.openai().completions.create(model=PLAIN, prompt=Q, max_tokens=8, temperature=0)
    out = running.inst.cli("generate", "--model", PLAIN, "--max-tokens", "8", Q).stdout
    assert out == http.choices[0].text + "\n"
