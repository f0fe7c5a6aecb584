"""Chat templates, rendered as Hugging Face renders them (transformers' ``apply_chat_template``).

The same sandboxed jinja2 environment (``trim_blocks``, ``lstrip_blocks``, loop controls), the same
globals (``raise_exception``, ``strftime_now``) and ``tojson`` filter, and the same variables:
``messages``, ``add_generation_prompt``, ``tools`` and the tokenizer's special tokens
(``bos_token``, ``eos_token``, …) from the model's tokenizer config. transformers is the test oracle;
nothing here imports it.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from c2cq.services.gateway.errors import GatewayError, ParamError

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def special_tokens(tokenizer_config: dict[str, Any] | None) -> dict[str, Any]:
    """The special tokens a template may name, as strings (an AddedToken dict gives its content)."""
    out: dict[str, Any] = {}
    for key in SPECIAL_TOKENS:
        v = (tokenizer_config or {}).get(key)
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str):
            out[key] = v
    extra = (tokenizer_config or {}).get("additional_special_tokens")
    if isinstance(extra, list):
        out["additional_special_tokens"] = [t.get("content") if isinstance(t, dict) else t for t in extra]
    return out


def render(template: str | None, messages: list[dict[str, Any]], *, model: str,
           tokenizer_config: dict[str, Any] | None = None, add_generation_prompt: bool = True,
           tools: list[dict] | None = None, **extra: Any) -> str:
    """The prompt text for ``messages``. A model without a template, or messages the template refuses
    (its ``raise_exception``), is a 400; a template that does not compile is the model's fault (500)."""
    if not template:
        raise ParamError(f"model {model!r} has no chat template; use /v1/completions with a prompt", "model",
                         code="no_chat_template")
    try:
        compiled = compile_template(template)
    except jinja2.TemplateSyntaxError as e:
        raise GatewayError(500, f"the chat template of {model!r} does not compile: {e}", param="model",
                           code="bad_chat_template") from None
    try:
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=tools,
                               documents=None, **special_tokens(tokenizer_config), **extra)
    except jinja2.TemplateError as e:
        raise ParamError(f"the chat template of {model!r} refused the messages: {e}", "messages",
                         code="chat_template_error") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, jinja2.exceptions.SecurityError) as e:
        raise ParamError(f"the chat template of {model!r} failed on the messages: {type(e).__name__}: {e}",
                         "messages", code="chat_template_error") from None
