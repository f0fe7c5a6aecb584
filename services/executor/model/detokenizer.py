"""Tokenizer access and incremental detokenisation that never streams a broken character."""

from __future__ import annotations

from tokenizers import Tokenizer

INITIAL_OFFSET = 5  # prompt tokens decoded with the first output token, for correct spacing


def load_tokenizer(tokenizer_json: bytes) -> Tokenizer:
    return Tokenizer.from_str(tokenizer_json.decode("utf-8"))


class IncrementalDetokenizer:
    """Streams the text of appended tokens (prefix-offset / read-offset method).

    Text is decoded from ``prefix_offset``; what lies past the text of [prefix_offset, read_offset)
    is new. A decode ending in U+FFFD is an incomplete UTF-8 sequence: it is held until complete.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True) -> None:
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids = list(prompt_ids)
        self.read_offset = len(self.ids)
        self.prefix_offset = max(self.read_offset - INITIAL_OFFSET, 0)

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip)

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes ("" while a character is incomplete)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix):]
        return ""

    def flush(self) -> str:
        """Text still held at the end (e.g. a genuine trailing U+FFFD)."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix):] if text.startswith(prefix) else ""
