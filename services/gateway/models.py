"""What the gateway knows of each model: the catalog's description, and from the model file's index its
chat template, tokenizer and tokenizer config (the same file the executors map; no tensor is read).

``Catalog`` asks the catalog process over its socket (a short-lived cache: a model added while the
gateway runs shows up within ``ttl_s``); ``load_meta`` reads a model file's index.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from c2cq.codec import Codec, encode
from c2cq.errors import PeerDeadError, WireError
from c2cq.schemas.catalog import CatalogError, FromCatalog, ListModels, ModelInfo, ModelListReply
from c2cq.transport import make_socket


@dataclass(frozen=True, slots=True)
class ModelMeta:
    name: str
    max_context: int
    chat_template: str | None
    tokenizer_config: dict[str, Any] | None
    tokenizer: Any  # tokenizers.Tokenizer, or None for a model without one
    created: int

    def encode_rendered(self, text: str) -> list[int]:
        """Token ids of a rendered chat prompt: its special tokens are in the text already, so none is
        added (transformers' apply_chat_template(tokenize=True) does the same)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids


def load_meta(info: ModelInfo, fallback: Path | None = None) -> ModelMeta:
    """The template, tokenizer and config of a real model, from its published file's index (or, with no
    instance running, from ``fallback``: the catalog's folder of model files)."""
    from c2cq.services.catalog.layout import EXTENSION, read_layout

    created, template, tok_config, tokenizer = 0, None, None, None
    path = info.shm.path if info.shm is not None else None
    if path is None and fallback is not None and (fallback / f"{info.name}{EXTENSION}").exists():
        path = str(fallback / f"{info.name}{EXTENSION}")
    if path is not None:
        mf = read_layout(path)
        template, tok_config = mf.chat_template, mf.tokenizer_config
        if mf.tokenizer_json is not None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_str(mf.tokenizer_json.decode("utf-8"))
        try:
            created = int(os.stat(path).st_mtime)
        except OSError:
            pass
    return ModelMeta(name=info.name, max_context=info.max_context, chat_template=template,
                     tokenizer_config=tok_config, tokenizer=tokenizer, created=created)


class Catalog:
    """The catalog's model list, cached for ``ttl_s``; per-model metadata cached by file."""

    def __init__(self, address: str, *, ttl_s: float = 2.0, timeout_s: float = 5.0, min_refresh_s: float = 0.2) -> None:
        self.address, self.ttl_s, self.timeout_s, self.min_refresh_s = address, ttl_s, timeout_s, min_refresh_s
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._codec: Codec = Codec(FromCatalog)
        self._lock = asyncio.Lock()
        self._models: dict[str, ModelInfo] = {}
        self._fetched = -1e9
        self._meta: dict[tuple[str, str | None], ModelMeta] = {}

    async def _query(self) -> dict[str, ModelInfo]:
        if self._sock is None:
            self._ctx = zmq.asyncio.Context()
            self._sock = make_socket(self._ctx, zmq.DEALER, connect=self.address)
        await self._sock.send(encode(ListModels()))
        deadline = time.monotonic() + self.timeout_s
        while True:  # skip a stale reply to an earlier query that timed out
            left = deadline - time.monotonic()
            if left <= 0 or not await self._sock.poll(int(left * 1000)):
                raise PeerDeadError(f"the catalog at {self.address} did not answer within {self.timeout_s} s")
            try:
                reply = self._codec.decode(await self._sock.recv())
            except WireError:
                continue
            if isinstance(reply, ModelListReply):
                return {m.name: m for m in reply.models}
            if isinstance(reply, CatalogError):
                raise PeerDeadError(f"the catalog answered {reply.code}: {reply.message}")

    async def models(self, *, fresh: bool = False) -> dict[str, ModelInfo]:
        async with self._lock:
            age = time.monotonic() - self._fetched
            if age > self.ttl_s or (fresh and age > self.min_refresh_s):  # unknown names cannot flood the catalog
                self._models = await self._query()
                self._fetched = time.monotonic()
            return self._models

    async def info(self, name: str) -> ModelInfo | None:
        found = (await self.models()).get(name)
        if found is None:  # maybe added since the last look
            found = (await self.models(fresh=True)).get(name)
        return found

    async def meta(self, info: ModelInfo) -> ModelMeta:
        key = (info.name, info.shm.path if info.shm is not None else None)
        m = self._meta.get(key)
        if m is None:
            m = await asyncio.to_thread(load_meta, info)
            if len(self._meta) > 256:
                self._meta.clear()
            self._meta[key] = m
        return m

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._ctx.term()
            self._sock = self._ctx = None
