"""Catalog messages (ROUTER at the catalog; scheduler, executors and the CLI are DEALERs)."""

from __future__ import annotations

from typing import Union

import msgspec

from c2cq.schemas.base import Event, Message
from c2cq.schemas.enums import ErrorCode, ModelKind
from c2cq.schemas.refs import ShmRef


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    kind: ModelKind
    architecture: str
    parameters: int
    bytes: int
    dtype: str
    vocab_size: int
    num_layers: int
    hidden_size: int
    max_context: int
    shm: ShmRef | None = None  # where the weights are mapped (real models only)
    eos_token_ids: tuple[int, ...] = ()


class DescribeModel(Message, frozen=True, kw_only=True, tag="describe"):
    name: str


class ListModels(Message, frozen=True, kw_only=True, tag="list"):
    pass


class RegisterModel(Message, frozen=True, kw_only=True, tag="register"):
    """Register a converted model file (real) or a description (sim, ``path`` None).

    ``staged``: a byte-identical copy of ``path`` that the sender already wrote into the catalog's
    shared-memory folder (named ``.staged-*``); the catalog publishes it by rename instead of copying
    ``path``, and falls back to the copy when it is missing or differs."""

    info: ModelInfo
    path: str | None = None
    staged: str | None = None


class RemoveModel(Message, frozen=True, kw_only=True, tag="remove"):
    name: str


class ListFiles(Message, frozen=True, kw_only=True, tag="list_files"):
    """The registry's model files (the control plane's catalog), for the nodes' catalogs to publish."""


class ModelFiles(Message, frozen=True, kw_only=True, tag="model_files"):
    """Every registered model: a RegisterModel each, ``path`` relative to the model store when the file
    lies in one (each node resolves it in its own mount of the store), None for a description."""

    files: tuple[RegisterModel, ...]


class HostModels(Message, frozen=True, kw_only=True, tag="host_models"):
    """A node's catalog to the control plane, at start, on a change and every few seconds: which
    models its host has published in shared memory, and which it is publishing now."""

    host: str
    published: tuple[str, ...] = ()
    publishing: tuple[str, ...] = ()


class ModelInfoReply(Message, frozen=True, kw_only=True, tag="model_info"):
    info: ModelInfo


class ModelListReply(Message, frozen=True, kw_only=True, tag="model_list"):
    models: tuple[ModelInfo, ...]


class CatalogError(Message, frozen=True, kw_only=True, tag="catalog_error"):
    code: ErrorCode
    message: str


class ModelRegistered(Event, frozen=True, kw_only=True, tag="model_registered"):
    info: ModelInfo
    path: str | None = None


class ModelRemoved(Event, frozen=True, kw_only=True, tag="model_removed"):
    name: str


ToCatalog = Union[DescribeModel, ListModels, RegisterModel, RemoveModel, ListFiles]
FromCatalog = Union[ModelInfoReply, ModelListReply, CatalogError, ModelRegistered, ModelRemoved, ModelFiles]
CatalogEvent = Union[ModelRegistered, ModelRemoved]
NodeCatalogToScheduler = HostModels  # a node's catalog, on the control plane's catalogs socket
SchedulerToNodeCatalog = ModelFiles  # the answer: the registry's files
