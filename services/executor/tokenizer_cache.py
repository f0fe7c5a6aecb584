"""Parsed tokenizers kept across switches, parsed off the step's thread.

Parsing SmolLM2's tokenizer.json (3.4 MB) takes 0.2-0.25 s here: most of a small model's first switch
(185 ms against a warm 37 ms TTFT). ``tokenizers`` releases the GIL while it parses, so a parse on a
background thread runs on another core while the slice maps the weights and runs the prefill. A slice
starts parsing before a request needs it (its catalog's tokenizers at start, a preloaded model's), and
a switch whose tokenizer is still being parsed gets a ``PendingTokenizer``: the first use (encoding a
text prompt, decoding the first token) waits for the parse, nothing before it does.

Entries are keyed by the tokenizer.json bytes (exact; comparing 3.4 MB costs ~1 ms, a blake2b of it
6 ms), so models sharing a tokenizer share one parse; each holds ~6 MB of tokenizer and its JSON.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from tokenizers import Tokenizer

from c2cq.services.executor.model.detokenizer import load_tokenizer

TOKENIZER_CACHE = 8


class PendingTokenizer:
    """A tokenizer still being parsed: any attribute waits for the parse (and raises what it raised)."""

    __slots__ = ("_future",)

    def __init__(self, future: Future) -> None:
        self._future = future

    def __getattr__(self, name: str):
        return getattr(self._future.result(), name)


class TokenizerCache:
    """The last ``size`` tokenizers asked for (least recently used goes first); thread-safe."""

    def __init__(self, size: int = TOKENIZER_CACHE) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, Future] = OrderedDict()  # least recently used first
        self._parser: ThreadPoolExecutor | None = None  # one thread, started by the first parse

    def _entry(self, tokenizer_json: bytes) -> Future:
        with self._lock:
            future = self._cache.pop(tokenizer_json, None)
            if future is None or (future.done() and future.exception() is not None):  # a failed parse: again
                if self._parser is None:
                    self._parser = ThreadPoolExecutor(1, thread_name_prefix="c2cq-tokenizer")
                future = self._parser.submit(load_tokenizer, tokenizer_json)
            self._cache[tokenizer_json] = future
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
            return future

    def prefetch(self, tokenizer_json: bytes | None) -> None:
        """Start parsing (if not parsed or parsing already); do not wait."""
        if tokenizer_json is not None:
            self._entry(tokenizer_json)

    def get(self, tokenizer_json: bytes | None) -> Tokenizer | PendingTokenizer | None:
        """The tokenizer: parsed (a failed parse raises here), or a ``PendingTokenizer`` while it is parsed."""
        if tokenizer_json is None:
            return None
        future = self._entry(tokenizer_json)
        return future.result() if future.done() else PendingTokenizer(future)

    def __contains__(self, tokenizer_json: bytes) -> bool:
        with self._lock:
            return tokenizer_json in self._cache
