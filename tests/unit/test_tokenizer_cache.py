"""The slice's tokenizer cache: parsed once per tokenizer.json, off the caller's thread, waited for only at first use."""

from __future__ import annotations

import threading

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from c2cq.services.executor import tokenizer_cache
from c2cq.services.executor.tokenizer_cache import PendingTokenizer, TokenizerCache


def _json(*words: str) -> bytes:
    tok = Tokenizer(models.WordLevel({"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str().encode()


def test_one_parse_per_tokenizer_json_and_the_least_recently_used_goes_first():
    cache = TokenizerCache(size=2)
    a, b, c = _json("a"), _json("b"), _json("c")
    tok_a = cache.get(a)
    tok_a = tok_a if isinstance(tok_a, Tokenizer) else tok_a._future.result()
    assert tok_a.encode("a").ids == [1]
    cache.prefetch(b)
    assert cache.get(a) is tok_a  # parsed: the same object, no new parse
    cache.get(c)  # b is now the least recently used
    assert a in cache and c in cache and b not in cache
    assert cache.get(None) is None


def test_a_tokenizer_still_parsing_is_waited_for_at_first_use(monkeypatch):
    release = threading.Event()
    real = tokenizer_cache.load_tokenizer

    def slow(data: bytes):
        assert release.wait(10)
        return real(data)

    monkeypatch.setattr(tokenizer_cache, "load_tokenizer", slow)
    cache = TokenizerCache()
    pending = cache.get(_json("hello", "world"))  # does not wait for the parse
    assert isinstance(pending, PendingTokenizer)
    release.set()
    assert pending.encode("hello world").ids == [1, 2]  # the first use waits for it
    assert pending.decode([2, 1]) == "world hello"


def test_a_failed_parse_raises_where_it_is_used_and_is_tried_again(monkeypatch):
    release = threading.Event()
    calls = []
    real = tokenizer_cache.load_tokenizer

    def flaky(data: bytes):
        calls.append(data)
        assert release.wait(10)
        if len(calls) == 1:
            raise ValueError("bad tokenizer")
        return real(data)

    monkeypatch.setattr(tokenizer_cache, "load_tokenizer", flaky)
    cache = TokenizerCache()
    data = _json("x")
    pending = cache.get(data)
    assert isinstance(pending, PendingTokenizer)
    release.set()
    with pytest.raises(ValueError, match="bad tokenizer"):
        pending.encode("x")
    again = cache.get(data)  # the failed parse is not kept: parsed anew
    assert again.encode("x").ids == [1] and len(calls) == 2
